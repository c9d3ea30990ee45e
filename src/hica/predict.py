"""Classify image files with a HiCA checkpoint written by ``hica finetune`` (few-shot or zero-shot)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hica.data.sample import IMAGE_EXTENSIONS, Sample, is_image_file, load_image
from hica.errors import HicaError
from hica.io import write_text
from hica.model.tta import TTA_KINDS, check_tta, embed_with_tta


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files and folders (searched recursively for image extensions) → sorted image paths."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                q for q in p.rglob("*") if q.is_file() and is_image_file(q) and "_mask" not in q.stem
            )
            if not found:
                raise HicaError(f"folder {p} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise HicaError(f"input {p} not found: pass image files or folders")
    return out


def _check_classifier_meta(clf: Any, cfg_path: Path) -> None:
    """``meta.classifier`` of a model's config.json: classes (strings), alpha and temperature (numbers), and
    ``tta`` (a test-time augmentation kind; absent in checkpoints made before it: none)."""

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    ok = (
        isinstance(clf, dict)
        and isinstance(clf.get("classes"), list)
        and len(clf["classes"]) >= 1
        and all(isinstance(c, str) for c in clf["classes"])
        and number(clf.get("alpha"))
        and number(clf.get("temperature"))
        and clf["temperature"] > 0
        and clf.get("tta", "none") in TTA_KINDS
    )
    if not ok:
        raise HicaError(
            f"checkpoint {cfg_path}: meta.classifier must hold classes (a list of names), alpha and "
            f"temperature (numbers, temperature > 0) and, if any, tta (one of {', '.join(TTA_KINDS)}); the "
            "file is damaged or hand-edited"
        )


def _load_prototypes(file: Path, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(text, image) class prototypes, each (n_classes, D), from a classifier.safetensors; checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        protos = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise HicaError(
            f"checkpoint {file}: not a readable safetensors file ({e}); it is truncated or damaged: copy the "
            "model folder again"
        ) from e
    t, i = protos.get("text_protos"), protos.get("image_protos")
    if t is None or i is None or t.ndim != 2 or t.shape != i.shape or t.shape[0] != n_classes:
        shapes = {k: tuple(v.shape) for k, v in protos.items()}
        raise HicaError(
            f"checkpoint {file}: expected text_protos and image_protos of shape ({n_classes}, D) for "
            f"{n_classes} classes, found {shapes}; the file is damaged or from another model"
        )
    return t, i


class Predictor:
    """A loaded classifier checkpoint: ``predict(paths)`` → class probabilities."""

    def __init__(self, checkpoint: str | Path, device: torch.device, precision: str) -> None:
        from hica.encoders import create_encoder
        from hica.encoders.checkpoint import CONFIG_FILE, read_checkpoint_config
        from hica.jobs.finetune import CLASSIFIER_FILE

        path = Path(checkpoint)
        cfg = read_checkpoint_config(path)
        meta = cfg.get("meta", {})
        clf = meta.get("classifier") if isinstance(meta, dict) else None
        if not clf or not (path / CLASSIFIER_FILE).is_file():
            raise HicaError(
                f"checkpoint {path} has no classifier (it is an encoder checkpoint, e.g. from `hica "
                "pretrain`); "
                "pass the model folder written by `hica finetune`, or use --zero-shot with --descriptors"
            )
        _check_classifier_meta(clf, path / CONFIG_FILE)
        from hica.integrity import verify_model_card

        self.card = verify_model_card(path)  # {} for a folder made before model cards
        text_protos, image_protos = _load_prototypes(path / CLASSIFIER_FILE, len(clf["classes"]))
        encoder = create_encoder("checkpoint", path=str(path))
        if text_protos.shape[1] != encoder.embed_dim:
            raise HicaError(
                f"checkpoint {path / CLASSIFIER_FILE}: prototypes are {text_protos.shape[1]}-d but the "
                f"encoder embeds in {encoder.embed_dim}-d; the folder mixes files of different models"
            )
        self._set(
            path,
            encoder,
            clf["classes"],
            text_protos,
            image_protos,
            clf["alpha"],
            clf["temperature"],
            device,
            precision,
            meta,
            clf.get("tta", "none"),
        )

    def _set(
        self,
        path: Path,
        encoder: Any,
        classes: list[str],
        text_protos: torch.Tensor,
        image_protos: torch.Tensor,
        alpha: float,
        temperature: float,
        device: torch.device,
        precision: str,
        meta: dict[str, Any],
        tta: str = "none",
    ) -> None:
        self.path = path
        self.tta = check_tta(tta, f"test-time augmentation of {path}")  # every embedding (hica.model.tta)
        self.classes: list[str] = list(classes)
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.meta = meta
        self.encoder = encoder.to(device).eval()
        self.text_protos, self.image_protos = text_protos.to(device), image_protos.to(device)
        self.device, self.precision = device, precision

    @classmethod
    def from_parts(
        cls,
        encoder: Any,
        classes: list[str],
        text_protos: torch.Tensor,
        image_protos: torch.Tensor,
        alpha: float,
        temperature: float,
        device: torch.device,
        precision: str,
        name: str = "<in memory>",
        tta: str = "none",
    ) -> Predictor:
        """A predictor around an encoder and classifier already in memory (no checkpoint on disk)."""
        self = cls.__new__(cls)
        self.card = {}
        self._set(
            Path(name),
            encoder,
            classes,
            text_protos,
            image_protos,
            alpha,
            temperature,
            device,
            precision,
            {},
            tta,
        )
        return self

    @classmethod
    def from_fitted(cls, method: Any, classes: list[str], device: torch.device, precision: str) -> Predictor:
        """A fitted HiCA method (``methods.hica.HiCA``) as the predictor its exported checkpoint loads as."""
        return cls.from_parts(
            method.aligned_encoder(),
            classes,
            method.text_protos,
            method.image_protos,
            method.alpha,
            method.hparams["temperature"],
            device,
            precision,
            name=f"<fitted {method.name}>",
            tta=method.config.tta,
        )

    def use_descriptors(self, name_or_path: str) -> None:
        """Zero-shot: class prototypes from a descriptor file's prompts (any class set), text only."""
        from hica.data.descriptors import load_descriptors
        from hica.model.class_text import build_class_text

        desc = load_descriptors(name_or_path)
        ct = build_class_text(self.encoder, desc, desc.classes, mode="ensemble")
        self.classes = list(desc.classes)
        self.text_protos = ct.class_emb.to(self.device)
        self.image_protos = torch.zeros_like(self.text_protos)
        self.alpha = 1.0

    def choose_classes(self, descriptors: str | None, zero_shot: bool) -> None:
        """``hica predict``'s class set: with ``zero_shot``, the classes of ``descriptors`` (required), from
        text; else ``descriptors``, when given, must name the checkpoint's own classes."""
        if zero_shot:
            if not descriptors:
                raise HicaError("--zero-shot needs --descriptors NAME|PATH (the classes to tell apart)")
            self.use_descriptors(descriptors)
        elif descriptors:
            from hica.data.descriptors import load_descriptors

            want = load_descriptors(descriptors).classes
            if sorted(want) != sorted(self.classes):
                raise HicaError(
                    f"checkpoint {self.path} was trained for classes {self.classes}, but --descriptors "
                    f"{descriptors} has {want}; use --zero-shot to classify other classes from text"
                )

    @torch.no_grad()
    def probs_of(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images → (N, C) class probabilities on CPU (with the checkpoint's
        test-time augmentation)."""
        emb = embed_with_tta(self.encoder, images, self.device, self.precision, self.tta, max(1, len(images)))
        return self.probs_from_embeddings(emb)

    def probs_from_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        """(N, D) normalised image embeddings → (N, C) class probabilities on CPU."""
        from hica.methods.hica import blend_logits

        logits = blend_logits(emb, self.text_protos, self.image_protos, self.alpha, self.temperature)
        return logits.softmax(-1).cpu()

    @torch.no_grad()
    def predict_samples(self, samples: Sequence[Sample], batch_size: int = 32, skip_bad: bool = False):
        """(kept samples, (N, C) probabilities, skipped samples); unreadable images raise unless skip_bad."""
        kept, skipped, probs = [], [], []
        for i in range(0, len(samples), batch_size):
            xs = []
            for s in samples[i : i + batch_size]:
                try:
                    xs.append(self.encoder.preprocess(load_image(s)))
                    kept.append(s)
                except HicaError:
                    if not skip_bad:
                        raise
                    skipped.append(s)
            if xs:
                probs.append(self.probs_of(torch.stack(xs)))
        return kept, (torch.cat(probs) if probs else torch.zeros(0, len(self.classes))), skipped

    def predict(self, paths: Sequence[Path], batch_size: int = 32, skip_bad: bool = False):
        """(kept paths, (N, C) probabilities, skipped paths)."""
        samples = [Sample(id=str(p), label=-1, path=Path(p)) for p in paths]
        kept, probs, skipped = self.predict_samples(samples, batch_size, skip_bad)
        return [s.path for s in kept], probs, [s.path for s in skipped]


def predictions_csv(paths: Sequence[Path], probs: torch.Tensor, classes: list[str]) -> str:
    """CSV text: file, predicted class, one probability column per class."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "predicted", *[f"p_{c}" for c in classes]])
    for p, row in zip(paths, probs.tolist(), strict=True):
        w.writerow([str(p), classes[int(torch.tensor(row).argmax())], *[f"{v:.6f}" for v in row]])
    return buf.getvalue()


def write_predictions(out: Path, paths: Sequence[Path], probs: torch.Tensor, classes: list[str]) -> Any:
    """Write the CSV atomically."""
    return write_text(out, predictions_csv(paths, probs, classes))


def load_predictor(checkpoint: str | Path, device: str = "auto", precision: str = "auto") -> Predictor:
    """The classifier in ``checkpoint`` on ``device`` (auto | cpu | cuda[:N]) at ``precision`` (auto | fp32 |
    bf16), its model card checked."""
    from hica.runtime import resolve_device, resolve_precision

    dev = resolve_device(device)
    return Predictor(checkpoint, dev, resolve_precision(precision, dev))


def classify_files(
    predictor: Predictor, inputs: Sequence[str | Path], out: Path, skip_bad: bool = False
) -> tuple[list[Path], list[Path]]:
    """Classify the image files and folders ``inputs`` and write the CSV ``out``; (classified, skipped)."""
    kept, probs, skipped = predictor.predict(collect_images(inputs), skip_bad=skip_bad)
    write_predictions(out, kept, probs, predictor.classes)
    return kept, skipped


def evaluate(
    predictor: Predictor,
    dataset: Any,
    split: str = "test",
    skip_bad: bool = False,
    merge: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Score a classifier checkpoint on a dataset split: metrics and confusion.

    The dataset must have the checkpoint's classes, or the classes ``merge`` makes of them: probabilities of
    merged classes are summed (e.g. a 3-class BUSI model scored as malignant vs benign_or_normal), and a
    dataset that has the merged classes itself gets its labels merged the same way."""
    import numpy as np

    from hica.eval.merge import merge_matrix
    from hica.eval.metrics import classification_metrics, confusion

    merge = merge or {}
    to_new = {c: new for new, parts in merge.items() for c in parts}
    target = list(dict.fromkeys(to_new.get(c, c) for c in dataset.classes))
    label_of = [target.index(to_new.get(c, c)) for c in dataset.classes]
    m = merge_matrix(list(predictor.classes), merge, target, f"checkpoint {predictor.path}", dataset.classes)
    kept, probs, _ = predictor.predict_samples(dataset.split(split), 64, skip_bad)
    p = (probs @ m).numpy()
    y = np.array([label_of[s.label] for s in kept])
    return {
        "dataset": dataset.name,
        "split": split,
        "n": len(y),
        "classes": target,
        "merged": merge,
        "metrics": classification_metrics(y, p),
        "confusion": confusion(y, p),
        "checkpoint": str(predictor.path),
        "trained_on": predictor.meta.get("dataset"),
    }


def evaluate_dataset(
    predictor: Predictor,
    dataset: str,
    data_root: str | Path | None = None,
    split: str = "test",
    skip_bad: bool = False,
    merge: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` on the dataset ``dataset`` names (built-in name, ``imagefolder:`` / ``manifest:``
    spec) under ``data_root``."""
    from hica.data.catalog import load_dataset

    ds = load_dataset(dataset, data_root, skip_bad=skip_bad)
    return evaluate(predictor, ds, split, skip_bad, merge)
