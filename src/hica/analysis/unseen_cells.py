"""``hica analyze unseen``'s cells: the inputs, the zero-shot path, and the computation of one part.

Two kinds of part: ``before_alignment_part`` (the base encoder zero-shot, once) and ``aligned_part`` (HiCA
aligned without one held-out group, one seed, then zero-shot over every class). Their records are what
``hica.report.unseen`` aggregates.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Any

import numpy as np
import torch

from hica.analysis.unseen_config import UnseenConfig
from hica.errors import HicaError
from hica.eval.stats import class_recalls
from hica.runtime import embed_images

# -- the shared zero-shot path ------------------------------------------------------------------------------


def aligned_predictor(method: Any, device: torch.device, precision: str) -> Any:
    """A fitted HiCA as the ``Predictor`` that ``hica predict`` loads from its exported checkpoint.

    ``HiCA.aligned_encoder`` folds the text head in as ``hica.jobs.finetune.export_classifier`` does, so
    ``use_descriptors`` + ``probs_of`` run the code of ``hica predict --zero-shot --descriptors`` without a
    round trip through disk.
    """
    from hica.predict import Predictor

    return Predictor.from_fitted(method, [], device, precision)


def zero_shot_probs(predictor: Any, descriptors: str, classes: list[str], emb: torch.Tensor) -> np.ndarray:
    """Zero-shot (N, C) probabilities from a descriptor file, columns in ``classes`` order.

    ``emb``: normalised image embeddings of ``predictor.encoder`` (``Predictor.probs_of`` before its last
    step), so the images are embedded once for several classifiers.
    """
    predictor.use_descriptors(descriptors)
    missing = [c for c in classes if c not in predictor.classes]
    if missing:
        raise HicaError(f"descriptor file {descriptors}: no class(es) {missing}; it has {predictor.classes}")
    cols = [predictor.classes.index(c) for c in classes]
    return predictor.probs_from_embeddings(emb.to(predictor.device)).numpy()[:, cols]


def base_predictor(encoder: Any, temperature: float, device: torch.device, precision: str) -> Any:
    """The unaligned encoder behind the same ``Predictor`` code (zero-shot before alignment)."""
    from hica.predict import Predictor

    empty = torch.zeros(0)
    return Predictor.from_parts(
        encoder, [], empty, empty, 1.0, temperature, device, precision, "<base encoder>"
    )


def composed_probs(model: Any, inp: UnseenInputs, cfg: UnseenConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Zero-shot (N, C) probabilities composed from attribute posteriors by every class's profile (columns
    in the dataset's class order), and the attribute level's accuracy (``attribute_accuracy``) with the
    classifier's own proposed ROIs and, for scoring only, with the lesion masks as ROIs; ``model`` a
    ``HiCAModel`` (aligned or not)."""
    from hica.methods.hica import HiCA
    from hica.model.attributes import compose_classes, model_value_posteriors

    hp = HiCA(**cfg.hica_args).hparams
    vocab = inp.vocab
    args = (hp["temperature"], hp["roi_top_fraction"], inp.device, inp.precision)
    post = model_value_posteriors(model, inp.images, *args)
    groups = torch.tensor(vocab.value_group)
    probs = compose_classes(post, vocab.class_values, groups, vocab.class_any, vocab.presence_group)
    oracle = model_value_posteriors(model, inp.images, *args, masks=inp.eval_masks)
    accuracy = {
        "proposed_roi": attribute_accuracy(post.numpy(), inp),
        "mask_roi": attribute_accuracy(oracle.numpy(), inp),
    }
    return probs.numpy(), accuracy


def attribute_accuracy(post: np.ndarray, inp: UnseenInputs) -> dict[str, Any]:
    """Per attribute group, accuracy and balanced accuracy of the argmax value against the values measured
    from the evaluation images' masks (read for scoring only), over the images where one was measured."""
    from sklearn.metrics import balanced_accuracy_score

    vocab, targets = inp.vocab, inp.eval_targets
    groups = np.array(vocab.value_group)
    out: dict[str, Any] = {}
    for g, name in enumerate(vocab.groups):
        cols = np.flatnonzero(groups == g)
        keep = targets[:, g] >= 0
        if not keep.any():
            continue
        pred = cols[post[keep][:, cols].argmax(1)]
        true = targets[keep, g]
        with warnings.catch_warnings():  # a value predicted but absent from the truth is expected here
            warnings.simplefilter("ignore", UserWarning)
            balanced = balanced_accuracy_score(true, pred)
        out[name] = {
            "n": int(keep.sum()),
            "accuracy": round(float((pred == true).mean()), 4),
            "balanced_accuracy": round(float(balanced), 4),
            "chance_balanced_accuracy": round(1 / len(np.unique(true)), 4),  # mean recall over present values
        }
    return out


# -- inputs, loaded only when a part must be computed -----------------------------------------------------


class UnseenInputs:
    """Dataset, descriptors and evaluation samples; the encoder and images load on first use."""

    def __init__(self, cfg: UnseenConfig, ds: Any, desc: Any, samples: list[Any]) -> None:
        from hica.runtime import resolve_device, resolve_precision

        self.cfg, self.ds, self.desc, self.samples = cfg, ds, desc, samples
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.ids = [s.id for s in samples]
        self.labels = np.array([s.label for s in samples])

    @functools.cached_property
    def enc(self) -> Any:
        from hica.encoders import create_encoder

        return create_encoder(self.cfg.encoder.name, **self.cfg.encoder.args).to(self.device).eval()

    @functools.cached_property
    def images(self) -> torch.Tensor:
        from hica.eval.episode_data import images_of

        return images_of(self.enc, self.samples)

    @functools.cached_property
    def eval_masks(self) -> torch.Tensor:
        """The evaluation images' lesion masks in the encoder's input geometry: for *scoring* the attribute
        level with the true lesion as ROI only; no classifier reads them."""
        from hica.model.imagedata import input_spec, load_store

        store = load_store(self.samples, input_spec(self.enc).size, with_masks=True)
        return store.masks.float()

    @functools.cached_property
    def vocab(self) -> Any:
        """The descriptor file's ``AttributeVocab`` over every class (held-out ones included)."""
        from hica.model.attributes import AttributeVocab

        return AttributeVocab.of(self.desc, self.ds.classes)

    @functools.cached_property
    def eval_targets(self) -> np.ndarray:
        """(N, G) the evaluation images' attribute values measured from their masks, as vocabulary indices
        (-1: none): for *scoring* the attribute level only; no classifier reads them."""
        from hica.eval.episode_data import support_attributes

        measured = support_attributes(self.samples, list(self.ds.classes), self.desc)
        return self.vocab.targets(measured).numpy()


def eval_samples(ds: Any, split: str, episodes: list[Any], max_images: int | None) -> list[Any]:
    """The split minus every episode shot; ``max_images`` takes classes in turn (every class present)."""
    used = {i for ep in episodes for i in (*ep.support, *ep.val)}
    pool = [s for s in ds.split(split) if s.id not in used]
    if max_images is None or max_images >= len(pool):
        return pool
    per = [[s for s in pool if s.label == c] for c in range(len(ds.classes))]
    out: list[Any] = []
    for i in range(max(len(p) for p in per)):
        out += [p[i] for p in per if i < len(p)]
    return out[:max_images]


# -- the cells ----------------------------------------------------------------------------------------------


def seen_episode(
    encoder: Any, ds: Any, ep: Any, held: list[int], seed: int, descriptors: Any
) -> tuple[Any, list[int]]:
    """The episode without any shot of the ``held`` classes, labels remapped to the seen classes.

    Returns (``ImageFewShotData`` for HiCA, seen class indices). Only the seen shots' images and masks are
    read; the held-out classes' labels are checked before anything is loaded.
    """
    from hica.data.sample import Dataset
    from hica.eval.episode_data import image_episode
    from hica.methods.hica import HiCA

    seen = [c for c in range(len(ds.classes)) if c not in held]
    remap = {c: i for i, c in enumerate(seen)}
    by_id = {s.id: s for sp in ds.splits.values() for s in sp}
    sup = [by_id[i] for i in ep.support if by_id[i].label not in held]
    val = [by_id[i] for i in ep.val if by_id[i].label not in held]
    assert all(s.label in remap for s in sup + val), "a held-out shot reached the training set"
    relabelled = {s.id: dataclasses.replace(s, label=remap[s.label]) for s in sup + val}
    sub = dataclasses.replace(ep, support=tuple(s.id for s in sup), val=tuple(s.id for s in val))
    view = Dataset(name=f"{ds.name}-seen", classes=[ds.classes[c] for c in seen], splits={})
    data = image_episode(encoder, view, sub, relabelled, seed, HiCA, descriptors)
    assert data.classes == view.classes and data.num_classes == len(seen)
    assert int(data.support_labels.max()) < len(seen) and int(data.val_labels.max()) < len(seen)
    return data, seen


def before_alignment_part(inp: UnseenInputs, cfg: UnseenConfig) -> dict[str, Any]:
    """The base encoder, never aligned, zero-shot over every class: ``probs`` and ``seconds``."""
    from hica.methods.hica import HiCA

    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if cfg.zero_shot == "attributes":
        from hica.model.hica_model import HiCAModel, TextHead

        model = HiCAModel(inp.enc, TextHead(inp.enc, inp.desc, inp.ds.classes).to(inp.device)).eval()
        probs, extra["attribute_accuracy"] = composed_probs(model, inp, cfg)
    else:
        temperature = HiCA(**cfg.hica_args).hparams["temperature"]
        pred = base_predictor(inp.enc, temperature, inp.device, inp.precision)
        emb = embed_images(inp.enc, inp.images, inp.device, inp.precision)
        probs = zero_shot_probs(pred, inp.ds.descriptors, inp.ds.classes, emb)
    return {"probs": np.round(probs, 6).tolist(), "seconds": round(time.perf_counter() - t0, 2), **extra}


def aligned_part(inp: UnseenInputs, held: list[int], seed: int, ep: Any, cfg: UnseenConfig) -> dict[str, Any]:
    """HiCA aligned on every class but ``held`` (episode ``ep``, ``seed``), then zero-shot over all classes;
    plus its own few-shot classifier on the seen classes' images."""
    from hica.eval.metrics import classification_metrics, confusion, one_vs_rest_auc
    from hica.methods.hica import HiCA

    ds, labels = inp.ds, inp.labels
    t0 = time.perf_counter()
    data, seen = seen_episode(inp.enc, ds, ep, held, seed, inp.desc)
    method = HiCA(**cfg.hica_args).fit(inp.enc, data, inp.device, inp.precision)
    t_fit = time.perf_counter() - t0
    emb = method.embed(inp.images)  # the aligned image tower, once for every classifier below
    extra: dict[str, Any] = {}
    if cfg.zero_shot == "attributes":
        probs, extra["attribute_accuracy"] = composed_probs(method.model, inp, cfg)
    else:
        probs = zero_shot_probs(
            aligned_predictor(method, inp.device, inp.precision), ds.descriptors, ds.classes, emb
        )
    # HiCA's own few-shot classifier (seen classes only) on the seen classes' images.
    mask = np.isin(labels, seen)
    few = method.logits(emb[torch.from_numpy(mask).to(emb.device)], method.alpha).softmax(-1).cpu().numpy()
    seen_y = np.searchsorted(seen, labels[mask])
    return {
        "holdout": [ds.classes[c] for c in held],
        "holdout_idx": held,
        "seen": [ds.classes[c] for c in seen],
        "seed": seed,
        "k": cfg.k,
        "classes": ds.classes,
        "metrics": classification_metrics(labels, probs),
        "recall": class_recalls(labels, probs, ds.classes),
        "ovr_auc": {c: one_vs_rest_auc(labels, probs, i) for i, c in enumerate(ds.classes)},
        "confusion": confusion(labels, probs),
        "seen_fewshot": {
            "n": int(mask.sum()),
            **{m: v for m, v in classification_metrics(seen_y, few).items() if m != "auc"},
        },
        "selected": method.selected,
        "shots": {"support": len(data.support_labels), "val": len(data.val_labels)},
        "episode": {"support": list(ep.support), "val": list(ep.val)},
        "fit_seconds": round(t_fit, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
        "probs": np.round(probs, 6).tolist(),
        **extra,
    }
