"""Report of ``hica analyze localization``: the summary over seeds, ``table.md``, ``per_image.csv``, gallery.

Everything here reads the analysis's parts (one JSON record per seed, as :func:`hica.analysis.
localization_cells.run_seed` returns it) and its settings; nothing is fitted or mapped here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hica.eval.localization import (
    MAPS,
    MODEL_OF,
    center_prior,
    iou_name,
    max_point,
    metric_names,
    topk_iou_chance,
)
from hica.eval.stats import seed_summary
from hica.io import atomic_write


class LocalizationSettings(Protocol):
    """The settings of the analysis the report reads (``hica.analysis.localization_config``)."""

    split: str
    k: int
    seeds: list[int]
    tolerance_px: float
    top_fractions: list[float]
    center_sigma: float
    gallery: int
    gallery_seed: int


class GalleryImages(Protocol):
    """The scored images as the gallery shows them (``hica.analysis.localization_cells.LesionImages``)."""

    ids: list[str]
    labels: list[int]
    masks: np.ndarray
    display: np.ndarray

    @property
    def size(self) -> int: ...


# -- summary over seeds ------------------------------------------------------------------------------------


def _ms(values: list[float]) -> dict[str, Any]:
    return seed_summary(values, per_seed=True)


def summarize(parts: list[dict[str, Any]], cfg: LocalizationSettings) -> dict[str, Any]:
    """Per map: mean ± std over seeds of the per-seed image means, overall and per lesion class."""
    names = metric_names(cfg.top_fractions)
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


def markdown(result: dict[str, Any], cfg: LocalizationSettings) -> str:
    """table.md: the tables and what each metric and chance level means."""
    names = metric_names(cfg.top_fractions)
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


# -- per-image CSV -----------------------------------------------------------------------------------------


def per_image_csv(parts: list[dict[str, Any]], cfg: LocalizationSettings) -> str:
    """One row per (seed, image, map)."""
    names = metric_names(cfg.top_fractions)
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


def plot_gallery(
    part: dict[str, Any],
    data: GalleryImages,
    cfg: LocalizationSettings,
    out: Path,
    upsample: Callable[[Any, int], np.ndarray],
) -> Path | None:
    """gallery.png: per image, the lesion contour, the three learned maps and the center prior.

    ``part`` is one seed's part; ``upsample(grid, size)`` brings a stored grid map to the image size, as
    the analysis did before scoring it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
                hmap = prior if col == "center_prior" else upsample(rec["grids"][col], data.size)
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
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=110)
    plt.close(fig)
    buf.seek(0)
    rgb = Image.open(buf).convert("RGB")
    atomic_write(out, lambda p: rgb.save(p, format="PNG", optimize=True))
    return out
