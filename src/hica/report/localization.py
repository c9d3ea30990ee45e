"""Report of ``hica analyze localization``: the summary over seeds, ``table.md``, ``per_image.csv``, gallery.

Everything here reads the analysis's parts (one JSON record per seed, as :func:`hica.analysis.
localization_cells.run_seed` returns it) and its settings; nothing is fitted or mapped here. The maps are
those the parts scored: :data:`hica.eval.localization.MAPS`, plus the global-only ablation's two
(:data:`GLOBAL_ONLY_MAPS`) when the analysis fitted it; :func:`versus_global_only` then compares each
full-HiCA map with its global-only counterpart, paired per image. The gallery is in
:mod:`hica.report.localization_gallery`.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Protocol

import numpy as np

from hica.eval.localization import MAPS, MODEL_OF, iou_name, metric_names, topk_iou_chance
from hica.eval.stats import seed_summary

#: The global-only ablation's maps (setting ``compare_global_only``) → label; the model key is "global_only".
GLOBAL_ONLY_MAPS: dict[str, str] = {
    "global_only_map": "Global-only HiCA region–text map",
    "global_only_gradcam": "Grad-CAM of global-only HiCA",
}
#: Full-HiCA map → its global-only counterpart (the paired comparison), and the map type both show.
GLOBAL_ONLY_OF: dict[str, str] = {"hica_map": "global_only_map", "hica_gradcam": "global_only_gradcam"}
MAP_TYPE: dict[str, str] = {"hica_map": "region–text map", "hica_gradcam": "Grad-CAM"}
N_BOOT = 2000  # bootstrap resamples of the images for the paired CI (fixed seed 0)
GLOBAL_ONLY_NOTE = (
    "- **Global-only HiCA**: the ablation `hica_global_only` (L_local and L_cross off: L_global only; HiCA's "
    "arguments otherwise), fitted on the same episode and mapped the same way. Full HiCA beating it credits "
    "the pointing game to the local/cross levels; a tie means L_global alone (class-level image–text "
    "alignment) already points there."
)


def _table_order() -> dict[str, str]:
    out: dict[str, str] = {}
    for m, label in MAPS.items():
        out[m] = label
        if m in GLOBAL_ONLY_OF:  # each full-HiCA map beside its global-only counterpart
            out[GLOBAL_ONLY_OF[m]] = GLOBAL_ONLY_MAPS[GLOBAL_ONLY_OF[m]]
    return out


#: Every map the analysis may score → its label, in table order; and the model each map explains.
LABELS: dict[str, str] = _table_order()
MODELS: dict[str, str | None] = {**MODEL_OF, **dict.fromkeys(GLOBAL_ONLY_MAPS, "global_only")}
MODEL_NAMES = {"hica": "HiCA", "global_only": "global-only", "finetune": "fine-tune"}


def map_names(global_only: bool) -> list[str]:
    """The maps the analysis scores, in table order; the global-only model's two only with ``global_only``."""
    return [m for m in LABELS if global_only or m not in GLOBAL_ONLY_MAPS]


def maps_of(parts: list[dict[str, Any]]) -> list[str]:
    """The maps the parts scored, in table order."""
    have = parts[0]["images"][0]["metrics"]
    return [m for m in LABELS if m in have]


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


# -- summary over seeds ------------------------------------------------------------------------------------


def _ms(values: list[float]) -> dict[str, Any]:
    return seed_summary(values, per_seed=True)


def _scopes(images: list[dict[str, Any]]) -> dict[str, str | None]:
    return {"all": None, **{c: c for c in dict.fromkeys(r["class"] for r in images)}}


def versus_global_only(parts: list[dict[str, Any]], n_boot: int = N_BOOT) -> dict[str, Any]:
    """Per full-HiCA map with a global-only counterpart in the parts, per scope (all, each lesion class):
    the pointing game of both (mean over seeds of the per-seed image mean), the paired difference full −
    global-only with its 95% percentile CI from a bootstrap over images (one resample of the images serves
    every seed, as the seeds score the same images; the statistic is the mean over seeds), the per-seed
    differences, and the discordant images pooled over seeds (only one of the two maps hits)."""
    present = maps_of(parts)
    out: dict[str, Any] = {}
    for full, other in GLOBAL_ONLY_OF.items():
        if full not in present or other not in present:
            continue
        entry: dict[str, Any] = {"global_only_map": other, "map_type": MAP_TYPE[full], "scopes": {}}
        for key, scope in _scopes(parts[0]["images"]).items():
            ids = [r["id"] for r in parts[0]["images"] if scope is None or r["class"] == scope]
            by_id = [{r["id"]: r["metrics"] for r in p["images"]} for p in parts]
            a = np.array([[b[i][full]["pointing_game"] for i in ids] for b in by_id], dtype=np.float64)
            g = np.array([[b[i][other]["pointing_game"] for i in ids] for b in by_id], dtype=np.float64)
            d = a - g  # (seeds, images), paired per image
            draws = np.random.default_rng(0).integers(0, len(ids), size=(n_boot, len(ids)))
            lo, hi = (float(v) for v in np.percentile(d[:, draws].mean(axis=(0, 2)), [2.5, 97.5]))
            entry["scopes"][key] = {
                "n_images": len(ids),
                "full": round(float(a.mean()), 4),
                "global_only": round(float(g.mean()), 4),
                "difference": round(float(d.mean()), 4),
                "ci95": [round(lo, 4), round(hi, 4)],
                "sign": "above 0" if lo > 0 else "below 0" if hi < 0 else "CI holds 0",
                "per_seed": [round(float(v), 4) for v in d.mean(1)],
                "only_full_hits": int((d > 0).sum()),
                "only_global_only_hits": int((d < 0).sum()),
            }
        out[full] = entry
    return out


def summarize(parts: list[dict[str, Any]], cfg: LocalizationSettings) -> dict[str, Any]:
    """Per map: mean ± std over seeds of the per-seed image means, overall and per lesion class; with the
    global-only maps, the paired full − global-only pointing game (:func:`versus_global_only`)."""
    names = metric_names(cfg.top_fractions)
    first = parts[0]["images"]
    scopes = _scopes(first)

    def rows(p: dict[str, Any], scope: str | None) -> list[dict[str, Any]]:
        return [r for r in p["images"] if scope is None or r["class"] == scope]

    maps: dict[str, Any] = {}
    for m in maps_of(parts):
        entry: dict[str, Any] = {"label": LABELS[m], "model": MODELS[m]}
        for key, scope in scopes.items():
            entry[key] = {
                k: _ms([np.mean([r["metrics"][m][k] for r in rows(p, scope)]) for p in parts]) for k in names
            }
            if MODELS[m]:
                entry[key]["model_accuracy"] = _ms(
                    [np.mean([r["correct"][MODELS[m]] for r in rows(p, scope)]) for p in parts]
                )
        entry["degenerate_maps"] = sum(r["degenerate"][m] for p in parts for r in p["images"])
        if MODELS[m]:  # pooled over seeds: does the map localise better when the model is right?
            entry["by_correctness"] = {}
            for ok, key in ((True, "correct"), (False, "wrong")):
                sel = [r for p in parts for r in p["images"] if r["correct"][MODELS[m]] == ok]
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
    out = {"maps": maps, "chance": chance, "n_images": counts}
    paired = versus_global_only(parts)
    return out | ({"vs_global_only": paired} if paired else {})


def _global_only_lines(vs: dict[str, Any]) -> list[str]:
    """The paired full − global-only section of table.md (nothing without the global-only maps)."""
    if not vs:
        return []
    lines = [
        "",
        "## Full HiCA vs global-only HiCA: is the pointing game the local level's?",
        "",
        "Same episode, images and arguments; the global-only model trains L_global alone. Difference: "
        "full − global-only pointing game, paired per image, mean over seeds; 95% CI from a bootstrap over "
        f"images ({N_BOOT} resamples; each draw resamples the same images in every seed). Discordant: "
        "images (pooled over seeds) that only one of the two maps hits.",
        "",
        "| Map type | Lesion images | n | Full HiCA | Global-only | Full − global-only [95% CI] | Per seed "
        "| Only full hits | Only global-only hits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in vs.values():
        for key, d in e["scopes"].items():
            lo, hi = d["ci95"]
            lines.append(
                f"| {e['map_type']} | {key} | {d['n_images']} | {d['full']:.3f} "
                f"| {d['global_only']:.3f} | {d['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] ({d['sign']}) "
                f"| {', '.join(f'{v:+.3f}' for v in d['per_seed'])} | {d['only_full_hits']} "
                f"| {d['only_global_only_hits']} |"
            )
    return lines


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
        for m, e in ((m, s["maps"][m][key]) for m in s["maps"]):
            lines.append(
                f"| {LABELS[m]} | "
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
    for m in s["maps"]:
        bc = s["maps"][m].get("by_correctness")
        if bc:
            ok, bad = bc["correct"], bc["wrong"]

            def f(v: float | None) -> str:
                return "–" if v is None else f"{v:.3f}"

            cells = [str(ok["n"]), f(ok["pointing_game"]), str(bad["n"]), f(bad["pointing_game"])]
            lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    degenerate = {LABELS[m]: e["degenerate_maps"] for m, e in s["maps"].items() if e["degenerate_maps"]}
    lines += [
        "",
        "Degenerate (constant, e.g. all-zero Grad-CAM) maps, counted as pointing-game misses: "
        + (", ".join(f"{k} {v}" for k, v in degenerate.items()) or "none")
        + ".",
        *_global_only_lines(s.get("vs_global_only") or {}),
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
        "blended logit as a second reference). All models are fitted on the same K-shot episode with "
        "their committed arguments. Note: HiCA's L_local is trained on the support images' lesion masks "
        "(the few-shot annotation budget, never a test mask); the fine-tuned baseline sees labels only.",
        *([GLOBAL_ONLY_NOTE] if "vs_global_only" in s else []),
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
    maps = maps_of(parts)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["seed", "id", "class", "mask_area_fraction", "pointing_chance", "map", "model_correct", "degenerate"]
        + names
    )
    for p in parts:
        for r in p["images"]:
            for m in maps:
                ok = r["correct"][MODELS[m]] if MODELS[m] else ""
                w.writerow(
                    [p["seed"], r["id"], r["class"], r["mask_area_fraction"], r["pointing_chance"], m]
                    + [int(ok) if ok != "" else "", int(r["degenerate"][m])]
                    + [r["metrics"][m][k] for k in names]
                )
    return buf.getvalue()
