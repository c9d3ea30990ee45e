"""Unseen categories: align HiCA on all classes but one, then classify every class zero-shot from its text.

For each held-out class ``h`` (or group of classes held out together) and seed, the full K-shot episode is
sampled (``sample_episode``) and every support and validation shot of ``h`` is dropped: HiCA stage 2 never
reads an image, mask or label of ``h``, and its text bank holds the seen classes' descriptors only. The
whole evaluation split is then classified over *all* classes zero-shot: class prototypes are the aligned
text tower (the trained text head on every class's descriptor prompts, ``h`` included) — the very code of
``hica predict --zero-shot --descriptors`` on the exported checkpoint (``aligned_predictor``).

Comparators on the same images: zero-shot before alignment (the base encoder, same descriptors and prompt
ensemble), chance (1/C accuracy, 0.5 AUC; written out), and HiCA's own few-shot classifier on the seen
classes' images. Every number carries a 95% bootstrap CI over the evaluation images (the same resamples for
every seed, so the CI is that of the seed mean); one whose CI holds the chance level is flagged
"not distinguishable from chance".

Resumable on the grid runner (``hica.eval.grid.GridRun``): one part JSON per (held-out class, seed) in
``parts/``, plus ``parts/before_alignment.json``, reused when config hash (with the encoder's fingerprint)
and evaluation images agree. Where things live: ``unseen_config`` (the YAML), ``unseen_cells`` (the
inputs and one part), ``hica.eval.stats`` (chance, bootstrap, versus chance), ``hica.report.unseen``
(aggregate, ``table.md``, ``predictions.csv``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hica.analysis.registry import Analysis, register_analysis
from hica.analysis.unseen_cells import UnseenInputs, aligned_part, before_alignment_part, eval_samples
from hica.analysis.unseen_config import UnseenConfig, holdout_groups, load_unseen_config
from hica.config import dump_config
from hica.errors import HicaError
from hica.io import write_json, write_text, write_text_replacing_gz
from hica.report.unseen import aggregate_unseen, group_key, predictions_csv, render_table
from hica.report.unseen_attributes import attribute_summary
from hica.runtime import reproducible

__all__ = ["UnseenConfig", "load_unseen_config", "run_unseen"]

# Settings a part's result does not depend on: which parts exist, where data is read from, aggregation only.
NOT_IN_SCOPE = {"name", "holdout", "seeds", "data_root", "bootstrap"}


def _part_name(names: list[str], seed: int) -> str:
    """``<held-out classes>__s<seed>``, with anything but letters, digits and ``-_+`` as ``_``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_+" else "_" for ch in group_key(names))
    return f"{safe}__s{seed}"


@reproducible
def run_unseen(
    cfg: UnseenConfig, out_dir: str | Path, resume: bool = True, rerun_other_code: bool = False
) -> dict[str, Any]:
    """Run (or resume) the analysis into ``out_dir``; returns what ``metrics.json`` holds.

    Writes ``parts/<holdout>__s<seed>.json`` as each run finishes, ``parts/before_alignment.json``,
    ``config.resolved.yaml``, ``environment.json``, ``metrics.json``, ``table.md`` and ``predictions.csv``.
    ``rerun_other_code``: recompute parts another code commit made (reused by default).
    """
    from hica.data.catalog import load_dataset
    from hica.data.descriptors import load_descriptors
    from hica.data.episodes import sample_episode
    from hica.environment import machine_info
    from hica.eval.grid import GridRun
    from hica.methods.hica import HiCA

    t_start = time.perf_counter()
    HiCA(**cfg.hica_args)  # bad hyperparameters fail before any loading
    ds = load_dataset(cfg.dataset, cfg.data_root)
    if not ds.descriptors:
        raise HicaError(
            f"dataset {ds.name} has no descriptors YAML; zero-shot classification needs class text"
        )
    groups = holdout_groups(cfg, ds.classes, ds.name)
    desc = load_descriptors(ds.descriptors)
    desc.check_classes(ds.classes, ds.name)
    episodes = {seed: sample_episode(ds, cfg.k, seed) for seed in cfg.seeds}
    samples = eval_samples(ds, cfg.split, list(episodes.values()), cfg.max_images)
    inp = UnseenInputs(cfg, ds, desc, samples)
    if len(np.unique(inp.labels)) < len(ds.classes):
        raise HicaError(f"max_images={cfg.max_images} leaves a class of {ds.name} without evaluation images")

    fingerprint = json.loads(json.dumps(inp.enc.fingerprint(), default=str))
    machine = machine_info(inp.device, inp.precision)
    grid = GridRun(
        out_dir,
        scope=cfg.model_dump(mode="json", exclude=NOT_IN_SCOPE),
        encoder=fingerprint,
        resume=resume,
        rerun_other_code=rerun_other_code,
        config_yaml=dump_config(cfg),
        environment=machine,
    )
    match = {"eval_ids": inp.ids}
    with grid as run:
        before = run.part("before_alignment", lambda: before_alignment_part(inp, cfg), match=match)
        records = [
            run.part(
                _part_name([ds.classes[c] for c in held], seed),
                lambda held=held, seed=seed: aligned_part(inp, held, seed, episodes[seed], cfg),
                match=match,
            )
            for held in groups
            for seed in cfg.seeds
        ]

        result = aggregate_unseen(cfg, ds, inp.labels, np.array(before["probs"]), records, groups)
        att = attribute_summary(before, records)
        if att is not None:
            result["attribute_accuracy"] = att
        result.update(
            config=cfg.model_dump(mode="json"),
            config_hash=run.hash,
            machine=machine,
            wall_seconds=round(time.perf_counter() - t_start, 1),
            compute_seconds=round(before["seconds"] + sum(r["total_seconds"] for r in records), 1),
            resumed_parts=run.stats.resumed,
            grid=run.summary(),
        )
        out = Path(out_dir)
        write_json(out / "metrics.json", result)
        write_text(out / "table.md", render_table(result))
        write_text_replacing_gz(
            out / "predictions.csv", predictions_csv(ds.classes, inp.ids, inp.labels, before, records)
        )
    return result


register_analysis(
    Analysis(
        name="unseen",
        help="Hold classes out of HiCA stage 2, then classify all classes zero-shot from their descriptors.",
        load_config=load_unseen_config,
        run=run_unseen,
        table="table.md",
    )
)
