"""The gallery of ``hica analyze localization`` (``gallery.png``): a fixed choice of lesion images with every
map the analysis scored (full HiCA's beside the global-only model's when it was fitted) and the center prior.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hica.eval.localization import center_prior, max_point
from hica.io import atomic_write
from hica.report.localization import LABELS, MODEL_NAMES, LocalizationSettings, maps_of


class GalleryImages(Protocol):
    """The scored images as the gallery shows them (``hica.analysis.localization_cells.LesionImages``)."""

    ids: list[str]
    labels: list[int]
    masks: np.ndarray
    display: np.ndarray

    @property
    def size(self) -> int: ...


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
    """gallery.png: per image, the lesion contour, the learned maps (full HiCA's beside global-only's) and
    the center prior.

    ``part`` is one seed's part; ``upsample(grid, size)`` brings a stored grid map to the image size, as
    the analysis did before scoring it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pick = gallery_indices(data.labels, cfg.gallery, cfg.gallery_seed)
    if not pick:
        return None
    rows = {r["id"]: r for r in part["images"]}
    cols = ["image", *maps_of([part])]
    titles = {"image": "image + lesion mask", **LABELS}
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
                right = ", ".join(f"{MODEL_NAMES.get(k, k)} {v}" for k, v in ok.items())
                ax.set_title(f"{data.ids[i].split('/')[-1]}\n{rec['class']}: {right}", fontsize=7.5)
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
