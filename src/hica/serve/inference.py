"""Classify and explain uploaded images with a loaded predictor: probabilities, heatmap overlays, CSV."""

from __future__ import annotations

import base64
import copy
import io
from typing import Any

import numpy as np
import torch

from hica.errors import HicaError
from hica.serve.safety import Upload, upload_message

OVERLAY_ALPHA = 0.45  # as `hica explain`'s PNGs


def png_data_url(rgb: np.ndarray) -> str:
    """(H, W, 3) uint8 → ``data:image/png;base64,…``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The image with a jet-coloured map in [0, 1] blended on top (the colours of the page's colour bar)."""
    from matplotlib import colormaps

    rgb = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    out = (1 - OVERLAY_ALPHA) * image.astype(np.float32) / 255 + OVERLAY_ALPHA * rgb
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def zero_shot_view(predictor: Any, descriptors: str) -> Any:
    """A copy of ``predictor`` classifying the descriptor file's classes from text (the shared encoder)."""
    view = copy.copy(predictor)
    view.use_descriptors(descriptors)
    return view


def classify_uploads(
    predictor: Any, uploads: list[Upload], descriptors: str | None, explain: bool, top: int = 3
) -> list[dict[str, Any]]:
    """One result per upload: ``predicted``, ``probs`` and (with ``explain``) per-class overlays with their
    top phrases; an unreadable image gets ``error`` instead (the other images are still classified)."""
    from hica.data.sample import Sample, load_image
    from hica.explain import explain_image

    results: list[dict[str, Any]] = []
    for up in uploads:
        res: dict[str, Any] = {"file": up.name, "type": up.kind}
        try:
            if explain and descriptors:
                ex = explain_image(predictor, up.path, descriptors, top=top)
                probs = ex.probs
                res["input"] = png_data_url(ex.image)
                res["heatmaps"] = [
                    {
                        "class": c,
                        "overlay": png_data_url(overlay(ex.image, ex.maps[i])),
                        "phrases": [{"phrase": p, "score": round(s, 4)} for p, s in ex.phrases[i]],
                    }
                    for i, c in enumerate(ex.classes)
                ]
            else:
                x = predictor.encoder.preprocess(load_image(Sample(id=up.name, label=-1, path=up.path)))
                probs = predictor.probs_of(x[None])[0].numpy()
        except HicaError as e:
            res["error"] = upload_message(str(e), up.path, up.name)
            results.append(res)
            continue
        probs = np.asarray(probs, dtype=np.float64)
        res["predicted"] = predictor.classes[int(probs.argmax())]
        res["probs"] = {c: round(float(p), 6) for c, p in zip(predictor.classes, probs, strict=True)}
        results.append(res)
    return results


def results_csv(results: list[dict[str, Any]], classes: list[str]) -> str:
    """CSV of the classified uploads: file, predicted class, one probability column per class."""
    from hica.predict import predictions_csv

    ok = [r for r in results if "probs" in r]
    probs = torch.tensor([[r["probs"][c] for c in classes] for r in ok]).reshape(len(ok), len(classes))
    return predictions_csv([r["file"] for r in ok], probs, classes)
