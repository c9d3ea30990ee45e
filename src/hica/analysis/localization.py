"""Do the maps point at the lesion? HiCA region–text maps vs Grad-CAM, scored against BUSI lesion masks.

For each seed, one K-shot episode is drawn (:func:`hica.data.episodes.sample_episode`) and HiCA and the
fine-tuned baseline are fitted on it exactly as the benchmark fits them (:func:`hica.eval.protocol.
image_episode`, the methods' committed arguments; nothing here is tuned, and test masks are only scored).
Every test image with a non-empty lesion mask (BUSI normal images have none: they are excluded and counted)
gets four maps of its *true* class, all on the encoder's input grid (masks follow the same square resize):

* ``hica_map``: HiCA's region–text similarity cos(z_n, t_c) of the aligned local tokens with the class
  text prototype (:func:`hica.explain.class_maps`), 7×7 at 224 px, upsampled bilinearly;
* ``finetune_gradcam``: Grad-CAM (Selvaraju et al. 2017) of the fine-tuned baseline's class logit;
* ``hica_gradcam``: Grad-CAM of HiCA's blended logit (same model as ``hica_map``, other explanation);
* ``center_prior``: a centred isotropic Gaussian (σ = ``center_sigma`` × side), a non-learned reference —
  many BUSI lesions lie near the image centre, so a map must beat it to show it localises anything.

Grad-CAM is hand-written with a forward hook on the last convolutional feature map (the trunk's output
before pooling and the linear token projection; :func:`cam_layer`): channel weights are the spatial mean of
the gradient of the class logit, the map is the ReLU of the weighted channel sum, upsampled bilinearly. The
``grad-cam`` package would pull in OpenCV for the same dozen lines.

Metrics (:func:`pointing_game`, :func:`topk_iou`, :func:`energy_in_mask`) come with their chance levels for
a map that carries no information (random point, random pixels, uniform map). Each finished seed is saved
to ``parts/`` at once; a rerun skips seeds whose config hash and image list match.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from hica.config import EncoderConfig, _Strict, distinct_seeds, dump_config
from hica.errors import HicaError
from hica.io import atomic_write, write_json, write_text
from hica.runtime import reproducible

log = logging.getLogger(__name__)

#: Map name → what it is. ``hica_*`` explain the HiCA model, ``finetune_gradcam`` the fine-tuned baseline.
MAPS: dict[str, str] = {
    "hica_map": "HiCA region–text map",
    "hica_gradcam": "Grad-CAM of HiCA",
    "finetune_gradcam": "Grad-CAM of fine-tuned baseline",
    "center_prior": "Center prior (Gaussian)",
}
MODEL_OF: dict[str, str | None] = {
    "hica_map": "hica",
    "hica_gradcam": "hica",
    "finetune_gradcam": "finetune",
    "center_prior": None,
}


# -- metrics -----------------------------------------------------------------------------------------------


def _np_map(heatmap: Any) -> np.ndarray:
    if isinstance(heatmap, torch.Tensor):
        heatmap = heatmap.detach().float().cpu().numpy()
    return np.asarray(heatmap, dtype=np.float64)


def _pair(heatmap: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    h = _np_map(heatmap)
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool)
    if h.ndim != 2 or h.shape != m.shape:
        raise ValueError(f"heatmap {h.shape} and mask {m.shape} must be 2-D arrays of the same size")
    if not m.any():
        raise ValueError("empty lesion mask: localization is undefined (exclude the image and count it)")
    return h, m


def is_degenerate(heatmap: Any) -> bool:
    """True for a constant (e.g. all-zero Grad-CAM) or non-finite map: it points nowhere."""
    h = _np_map(heatmap)
    if not np.isfinite(h).all():
        return True
    hi, lo = float(h.max()), float(h.min())
    return hi - lo <= 1e-12 * max(1.0, abs(hi))


def max_point(heatmap: Any) -> tuple[int, int] | None:
    """(row, col) of the map's maximum; pixels tied at the maximum (a bilinear plateau) give their rounded
    centroid; None for a degenerate map."""
    h = _np_map(heatmap)
    if is_degenerate(h):
        return None
    hi, lo = h.max(), h.min()
    rows, cols = np.nonzero(h >= hi - 1e-6 * (hi - lo))
    return int(np.rint(rows.mean())), int(np.rint(cols.mean()))


def pointing_game(heatmap: Any, mask: Any, tolerance: float = 15.0) -> bool:
    """Pointing game (Zhang et al. 2016): a hit if the map's maximum lies within ``tolerance`` pixels
    (Euclidean, to the nearest mask pixel) of the mask. The paper's 15 px tolerance makes the game fair to
    coarse maps (a 7×7 grid at 224 px has 32 px cells); ``tolerance=0`` asks for the maximum inside the mask.
    A degenerate (constant) map is a miss."""
    h, m = _pair(heatmap, mask)
    p = max_point(h)
    if p is None:
        return False
    rows, cols = np.nonzero(m)
    d2 = (rows - p[0]) ** 2 + (cols - p[1]) ** 2
    return bool(d2.min() <= tolerance**2)


def topk_iou(heatmap: Any, mask: Any, fraction: float) -> float:
    """IoU with the mask of the top ``fraction`` of pixels by map value (``round(fraction·H·W)``, ≥ 1;
    ties broken in row-major order)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    h, m = _pair(heatmap, mask)
    k = max(1, int(round(fraction * h.size)))
    top = np.zeros(h.size, dtype=bool)
    top[np.argsort(-h.ravel(), kind="stable")[:k]] = True
    flat = m.ravel()
    return float((top & flat).sum() / (top | flat).sum())


def energy_in_mask(heatmap: Any, mask: Any) -> float:
    """Share of the min–max-normalised map's mass inside the mask; a uniform (constant) map scores the
    mask's area fraction, the chance level."""
    h, m = _pair(heatmap, mask)
    if is_degenerate(h):
        return float(m.mean())
    n = (h - h.min()) / (h.max() - h.min())
    return float(n[m].sum() / n.sum())


def pointing_chance(mask: Any, tolerance: float = 15.0) -> float:
    """Hit probability of a uniformly random point: the area fraction within ``tolerance`` px of the mask."""
    from scipy.ndimage import distance_transform_edt

    m = np.asarray(mask).astype(bool)
    if not m.any():
        raise ValueError("empty lesion mask")
    return float((distance_transform_edt(~m) <= tolerance).mean())


def topk_iou_chance(area_fraction: float, fraction: float) -> float:
    """Expected top-k IoU of randomly chosen pixels (fraction ``f``) with a mask of area fraction ``a``:
    ``f·a / (f + a − f·a)`` (ratio of expectations)."""
    f, a = fraction, area_fraction
    return f * a / (f + a - f * a)


def center_prior(size: int, sigma: float = 0.25) -> np.ndarray:
    """A centred isotropic Gaussian (``size``×``size``), σ = ``sigma`` × ``size`` pixels."""
    c = (size - 1) / 2
    r = np.arange(size, dtype=np.float64) - c
    d2 = r[:, None] ** 2 + r[None, :] ** 2
    return np.exp(-d2 / (2 * (sigma * size) ** 2))


def iou_name(fraction: float) -> str:
    """Metric key of top-``fraction`` IoU, e.g. 0.05 → ``iou_top5``."""
    return f"iou_top{100 * fraction:g}"


def image_metrics(
    heatmap: Any, mask: Any, tolerance: float = 15.0, fractions: tuple[float, ...] | list[float] = (0.1,)
) -> dict[str, float]:
    """All metrics of one map on one (non-empty) mask."""
    out = {
        "pointing_game": float(pointing_game(heatmap, mask, tolerance)),
        "energy_in_mask": energy_in_mask(heatmap, mask),
    }
    for f in fractions:
        out[iou_name(f)] = topk_iou(heatmap, mask, f)
    return out


# -- Grad-CAM ----------------------------------------------------------------------------------------------


def cam_layer(encoder: nn.Module) -> nn.Module:
    """The module whose output is the encoder's last convolutional feature map (B, C, h, w).

    For the default encoder that is the trunk's final BatchNorm+activation (``trunk.bn2``); its cells,
    linearly projected, are the encoder's ``local`` tokens and their mean the global feature."""
    trunk = getattr(encoder, "trunk", None)
    layer = getattr(trunk, "bn2", None)
    if not isinstance(layer, nn.Module) or not hasattr(trunk, "conv_head"):
        raise HicaError(
            f"Grad-CAM needs a CNN encoder with a timm EfficientNet-style trunk (like 'default'); encoder "
            f"{getattr(encoder, 'name', type(encoder).__name__)!r} has none (config key encoder.name)"
        )
    return layer


@contextlib.contextmanager
def _no_param_grad(module: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def grad_cam(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    layer: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    model: nn.Module | None = None,
) -> torch.Tensor:
    """Grad-CAM maps (B, h, w) on ``layer``'s output grid for class ``target`` (B,) of ``logits_fn(x)``.

    ``layer``'s output (B, C, h, w) is replaced by a detached leaf, so only the head behind it is
    differentiated; ``model``'s parameters are frozen meanwhile (no graph through the trunk). Images of a
    batch must not interact (BatchNorm in eval mode)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        leaf = out.detach().requires_grad_(True)
        store["a"] = leaf
        return leaf

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad(), _no_param_grad(model) if model is not None else contextlib.nullcontext():
            logits = logits_fn(x)
            score = logits.float().gather(1, target.view(-1, 1).to(logits.device)).sum()
            (grad,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    a = store["a"].detach().float()
    if a.dim() != 4:
        raise ValueError(f"Grad-CAM layer output must be (B, C, h, w), got {tuple(a.shape)}")
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * a).sum(1))


# -- config ------------------------------------------------------------------------------------------------


class LocalizationConfig(_Strict):
    """``hica analyze localization``: HiCA maps vs Grad-CAM against lesion masks, K-shot, over seeds."""

    name: str = "localization"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    dataset: str | dict[str, Any] = "busi"
    split: str = "test"
    k: int = Field(16, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3])
    hica_args: dict[str, Any] = Field(default_factory=dict)
    finetune_args: dict[str, Any] = Field(default_factory=dict)
    tolerance_px: float = Field(15.0, ge=0)  # pointing-game tolerance, pixels of the encoder input
    top_fractions: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2])
    center_sigma: float = Field(0.25, gt=0)  # center prior σ as a fraction of the image side
    gallery: int = Field(8, ge=0)  # images in gallery.png, half per lesion class
    gallery_seed: int = Field(0, ge=0)  # which images the gallery shows (fixed, not looked at)
    max_images: int | None = Field(None, ge=1)  # first N lesion images, classes alternating; None = all
    batch_size: int = Field(32, ge=1)
    device: str = "auto"
    precision: str = "auto"
    data_root: str | None = None

    _seeds = field_validator("seeds")(distinct_seeds)

    @field_validator("top_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError(f"top_fractions must lie in (0, 1] (at least one), got {v}")
        return sorted(set(v))

    @field_validator("hica_args")
    @classmethod
    def _hica_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        from hica.methods.hica import HiCA

        try:
            HiCA(**v)
        except HicaError as e:
            raise ValueError(str(e)) from e
        return v

    @field_validator("finetune_args")
    @classmethod
    def _finetune_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        from hica.methods.finetune import FineTune

        try:
            FineTune(**v)  # the method's own settings check (hica.methods.settings)
        except HicaError as e:
            raise ValueError(str(e)) from e
        return v


def load_localization_config(path: str | Path, overrides: dict[str, Any] | None = None) -> LocalizationConfig:
    """Read a localization YAML; errors name the file and the key."""
    from hica.config import load_model_config

    return load_model_config(LocalizationConfig, path, overrides)


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
    from hica.alignment.imagedata import input_spec, load_store
    from hica.eval.protocol import images_of

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


def _load_inputs(cfg: LocalizationConfig) -> tuple[Any, Any]:
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


# -- one seed ----------------------------------------------------------------------------------------------


def _batched(x: torch.Tensor, bs: int, device: torch.device) -> Iterator[tuple[slice, torch.Tensor]]:
    for i in range(0, len(x), bs):
        yield slice(i, i + bs), x[i : i + bs].to(device)


def _hica_grids(hica: Any, data: LesionImages, bs: int, device: torch.device) -> dict[str, torch.Tensor]:
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
    return {"hica_map": torch.cat(sim), "hica_gradcam": torch.cat(cam)}


def _finetune_grids(ft: Any, data: LesionImages, bs: int, device: torch.device) -> dict[str, torch.Tensor]:
    enc = ft.encoder.eval()
    layer = cam_layer(enc)
    y = torch.tensor(data.labels)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return ft._logits(enc, ft.head, x)

    cam = [grad_cam(logits, layer, xb, y[sl], model=enc).cpu() for sl, xb in _batched(data.x, bs, device)]
    return {"finetune_gradcam": torch.cat(cam)}


def _score_images(
    cfg: LocalizationConfig,
    data: LesionImages,
    grids: dict[str, torch.Tensor],
    correct: dict[str, list[bool]],
) -> list[dict[str, Any]]:
    from hica.explain import upsample_maps

    s = data.size
    prior = center_prior(s, cfg.center_sigma)
    up = {m: upsample_maps(g, s).numpy() for m, g in grids.items()}
    rows = []
    for i, sid in enumerate(data.ids):
        mask = data.masks[i]
        maps = {**{m: up[m][i] for m in up}, "center_prior": prior}
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
                    for m in MAPS
                },
                "degenerate": {m: is_degenerate(maps[m]) for m in MAPS},
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
    """Fit HiCA and the fine-tuned baseline on seed ``seed``'s episode, map and score every lesion image."""
    from hica.data.episodes import sample_episode
    from hica.eval.protocol import image_episode
    from hica.methods.finetune import FineTune
    from hica.methods.hica import HiCA

    t_seed = time.perf_counter()
    ep = sample_episode(ds, cfg.k, seed)
    by_id = {s.id: s for sp in ds.splits.values() for s in sp}
    y = torch.tensor(data.labels)
    fits: dict[str, Any] = {}
    grids: dict[str, torch.Tensor] = {}
    correct: dict[str, list[bool]] = {}
    t_maps = 0.0
    for model, cls, args, make_grids in (
        ("hica", HiCA, cfg.hica_args, _hica_grids),
        ("finetune", FineTune, cfg.finetune_args, _finetune_grids),
    ):
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
    images = _score_images(cfg, data, grids, correct)
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


# -- summary -----------------------------------------------------------------------------------------------


def _ms(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(a.mean()), 4),
        "std": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 4),
        "per_seed": [round(float(v), 4) for v in a],
    }


def metric_names(cfg: LocalizationConfig) -> list[str]:
    """Metric keys in table order."""
    return ["pointing_game", "energy_in_mask", *[iou_name(f) for f in cfg.top_fractions]]


def summarize(parts: list[dict[str, Any]], cfg: LocalizationConfig) -> dict[str, Any]:
    """Per map: mean ± std over seeds of the per-seed image means, overall and per lesion class."""
    names = metric_names(cfg)
    first = parts[0]["images"]
    scopes = {"all": None, **{c: c for c in dict.fromkeys(r["class"] for r in first)}}

    def rows(p: dict[str, Any], scope: str | None) -> list[dict[str, Any]]:
        return [r for r in p["images"] if scope is None or r["class"] == scope]

    maps: dict[str, Any] = {}
    for m, label in MAPS.items():
        entry: dict[str, Any] = {"label": label, "model": MODEL_OF[m]}
        for key, scope in scopes.items():
            entry[key] = {
                k: _ms([np.mean([r["metrics"][m][k] for r in rows(p, scope)]) for p in parts]) for k in names
            }
            if MODEL_OF[m]:
                entry[key]["model_accuracy"] = _ms(
                    [np.mean([r["correct"][MODEL_OF[m]] for r in rows(p, scope)]) for p in parts]
                )
        entry["degenerate_maps"] = sum(r["degenerate"][m] for p in parts for r in p["images"])
        if MODEL_OF[m]:  # pooled over seeds: does the map localise better when the model is right?
            entry["by_correctness"] = {}
            for ok, key in ((True, "correct"), (False, "wrong")):
                sel = [r for p in parts for r in p["images"] if r["correct"][MODEL_OF[m]] == ok]
                entry["by_correctness"][key] = {"n": len(sel)} | {
                    k: round(float(np.mean([r["metrics"][m][k] for r in sel])), 4) if sel else None
                    for k in names
                }
        maps[m] = entry
    chance: dict[str, Any] = {}
    for key, scope in scopes.items():
        sel = rows(parts[0], scope)
        area = [r["mask_area_fraction"] for r in sel]
        chance[key] = {
            "pointing_game": round(float(np.mean([r["pointing_chance"] for r in sel])), 4),
            "energy_in_mask": round(float(np.mean(area)), 4),
            **{
                iou_name(f): round(float(np.mean([topk_iou_chance(a, f) for a in area])), 4)
                for f in cfg.top_fractions
            },
        }
    counts = {key: len(rows(parts[0], scope)) for key, scope in scopes.items()}
    return {"maps": maps, "chance": chance, "n_images": counts}


def _pm(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    return f"{d['mean']:.3f} ± {d['std']:.3f}" if len(d["per_seed"]) > 1 else f"{d['mean']:.3f}"


def markdown(result: dict[str, Any], cfg: LocalizationConfig) -> str:
    """table.md: the tables and what each metric and chance level means."""
    names = metric_names(cfg)
    heads = {
        "pointing_game": f"Pointing game (±{cfg.tolerance_px:g} px)",
        "energy_in_mask": "Energy in mask",
        **{iou_name(f): f"IoU top {100 * f:g}%" for f in cfg.top_fractions},
    }
    s = result["summary"]
    n = s["n_images"]
    grid = "×".join(map(str, result["grid"]))
    size = result["input_size"]
    seed_s = sum(t["seconds"] for t in result["timings"].values())
    excl = result["excluded"]
    lines = [
        f"# Lesion localization: {result['dataset']} ({cfg.split}), K = {cfg.k}, seeds {cfg.seeds}",
        "",
        f"{n['all']} test images with a lesion mask ("
        + ", ".join(f"{c} {v}" for c, v in n.items() if c != "all")
        + "); excluded (no lesion): "
        + (", ".join(f"{c} {v}" for c, v in excl.items()) or "none")
        + f". Maps of the true class at {result['input_size']}×{result['input_size']} px. "
        "Mean ± std over seeds of the per-seed mean over images. Model accuracy: of the model the map "
        "explains, on these images.",
        "",
    ]
    for key in ["all", *[c for c in n if c != "all"]]:
        lines += [
            f"## {'All lesion images' if key == 'all' else key} (n = {n[key]})",
            "",
            "| Map | " + " | ".join(heads[k] for k in names) + " | Model accuracy |",
            "|---|" + "---|" * (len(names) + 1),
        ]
        for m in MAPS:
            e = s["maps"][m][key]
            lines.append(
                f"| {MAPS[m]} | "
                + " | ".join(_pm(e[k]) for k in names)
                + f" | {_pm(e.get('model_accuracy'))} |"
            )
        c = s["chance"][key]
        lines.append(
            "| *chance (uninformative map)* | " + " | ".join(f"{c[k]:.3f}" for k in names) + " | – |"
        )
        lines.append("")
    lines += [
        "## Pointing game by whether the model classified the image correctly (pooled over seeds)",
        "",
        "| Map | correct: n | correct: pointing game | wrong: n | wrong: pointing game |",
        "|---|---|---|---|---|",
    ]
    for m in MAPS:
        bc = s["maps"][m].get("by_correctness")
        if bc:
            ok, bad = bc["correct"], bc["wrong"]

            def f(v: float | None) -> str:
                return "–" if v is None else f"{v:.3f}"

            cells = [str(ok["n"]), f(ok["pointing_game"]), str(bad["n"]), f(bad["pointing_game"])]
            lines.append(f"| {MAPS[m]} | " + " | ".join(cells) + " |")
    degenerate = {MAPS[m]: s["maps"][m]["degenerate_maps"] for m in MAPS if s["maps"][m]["degenerate_maps"]}
    lines += [
        "",
        "Degenerate (constant, e.g. all-zero Grad-CAM) maps, counted as pointing-game misses: "
        + (", ".join(f"{k} {v}" for k, v in degenerate.items()) or "none")
        + ".",
        "",
        "## What the numbers mean",
        "",
        f"- **Pointing game** (Zhang et al. 2016): share of images whose map maximum lies within "
        f"{cfg.tolerance_px:g} px of the lesion mask (the paper's tolerance; it keeps coarse {grid} maps, "
        f"{size / result['grid'][0]:.0f} px per cell, comparable with Grad-CAM). Chance: the probability "
        "that a uniformly random point lands within the tolerance of the mask (area of the dilated mask).",
        "- **Energy in mask**: the map, min–max scaled to [0, 1] per image, summed inside the mask over its "
        "total. Chance: a uniform map scores the mask's area fraction.",
        "- **IoU top p%**: IoU of the p% highest-valued pixels with the mask. Chance: randomly chosen "
        "pixels, p·a / (p + a − p·a) for mask area fraction a.",
        f"- **Center prior**: a centred Gaussian, σ = {cfg.center_sigma:g} × side, fitted to nothing; a map "
        'that does not beat it localises no better than "the lesion is usually in the middle".',
        f"- **HiCA region–text map**: cosine of HiCA's aligned local tokens ({grid} grid at {size} px) "
        "with the true class's text prototype, upsampled bilinearly. **Grad-CAM**: gradient-weighted "
        "last convolutional feature map for the true class's logit (fine-tuned baseline; and HiCA's "
        "blended logit as a second reference). Both models are fitted on the same K-shot episode with "
        "their committed arguments. Note: HiCA's L_local is trained on the support images' lesion masks "
        "(the few-shot annotation budget, never a test mask); the fine-tuned baseline sees labels only.",
        "",
        f"Wall time {result['wall_seconds']:.0f} s (this invocation; seeds done earlier are reused), "
        f"{seed_s:.0f} s fitting and mapping all seeds, on {result['machine'].get('cpu', '?')} "
        f"({result['machine'].get('device')}, {result['machine'].get('precision')}, "
        f"{result['machine'].get('torch_threads')} threads).",
        "",
    ]
    return "\n".join(lines)


def per_image_csv(parts: list[dict[str, Any]], cfg: LocalizationConfig) -> str:
    """One row per (seed, image, map)."""
    names = metric_names(cfg)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["seed", "id", "class", "mask_area_fraction", "pointing_chance", "map", "model_correct", "degenerate"]
        + names
    )
    for p in parts:
        for r in p["images"]:
            for m in MAPS:
                ok = r["correct"][MODEL_OF[m]] if MODEL_OF[m] else ""
                w.writerow(
                    [p["seed"], r["id"], r["class"], r["mask_area_fraction"], r["pointing_chance"], m]
                    + [int(ok) if ok != "" else "", int(r["degenerate"][m])]
                    + [r["metrics"][m][k] for k in names]
                )
    return buf.getvalue()


# -- gallery -----------------------------------------------------------------------------------------------


def gallery_indices(labels: list[int], n: int, seed: int = 0) -> list[int]:
    """A fixed choice of ``n`` images split evenly across the lesion classes present (by ``seed``)."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    if not classes or n <= 0:
        return []
    out: list[int] = []
    for j, c in enumerate(classes):
        quota = n // len(classes) + (1 if j < n % len(classes) else 0)
        idx = [i for i, y in enumerate(labels) if y == c]
        out += sorted(rng.choice(idx, size=min(quota, len(idx)), replace=False).tolist())
    return out


def plot_gallery(part: dict[str, Any], data: LesionImages, cfg: LocalizationConfig, out: Path) -> Path | None:
    """gallery.png: per image, the lesion contour, the three learned maps and the center prior."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hica.explain import upsample_maps

    pick = gallery_indices(data.labels, cfg.gallery, cfg.gallery_seed)
    if not pick:
        return None
    rows = {r["id"]: r for r in part["images"]}
    cols = ["image", "hica_map", "hica_gradcam", "finetune_gradcam", "center_prior"]
    titles = {"image": "image + lesion mask", **MAPS}
    fig, axes = plt.subplots(
        len(pick),
        len(cols),
        figsize=(2.3 * len(cols) + 0.8, 2.55 * len(pick) + 0.4),
        dpi=150,
        squeeze=False,
        layout="constrained",
    )
    prior = center_prior(data.size, cfg.center_sigma)
    im = None
    for r, i in enumerate(pick):
        rec = rows[data.ids[i]]
        img, mask = data.display[i], data.masks[i]
        ok = {m: "right" if v else "wrong" for m, v in rec["correct"].items()}
        for c, col in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray")
            if col == "image":
                ax.set_title(
                    f"{data.ids[i].split('/')[-1]}\n{rec['class']}: HiCA {ok['hica']}, "
                    f"fine-tune {ok['finetune']}",
                    fontsize=7.5,
                )
            else:
                hmap = (
                    prior
                    if col == "center_prior"
                    else upsample_maps(torch.tensor([rec["grids"][col]]), data.size)[0].numpy()
                )
                lo, hi = float(hmap.min()), float(hmap.max())
                norm = (hmap - lo) / (hi - lo) if hi > lo else np.zeros_like(hmap)
                im = ax.imshow(norm, cmap="jet", alpha=0.45, vmin=0, vmax=1)
                p = max_point(hmap)
                if p is not None:
                    ax.plot(p[1], p[0], marker="x", color="white", markersize=8, mew=2)
                met = rec["metrics"][col]
                hit = "hit" if met["pointing_game"] else "miss"
                ax.set_title(
                    f"{titles[col]}\n{hit}, energy {met['energy_in_mask']:.2f}",
                    fontsize=7.5,
                )
            ax.contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
    if im is not None:  # an opaque colorbar: the overlays' alpha would wash it out
        sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap="jet")
        cbar = fig.colorbar(sm, ax=axes, fraction=0.03, pad=0.01, shrink=0.5)
        cbar.set_label("map value (min–max scaled per image and map)", fontsize=8)
    fig.suptitle(
        f"{cfg.split} images, seed {part['seed']}, K = {cfg.k}: green = lesion mask, × = map maximum "
        f"(pointing game, ±{cfg.tolerance_px:g} px); maps of the true class",
        fontsize=9,
    )
    # Full RGB without alpha at 110 dpi (a 256-colour palette would band the heatmaps and the colorbar).
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=110)
    plt.close(fig)
    buf.seek(0)
    rgb = Image.open(buf).convert("RGB")
    atomic_write(out, lambda p: rgb.save(p, format="PNG", optimize=True))
    return out


# -- the run -----------------------------------------------------------------------------------------------


def _seed_seconds(part: dict[str, Any]) -> float:
    """A seed's compute time (parts written before ``seconds`` was recorded: fits + maps + scoring)."""
    if part.get("seconds") is not None:
        return part["seconds"]
    fits = sum(f["fit_seconds"] for f in part["fits"].values())
    return round(fits + part["map_seconds"] + part["score_seconds"], 2)


def config_hash(cfg: LocalizationConfig) -> str:
    """Hash of what changes a seed's results (not the name, data root, seed list, gallery or batch size)."""
    scope = cfg.model_dump(
        mode="json", exclude={"name", "data_root", "seeds", "gallery", "gallery_seed", "batch_size"}
    )
    return hashlib.sha256(json.dumps(scope, sort_keys=True).encode()).hexdigest()[:12]


@reproducible
def run_localization(cfg: LocalizationConfig, out_dir: str | Path, resume: bool = True) -> dict[str, Any]:
    """Run (or resume) the analysis into ``out_dir``: ``metrics.json``, ``table.md``, ``per_image.csv``,
    ``gallery.png``, ``parts/seed<N>.json``; returns what ``metrics.json`` holds."""
    from hica.encoders import create_encoder
    from hica.eval.protocol import machine_info
    from hica.runtime import resolve_device, resolve_precision

    t_start = time.perf_counter()
    out = Path(out_dir)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    ds, desc = _load_inputs(cfg)
    enc = create_encoder(cfg.encoder.name, **cfg.encoder.args).to(device).eval()
    cam_layer(enc)  # fail now, not after the first fit, on an encoder without a conv trunk
    data = lesion_images(enc, ds, cfg.split, cfg.max_images)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.resolved.yaml", dump_config(cfg))
    h = config_hash(cfg)
    parts = []
    for seed in cfg.seeds:
        path = out / "parts" / f"seed{seed}.json"
        if resume and path.is_file():
            rec = json.loads(path.read_text())
            if rec.get("config_hash") == h and rec.get("image_ids") == data.ids:
                log.info("seed %d: done earlier, skipped", seed)
                parts.append(rec)
                continue
        log.info("seed %d: fitting HiCA and fine-tune, mapping %d images", seed, len(data.ids))
        rec = run_seed(cfg, enc, ds, desc, data, seed, device, precision)
        rec["config_hash"] = h
        write_json(path, rec)
        parts.append(rec)
    result: dict[str, Any] = {
        "analysis": "localization",
        "name": cfg.name,
        "dataset": ds.name,
        "split": cfg.split,
        "k": cfg.k,
        "seeds": cfg.seeds,
        "input_size": data.size,
        "excluded": data.excluded,
        "summary": summarize(parts, cfg),
        "fits": {p["seed"]: p["fits"] for p in parts},
        "timings": {p["seed"]: {"seconds": _seed_seconds(p), "map_seconds": p["map_seconds"]} for p in parts},
        "grid": list(np.asarray(parts[0]["images"][0]["grids"]["hica_map"]).shape),
        "config": cfg.model_dump(mode="json"),
        "config_hash": h,
        "machine": {**machine_info(device, precision), "encoder": enc.fingerprint()},
    }
    write_text(out / "per_image.csv", per_image_csv(parts, cfg))
    plot_gallery(parts[0], data, cfg, out / "gallery.png")
    result["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    write_text(out / "table.md", markdown(result, cfg))
    write_json(out / "metrics.json", result)
    return result
