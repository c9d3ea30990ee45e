"""The cells of ``hica analyze localization``: the scored lesion images and one seed's fits, maps and scores.

A seed draws one K-shot episode, fits HiCA, the fine-tuned baseline and (setting ``compare_global_only``)
HiCA's global-only ablation on it exactly as the benchmark fits them (:func:`hica.eval.episode_data.
image_episode`), maps every lesion image (each HiCA model's region–text map and Grad-CAM, the baseline's
Grad-CAM) and scores the maps and the center prior against the lesion masks (:mod:`hica.eval.localization`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hica.analysis.localization_config import LocalizationConfig
from hica.errors import HicaError
from hica.eval.gradcam import cam_layer, grad_cam
from hica.eval.localization import center_prior, image_metrics, is_degenerate, pointing_chance

# -- data --------------------------------------------------------------------------------------------------


@dataclass
class LesionImages:
    """The scored images: ``x`` preprocessed (N, 3, S, S), ``masks`` bool (N, S, S), ``display`` uint8
    (N, S, S, 3) as the model saw them; ``excluded`` counts the split's images without a lesion, by class."""

    ids: list[str]
    labels: list[int]
    classes: list[str]
    x: torch.Tensor
    masks: np.ndarray
    display: np.ndarray
    excluded: dict[str, int]

    @property
    def size(self) -> int:
        return int(self.masks.shape[-1])


def first_n_alternating(labels: list[int], n: int | None) -> list[int]:
    """Indices of the first ``n`` items taking classes in turn (each class in its given order)."""
    if n is None or n >= len(labels):
        return list(range(len(labels)))
    queues = {c: [i for i, y in enumerate(labels) if y == c] for c in sorted(set(labels))}
    picked: list[int] = []
    while len(picked) < n:
        for q in queues.values():
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return sorted(picked)


def lesion_images(enc: Any, ds: Any, split: str, max_images: int | None = None) -> LesionImages:
    """Images of ``split`` with a non-empty lesion mask, preprocessed by ``enc``; the others are counted."""
    from hica.eval.episode_data import images_of
    from hica.model.imagedata import input_spec, load_store

    samples = sorted(ds.split(split), key=lambda s: s.id)
    store = load_store(samples, input_spec(enc).size, with_masks=True)
    keep = store.masks.flatten(1).any(1)
    excluded = {c: 0 for c in ds.classes}
    for s, k in zip(samples, keep.tolist(), strict=True):
        if not k:
            excluded[ds.classes[s.label]] += 1
    idx = [i for i, k in enumerate(keep.tolist()) if k]
    if not idx:
        raise HicaError(f"no image of split {split!r} of dataset {ds.name} has a non-empty lesion mask")
    idx = [idx[j] for j in first_n_alternating([samples[i].label for i in idx], max_images)]
    chosen = [samples[i] for i in idx]
    return LesionImages(
        ids=[s.id for s in chosen],
        labels=[s.label for s in chosen],
        classes=list(ds.classes),
        x=images_of(enc, chosen),
        masks=store.masks[idx].numpy(),
        display=store.images[idx].permute(0, 2, 3, 1).numpy(),
        excluded={c: n for c, n in excluded.items() if n},
    )


def load_inputs(cfg: LocalizationConfig) -> tuple[Any, Any]:
    """The dataset and its descriptors; HicaError when it has no masks or no class text."""
    from hica.data.catalog import load_dataset
    from hica.data.descriptors import load_descriptors

    ds = load_dataset(cfg.dataset, cfg.data_root)
    if not any(s.masks for s in ds.split(cfg.split)):
        raise HicaError(
            f"dataset {ds.name} has no lesion masks in split {cfg.split!r} (config key dataset): the "
            "localization analysis scores maps against masks; use a dataset with masks such as busi"
        )
    if not ds.descriptors:
        raise HicaError(
            f"dataset {ds.name} has no class descriptors (config key dataset): HiCA needs class text; "
            "give the dataset a 'descriptors' YAML (see docs/descriptors.md)"
        )
    desc = load_descriptors(ds.descriptors)
    desc.check_classes(ds.classes, ds.name)
    return ds, desc


def upsample_grid(grid: Any, size: int) -> np.ndarray:
    """One grid map (h, w), e.g. as stored in a part, upsampled bilinearly to ``size``×``size``."""
    from hica.explain import upsample_maps

    return upsample_maps(torch.tensor([grid]), size)[0].numpy()


# -- one seed ----------------------------------------------------------------------------------------------


def _batched(x: torch.Tensor, bs: int, device: torch.device) -> Iterator[tuple[slice, torch.Tensor]]:
    for i in range(0, len(x), bs):
        yield slice(i, i + bs), x[i : i + bs].to(device)


def _hica_grids(
    hica: Any, data: LesionImages, bs: int, device: torch.device, prefix: str = "hica"
) -> dict[str, torch.Tensor]:
    """A HiCA model's region–text map and Grad-CAM of each image: ``<prefix>_map``, ``<prefix>_gradcam``."""
    from hica.explain import class_maps

    enc = hica.model.encoder.eval()
    layer = cam_layer(enc)
    y = torch.tensor(data.labels)
    sim, cam = [], []

    def logits(x: torch.Tensor) -> torch.Tensor:
        return hica.logits(F.normalize(enc.encode_image(x).global_.float(), dim=-1), hica.alpha)

    for sl, xb in _batched(data.x, bs, device):
        maps = class_maps(enc, hica.text_protos, xb).cpu()  # (B, C, h, w)
        sim.append(maps[torch.arange(len(maps)), y[sl]])
        cam.append(grad_cam(logits, layer, xb, y[sl], model=enc).cpu())
    return {f"{prefix}_map": torch.cat(sim), f"{prefix}_gradcam": torch.cat(cam)}


def _finetune_grids(ft: Any, data: LesionImages, bs: int, device: torch.device) -> dict[str, torch.Tensor]:
    enc = ft.encoder.eval()
    layer = cam_layer(enc)
    y = torch.tensor(data.labels)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return ft._logits(enc, ft.head, x)

    cam = [grad_cam(logits, layer, xb, y[sl], model=enc).cpu() for sl, xb in _batched(data.x, bs, device)]
    return {"finetune_gradcam": torch.cat(cam)}


GridsFn = Callable[[Any, LesionImages, int, torch.device], dict[str, torch.Tensor]]


def fitted_models(cfg: LocalizationConfig) -> list[tuple[str, type, dict[str, Any], GridsFn]]:
    """The models a seed fits, in order: (model key, method class, its arguments, its maps). With
    ``compare_global_only``, the registered ``hica_global_only`` with HiCA's arguments; HicaError when those
    arguments turn L_local or L_cross back on (the comparison would not be with a global-only model)."""
    from hica.methods.base import method_registry
    from hica.methods.finetune import FineTune
    from hica.methods.hica import HiCA

    models: list[tuple[str, type, dict[str, Any], GridsFn]] = [
        ("hica", HiCA, cfg.hica_args, _hica_grids),
        ("finetune", FineTune, cfg.finetune_args, _finetune_grids),
    ]
    if cfg.compare_global_only:
        cls = method_registry()["hica_global_only"]
        settings = cls(**cfg.hica_args).config
        on = [k for k in ("use_local", "use_cross") if getattr(settings, k)]
        if on:
            raise HicaError(
                f"hica_args set {', '.join(on)}: the global-only comparison model (hica_global_only with "
                "hica_args) would not be global-only; drop them from hica_args or set compare_global_only: "
                "false"
            )
        models.append(("global_only", cls, cfg.hica_args, partial(_hica_grids, prefix="global_only")))
    return models


def score_images(
    cfg: LocalizationConfig,
    data: LesionImages,
    grids: dict[str, torch.Tensor],
    correct: dict[str, list[bool]],
) -> list[dict[str, Any]]:
    """One record per image: mask area, chance, whether each model is right, and every map's metrics."""
    from hica.explain import upsample_maps

    s = data.size
    prior = center_prior(s, cfg.center_sigma)
    up = {m: upsample_maps(g, s).numpy() for m, g in grids.items()}
    rows = []
    for i, sid in enumerate(data.ids):
        mask = data.masks[i]
        maps = {**{m: up[m][i] for m in up}, "center_prior": prior}  # every map the seed made
        rows.append(
            {
                "id": sid,
                "label": data.labels[i],
                "class": data.classes[data.labels[i]],
                "mask_area_fraction": round(float(mask.mean()), 6),
                "pointing_chance": round(pointing_chance(mask, cfg.tolerance_px), 6),
                "correct": {model: c[i] for model, c in correct.items()},
                "metrics": {
                    m: {
                        k: round(v, 6)
                        for k, v in image_metrics(maps[m], mask, cfg.tolerance_px, cfg.top_fractions).items()
                    }
                    for m in maps
                },
                "degenerate": {m: is_degenerate(maps[m]) for m in maps},
                "grids": {m: np.round(grids[m][i].numpy(), 6).tolist() for m in grids},
            }
        )
    return rows


def run_seed(
    cfg: LocalizationConfig,
    enc: Any,
    ds: Any,
    desc: Any,
    data: LesionImages,
    seed: int,
    device: torch.device,
    precision: str,
) -> dict[str, Any]:
    """Fit the models (:func:`fitted_models`) on seed ``seed``'s episode, map and score every lesion image."""
    from hica.data.episodes import sample_episode
    from hica.eval.episode_data import image_episode

    t_seed = time.perf_counter()
    ep = sample_episode(ds, cfg.k, seed)
    by_id = {s.id: s for sp in ds.splits.values() for s in sp}
    y = torch.tensor(data.labels)
    fits: dict[str, Any] = {}
    grids: dict[str, torch.Tensor] = {}
    correct: dict[str, list[bool]] = {}
    t_maps = 0.0
    for model, cls, args, make_grids in fitted_models(cfg):
        t0 = time.perf_counter()
        episode = image_episode(enc, ds, ep, by_id, seed, cls, desc)
        m = cls(**args).fit(enc, episode, device, precision)
        fits[model] = {"selected": m.selected, "fit_seconds": round(time.perf_counter() - t0, 2)}
        correct[model] = (m.predict_proba(data.x, cfg.batch_size).argmax(1) == y).tolist()
        t1 = time.perf_counter()
        grids.update(make_grids(m, data, cfg.batch_size, device))
        t_maps += time.perf_counter() - t1
        del m, episode
    t1 = time.perf_counter()
    images = score_images(cfg, data, grids, correct)
    return {
        "seed": seed,
        "episode": ep.to_json(),
        "fits": fits,
        "map_seconds": round(t_maps, 2),
        "score_seconds": round(time.perf_counter() - t1, 2),
        "seconds": round(time.perf_counter() - t_seed, 2),
        "image_ids": data.ids,
        "images": images,
    }
