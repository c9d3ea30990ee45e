"""Do the maps point at the lesion? HiCA region–text maps vs Grad-CAM, scored against BUSI lesion masks.

For each seed, one K-shot episode is drawn (:func:`hica.data.episodes.sample_episode`) and HiCA, the
fine-tuned baseline and (``compare_global_only``, the default) HiCA's global-only ablation are fitted on it
exactly as the benchmark fits them (:func:`hica.eval.episode_data.image_episode`, the methods' committed
arguments; nothing here is tuned, and test masks are only scored). Every test image with a non-empty lesion
mask (BUSI normal images have none: they are excluded and counted) gets these maps of its *true* class, all
on the encoder's input grid (masks follow the same square resize):

* ``hica_map``: HiCA's region–text similarity cos(z_n, t_c) of the aligned local tokens with the class
  text prototype (:func:`hica.explain.class_maps`), 7×7 at 224 px, upsampled bilinearly;
* ``finetune_gradcam``: Grad-CAM (Selvaraju et al. 2017) of the fine-tuned baseline's class logit;
* ``hica_gradcam``: Grad-CAM of HiCA's blended logit (same model as ``hica_map``, other explanation);
* ``global_only_map``, ``global_only_gradcam``: the same two maps of the global-only model (registered
  method ``hica_global_only``: L_local and L_cross off, ``hica_args`` otherwise), so that a pointing-game
  gain of HiCA can be credited to the local level or not (the report pairs them per image,
  :func:`hica.report.localization.versus_global_only`); ``compare_global_only: false`` leaves them out;
* ``center_prior``: a centred isotropic Gaussian (σ = ``center_sigma`` × side), a non-learned reference —
  many BUSI lesions lie near the image centre, so a map must beat it to show it localises anything.

Grad-CAM (:mod:`hica.eval.gradcam`) hooks the last convolutional feature map (the trunk's output before
pooling and the linear token projection). The metrics and their chance levels for a map that carries no
information are in :mod:`hica.eval.localization`; the summary over seeds, ``table.md``, ``per_image.csv`` and
``gallery.png`` in :mod:`hica.report.localization` and :mod:`hica.report.localization_gallery`. Seeds are
the cells of a :class:`hica.eval.grid.GridRun`: each finished seed is saved to ``parts/seed<N>.json`` at once;
a rerun reuses seeds whose config hash (settings, ``compare_global_only`` included, + encoder fingerprint),
image list and map list match.

Modules: :mod:`~hica.analysis.localization_config` (settings), :mod:`~hica.analysis.localization_cells`
(the scored images, one seed), this one (the run).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from hica.analysis.localization_cells import (
    fitted_models,
    lesion_images,
    load_inputs,
    run_seed,
    upsample_grid,
)
from hica.analysis.localization_config import LocalizationConfig, config_scope, load_localization_config
from hica.analysis.registry import Analysis, register_analysis
from hica.config import dump_config
from hica.eval.gradcam import cam_layer
from hica.eval.grid import GridRun
from hica.io import write_json, write_text
from hica.report.localization import map_names, markdown, per_image_csv, summarize
from hica.report.localization_gallery import plot_gallery
from hica.runtime import reproducible

__all__ = ["LocalizationConfig", "load_localization_config", "run_localization"]

log = logging.getLogger(__name__)

TABLE = "table.md"


@reproducible
def run_localization(
    cfg: LocalizationConfig, out_dir: str | Path, resume: bool = True, rerun_other_code: bool = False
) -> dict[str, Any]:
    """Run (or resume) the analysis into ``out_dir``: ``metrics.json``, ``table.md``, ``per_image.csv``,
    ``gallery.png``, ``parts/seed<N>.json``, ``config.resolved.yaml``, ``environment.json``; returns what
    ``metrics.json`` holds. A part is reused only when it holds the maps this config asks for."""
    from hica.encoders import create_encoder
    from hica.environment import machine_info
    from hica.runtime import resolve_device, resolve_precision

    t_start = time.perf_counter()
    out = Path(out_dir)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    models = [name for name, *_ in fitted_models(cfg)]  # fail now on hica_args that undo global-only
    maps = map_names(cfg.compare_global_only)
    ds, desc = load_inputs(cfg)
    enc = create_encoder(cfg.encoder.name, **cfg.encoder.args).to(device).eval()
    cam_layer(enc)  # fail now, not after the first fit, on an encoder without a conv trunk
    data = lesion_images(enc, ds, cfg.split, cfg.max_images)
    grid = GridRun(
        out,
        scope=config_scope(cfg),
        encoder=enc.fingerprint(),
        resume=resume,
        rerun_other_code=rerun_other_code,
        config_yaml=dump_config(cfg),
        environment=machine_info(device, precision),
    )
    with grid:
        parts = []
        for seed in cfg.seeds:

            def compute(seed: int = seed) -> dict[str, Any]:
                log.info("seed %d: fitting %s, mapping %d images", seed, ", ".join(models), len(data.ids))
                return run_seed(cfg, enc, ds, desc, data, seed, device, precision)

            resumed = grid.stats.resumed
            parts.append(grid.part(f"seed{seed}", compute, match={"image_ids": data.ids, "maps": maps}))
            if grid.stats.resumed > resumed:
                log.info("seed %d: done earlier, skipped", seed)
        result: dict[str, Any] = {
            "analysis": "localization",
            "name": cfg.name,
            "dataset": ds.name,
            "split": cfg.split,
            "k": cfg.k,
            "seeds": cfg.seeds,
            "input_size": data.size,
            "excluded": data.excluded,
            "maps": maps,
            "summary": summarize(parts, cfg),
            "fits": {p["seed"]: p["fits"] for p in parts},
            "timings": {p["seed"]: {"seconds": p["seconds"], "map_seconds": p["map_seconds"]} for p in parts},
            "grid": list(np.asarray(parts[0]["images"][0]["grids"]["hica_map"]).shape),  # the maps' grid
            "config": cfg.model_dump(mode="json"),
            "config_hash": grid.hash,
            "grid_run": grid.summary(),  # parts computed / reused, code commit (the map grid is "grid")
            "machine": {**machine_info(device, precision), "encoder": enc.fingerprint()},
        }
        write_text(out / "per_image.csv", per_image_csv(parts, cfg))
        plot_gallery(parts[0], data, cfg, out / "gallery.png", upsample_grid)
        result["wall_seconds"] = round(time.perf_counter() - t_start, 2)
        write_text(out / TABLE, markdown(result, cfg))
        write_json(out / "metrics.json", result)
    return result


register_analysis(
    Analysis(
        name="localization",
        help="Score the region–text maps and Grad-CAM of HiCA and its global-only ablation, and the "
        "fine-tuned baseline's Grad-CAM, against lesion masks.",
        load_config=load_localization_config,
        run=run_localization,
        table=TABLE,
    )
)
