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

Resumable: one part JSON per (held-out class, seed) in ``parts/``, keyed by a config hash.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from hica.config import EncoderConfig, _Strict, distinct_seeds, dump_config, load_model_config
from hica.errors import HicaError
from hica.io import write_json, write_text
from hica.runtime import embed_images, reproducible

MODE = "ensemble"  # the prompt ensemble of `hica predict --zero-shot --descriptors`
NOT_DISTINGUISHABLE = "not distinguishable from chance"
BELOW = "below chance"
ABOVE = "above chance"


class UnseenConfig(_Strict):
    """``hica analyze unseen``: leave-class-out HiCA alignment, then zero-shot over all classes."""

    name: str = "unseen"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    dataset: str | dict[str, Any] = "busi"
    # Each entry is held out in its own runs: a class name, or a list of classes held out together.
    # None: every class in turn.
    holdout: list[list[str]] | None = None
    k: int = Field(16, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3])
    hica_args: dict[str, Any] = Field(default_factory=dict)
    split: Literal["test", "val"] = "test"
    bootstrap: int = Field(1000, ge=100)
    device: str = "auto"
    precision: str = "auto"
    data_root: str | None = None
    max_images: int | None = Field(None, ge=1)  # None: the whole split (a subset is for tests)

    @field_validator("holdout", mode="before")
    @classmethod
    def _groups(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, str):
            v = [v]
        return [[x] if isinstance(x, str) else x for x in v]

    @field_validator("holdout")
    @classmethod
    def _nonempty(cls, v: list[list[str]] | None) -> list[list[str]] | None:
        if v is not None:
            if not v or any(not g for g in v):
                raise ValueError("holdout must list classes (omit it to hold out every class in turn)")
            keys = [_key(g) for g in v]
            dup = sorted({k for k in keys if keys.count(k) > 1})
            if dup:
                raise ValueError(f"holdout lists {dup} more than once")
        return v

    _seeds = field_validator("seeds")(distinct_seeds)


def load_unseen_config(path: str | Path, overrides: dict[str, Any] | None = None) -> UnseenConfig:
    """Read ``path`` into an ``UnseenConfig``; errors name the file and the key."""
    return load_model_config(UnseenConfig, path, overrides)


def _key(group: list[str]) -> str:
    return "+".join(group)


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_+" else "_" for ch in text)


# -- the shared zero-shot path ------------------------------------------------------------------------------


def aligned_predictor(method: Any, device: torch.device, precision: str) -> Any:
    """A fitted HiCA as the ``Predictor`` that ``hica predict`` loads from its exported checkpoint.

    ``HiCA.aligned_encoder`` folds the text head in as ``alignment.stage2.export_classifier`` does, so
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


# -- one held-out class, one seed -------------------------------------------------------------------------


def seen_episode(
    encoder: Any, ds: Any, ep: Any, held: list[int], seed: int, descriptors: Any
) -> tuple[Any, list[int]]:
    """The episode without any shot of the ``held`` classes, labels remapped to the seen classes.

    Returns (``ImageFewShotData`` for HiCA, seen class indices). Only the seen shots' images and masks are
    read; the held-out classes' labels are checked before anything is loaded.
    """
    from hica.data.sample import Dataset
    from hica.eval.protocol import image_episode
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


def _run_part(
    inp: _Inputs, held: list[int], seed: int, ep: Any, cfg: UnseenConfig, cfg_hash: str
) -> dict[str, Any]:
    from hica.eval.metrics import classification_metrics, confusion, one_vs_rest_auc
    from hica.methods.hica import HiCA

    ds, labels = inp.ds, inp.labels
    t0 = time.perf_counter()
    data, seen = seen_episode(inp.enc, ds, ep, held, seed, inp.desc)
    method = HiCA(**cfg.hica_args).fit(inp.enc, data, inp.device, inp.precision)
    t_fit = time.perf_counter() - t0
    emb = method.embed(inp.images)  # the aligned image tower, once for every classifier below
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
        "recall": _recalls(labels, probs, ds.classes),
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
        "eval_ids": inp.ids,
        "probs": np.round(probs, 6).tolist(),
        "config_hash": cfg_hash,
    }


def _recalls(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, float]:
    pred = probs.argmax(1)
    return {
        c: float((pred[labels == i] == i).mean()) if (labels == i).any() else float("nan")
        for i, c in enumerate(classes)
    }


# -- inputs, loaded only when a part must be computed -----------------------------------------------------


class _Inputs:
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
        from hica.eval.protocol import images_of

        return images_of(self.enc, self.samples)


def _eval_samples(ds: Any, split: str, episodes: list[Any], max_images: int | None) -> list[Any]:
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


def _holdout_groups(cfg: UnseenConfig, classes: list[str], name: str) -> list[list[int]]:
    groups = cfg.holdout if cfg.holdout is not None else [[c] for c in classes]
    out = []
    for g in groups:
        unknown = [c for c in g if c not in classes]
        if unknown:
            raise HicaError(
                f"holdout: class(es) {unknown} not in dataset {name}; available classes: {classes}"
            )
        idx = sorted({classes.index(c) for c in g})
        seen = [c for i, c in enumerate(classes) if i not in idx]
        if len(seen) < 2:
            raise HicaError(
                f"holdout {g}: leaves {len(seen)} seen class(es) {seen} of {name}; HiCA's contrastive "
                "alignment needs at least 2 seen classes, so hold out fewer classes"
            )
        out.append(idx)
    return out


# -- statistics ---------------------------------------------------------------------------------------------


def chance_levels(labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """What guessing scores: uniform guessing for every metric, plus majority-class accuracy for context.

    Macro-F1 of uniform guessing: class c with prevalence π gets F1 = 2π / (1 + Cπ) (expected counts).
    """
    prev = np.bincount(labels, minlength=n_classes) / len(labels)
    return {
        "accuracy": 1 / n_classes,
        "balanced_accuracy": 1 / n_classes,
        "macro_f1": float(np.mean(2 * prev / (1 + n_classes * prev))),
        "auc": 0.5,
        "recall": 1 / n_classes,
        "ovr_auc": 0.5,
        "majority_class_accuracy": float(prev.max()),
    }


def bootstrap_seed_mean(
    labels: np.ndarray, probs_per_seed: list[np.ndarray], n_boot: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% percentile CI of each metric's mean over seeds, resampling evaluation images.

    One set of resamples serves every seed (the seeds score the same images), so the interval is that of
    the seed mean. Draws match ``eval.metrics.bootstrap_ci`` for a single seed. Keys: accuracy,
    balanced_accuracy, macro_f1, auc, ``recall/<c>``, ``ovr_auc/<c>`` (class index c).
    """
    n = len(labels)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)
    from hica.eval.metrics import bootstrap_draws

    per = [bootstrap_draws(np.asarray(labels), p, w, per_class=True) for p in probs_per_seed]
    out = {}
    for m in per[0]:
        with np.errstate(invalid="ignore"):
            vals = np.mean([d[m] for d in per], axis=0)
        vals = vals[~np.isnan(vals)]
        out[m] = (
            (float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975)))
            if len(vals)
            else (math.nan, math.nan)
        )
    return out


def versus_chance(ci: tuple[float, float], chance: float) -> str:
    """Whether a 95% CI lies above, holds, or lies below the chance level."""
    lo, hi = ci
    if math.isnan(lo) or lo <= chance <= hi:
        return NOT_DISTINGUISHABLE
    return ABOVE if lo > chance else BELOW


def _stat(
    values: list[float], ci: tuple[float, float] | None = None, chance: float | None = None
) -> dict[str, Any]:
    """Mean ± std over seeds; with a CI, the CI and (given a chance level) how it compares to chance."""
    from hica.eval.metrics import mean_std

    m, s = mean_std(values)
    out: dict[str, Any] = {"mean": m, "std": s, "per_seed": values}
    if ci is not None:
        out["ci95"] = list(ci)
    if ci is not None and chance is not None:
        out["chance"] = chance
        out["vs_chance"] = versus_chance(ci, chance)
    return out


# -- the run ------------------------------------------------------------------------------------------------


@reproducible
def run_unseen(cfg: UnseenConfig, out_dir: str | Path, resume: bool = True) -> dict[str, Any]:
    """Run (or resume) the analysis into ``out_dir``; returns what ``metrics.json`` holds.

    Writes ``parts/<holdout>__s<seed>.json`` as each run finishes, ``parts/before_alignment.json``,
    ``metrics.json``, ``table.md`` and ``predictions.csv``.
    """
    from hica.data.catalog import load_dataset
    from hica.data.descriptors import load_descriptors
    from hica.data.episodes import sample_episode
    from hica.eval.protocol import machine_info
    from hica.methods.hica import HiCA

    t_start = time.perf_counter()
    HiCA(**cfg.hica_args)  # bad hyperparameters fail before any loading
    ds = load_dataset(cfg.dataset, cfg.data_root)
    if not ds.descriptors:
        raise HicaError(
            f"dataset {ds.name} has no descriptors YAML; zero-shot classification needs class text"
        )
    groups = _holdout_groups(cfg, ds.classes, ds.name)
    desc = load_descriptors(ds.descriptors)
    desc.check_classes(ds.classes, ds.name)
    episodes = {seed: sample_episode(ds, cfg.k, seed) for seed in cfg.seeds}
    samples = _eval_samples(ds, cfg.split, list(episodes.values()), cfg.max_images)
    inp = _Inputs(cfg, ds, desc, samples)
    if len(np.unique(inp.labels)) < len(ds.classes):
        raise HicaError(f"max_images={cfg.max_images} leaves a class of {ds.name} without evaluation images")

    out = Path(out_dir)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.resolved.yaml", dump_config(cfg))
    # What a part's result depends on; which parts exist, and where data is read from, do not matter.
    scope = cfg.model_dump(mode="json", exclude={"name", "holdout", "seeds", "data_root", "bootstrap"})
    cfg_hash = hashlib.sha256(json.dumps(scope, sort_keys=True).encode()).hexdigest()[:12]

    def cached(path: Path) -> dict[str, Any] | None:
        if not (resume and path.is_file()):
            return None
        rec = json.loads(path.read_text())
        return rec if rec.get("config_hash") == cfg_hash and rec.get("eval_ids") == inp.ids else None

    resumed = 0
    path = parts / "before_alignment.json"
    before = cached(path)
    if before is None:
        t0 = time.perf_counter()
        temperature = HiCA(**cfg.hica_args).hparams["temperature"]
        pred = base_predictor(inp.enc, temperature, inp.device, inp.precision)
        emb = embed_images(inp.enc, inp.images, inp.device, inp.precision)
        probs = zero_shot_probs(pred, ds.descriptors, ds.classes, emb)
        before = {
            "probs": np.round(probs, 6).tolist(),
            "eval_ids": inp.ids,
            "seconds": round(time.perf_counter() - t0, 2),
            "config_hash": cfg_hash,
        }
        write_json(path, before)
    else:
        resumed += 1
    records: list[dict[str, Any]] = []
    for held in groups:
        for seed in cfg.seeds:
            path = parts / f"{_safe(_key([ds.classes[c] for c in held]))}__s{seed}.json"
            rec = cached(path)
            if rec is None:
                rec = _run_part(inp, held, seed, episodes[seed], cfg, cfg_hash)
                write_json(path, rec)
            else:
                resumed += 1
            records.append(rec)

    result = _aggregate(cfg, ds, inp.labels, np.array(before["probs"]), records, groups)
    result.update(
        config=cfg.model_dump(mode="json"),
        config_hash=cfg_hash,
        machine=machine_info(inp.device, inp.precision),
        wall_seconds=round(time.perf_counter() - t_start, 1),
        compute_seconds=round(before["seconds"] + sum(r["total_seconds"] for r in records), 1),
        resumed_parts=resumed,
    )
    write_json(out / "metrics.json", result)
    write_text(out / "table.md", render_table(result))
    write_text(out / "predictions.csv", _predictions_csv(ds.classes, inp, before, records))
    return result


def _aggregate(
    cfg: UnseenConfig,
    ds: Any,
    labels: np.ndarray,
    before_probs: np.ndarray,
    records: list[dict[str, Any]],
    groups: list[list[int]],
) -> dict[str, Any]:
    from hica.eval.metrics import METRICS, classification_metrics, confusion, one_vs_rest_auc

    classes, n_cls = ds.classes, len(ds.classes)
    chance = chance_levels(labels, n_cls)
    b_ci = bootstrap_seed_mean(labels, [before_probs], cfg.bootstrap)
    b_metrics = classification_metrics(labels, before_probs)
    b_recall = _recalls(labels, before_probs, classes)
    b_auc = {c: one_vs_rest_auc(labels, before_probs, i) for i, c in enumerate(classes)}

    def flagged(value: float, ci: tuple[float, float], ch: float) -> dict[str, Any]:
        return {"value": value, "ci95": list(ci), "chance": ch, "vs_chance": versus_chance(ci, ch)}

    before = {
        "what": "the base encoder, never aligned: an unaligned dual encoder, near chance expected",
        "metrics": {m: flagged(b_metrics[m], b_ci[m], chance[m]) for m in METRICS},
        "recall": {
            c: flagged(b_recall[c], b_ci[f"recall/{i}"], chance["recall"]) for i, c in enumerate(classes)
        },
        "ovr_auc": {c: flagged(b_auc[c], b_ci[f"ovr_auc/{i}"], 0.5) for i, c in enumerate(classes)},
        "confusion": confusion(labels, before_probs),
    }
    holdouts: dict[str, Any] = {}
    for held in groups:
        names = [classes[c] for c in held]
        recs = sorted((r for r in records if r["holdout_idx"] == held), key=lambda r: r["seed"])
        probs = [np.array(r["probs"]) for r in recs]
        ci = bootstrap_seed_mean(labels, probs, cfg.bootstrap)
        seen = [c for c in range(n_cls) if c not in held]
        mask = np.isin(labels, seen)

        def seen_acc(p: np.ndarray, seen: list[int] = seen, mask: np.ndarray = mask) -> float:
            return float((np.array(seen)[p[mask][:, seen].argmax(1)] == labels[mask]).mean())

        holdouts[_key(names)] = {
            "holdout": names,
            "seen": [classes[c] for c in seen],
            "seeds": [r["seed"] for r in recs],
            "zero_shot": {m: _stat([r["metrics"][m] for r in recs], ci[m], chance[m]) for m in METRICS},
            "recall": {
                c: _stat([r["recall"][c] for r in recs], ci[f"recall/{i}"], chance["recall"])
                for i, c in enumerate(classes)
            },
            "ovr_auc": {
                c: _stat([r["ovr_auc"][c] for r in recs], ci[f"ovr_auc/{i}"], 0.5)
                for i, c in enumerate(classes)
            },
            "heldout": {
                classes[c]: {
                    "recall": _stat(
                        [r["recall"][classes[c]] for r in recs], ci[f"recall/{c}"], chance["recall"]
                    ),
                    "ovr_auc": _stat([r["ovr_auc"][classes[c]] for r in recs], ci[f"ovr_auc/{c}"], 0.5),
                    "before_alignment": {
                        "recall": before["recall"][classes[c]],
                        "ovr_auc": before["ovr_auc"][classes[c]],
                    },
                }
                for c in held
            },
            "confusion_sum": np.sum([r["confusion"] for r in recs], axis=0).tolist(),
            "confusion_per_seed": {str(r["seed"]): r["confusion"] for r in recs},
            "seen_classes": {
                "n_images": int(mask.sum()),
                "chance_accuracy": 1 / len(seen),
                "hica_fewshot_accuracy": _stat([r["seen_fewshot"]["accuracy"] for r in recs]),
                "hica_fewshot_balanced_accuracy": _stat(
                    [r["seen_fewshot"]["balanced_accuracy"] for r in recs]
                ),
                "aligned_zero_shot_accuracy": _stat([seen_acc(p) for p in probs]),
                "before_alignment_zero_shot_accuracy": seen_acc(before_probs),
            },
            "selected": {str(r["seed"]): r["selected"] for r in recs},
            "shots": {str(r["seed"]): r["shots"] for r in recs},
            "fit_seconds": [r["fit_seconds"] for r in recs],
        }
    return {
        "analysis": "unseen",
        "name": cfg.name,
        "dataset": ds.name,
        "classes": classes,
        "split": cfg.split,
        "n_images": len(labels),
        "eval_counts": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
        "k": cfg.k,
        "seeds": cfg.seeds,
        "encoder": cfg.encoder.model_dump(mode="json"),
        "prompt_mode": MODE,
        "bootstrap": cfg.bootstrap,
        "chance": chance,
        "before_alignment": before,
        "holdouts": holdouts,
    }


# -- outputs ------------------------------------------------------------------------------------------------


def _predictions_csv(classes: list[str], inp: _Inputs, before: dict, records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run", "holdout", "seed", "id", "label", "predicted", *[f"p_{c}" for c in classes]])
    runs = [("before_alignment", "", "", before["probs"])]
    runs += [("aligned", _key(r["holdout"]), r["seed"], r["probs"]) for r in records]
    for run, held, seed, probs in runs:
        for sid, y, p in zip(inp.ids, inp.labels.tolist(), probs, strict=True):
            w.writerow(
                [run, held, seed, sid, classes[y], classes[int(np.argmax(p))], *[f"{v:.6f}" for v in p]]
            )
    return buf.getvalue()


MARK = {NOT_DISTINGUISHABLE: " †", BELOW: " ‡", ABOVE: ""}


def _cell(stat: dict[str, Any]) -> str:
    """``mean ± std [lo, hi]`` with the chance mark (single values: ``value [lo, hi]``)."""
    lo, hi = stat["ci95"]
    v = f"{stat['mean']:.3f} ± {stat['std']:.3f}" if "mean" in stat else f"{stat['value']:.3f}"
    return f"{v} [{lo:.2f}, {hi:.2f}]{MARK.get(stat.get('vs_chance', ABOVE), '')}"


def render_table(res: dict[str, Any]) -> str:
    """The Markdown report of ``run_unseen``'s results."""
    classes, ch = res["classes"], res["chance"]
    n_cls = len(classes)
    seeds = ", ".join(str(s) for s in res["seeds"])
    counts = ", ".join(f"{c} {n}" for c, n in res["eval_counts"].items())
    args = f" {json.dumps(res['encoder']['args'])}" if res["encoder"]["args"] else ""
    unaligned = res["encoder"]["name"] == "default"
    before_label = (
        "Before alignment (unaligned dual encoder, near chance expected)" if unaligned else "Before alignment"
    )
    honesty = (
        "The *before alignment* row is the base encoder, an **unaligned dual encoder** (EfficientNet-Lite0 + "
        "MiniLM, never trained jointly): it is expected near chance and is not a method result; zero-shot "
        "with this encoder is only meaningful after alignment on other classes or other data."
        if unaligned
        else "The *before alignment* row is the base encoder before HiCA's alignment (same descriptors)."
    )
    lines = [
        f"# Unseen categories: {res['dataset']}, zero-shot over all {n_cls} classes "
        "after alignment on the others",
        "",
        f"Encoder `{res['encoder']['name']}`{args}; K = {res['k']} shots per seen "
        f"class; seeds {seeds}; {res['split']} split, {res['n_images']} images ({counts}).",
        "",
        "**Method.** For each held-out class h and seed, the K-shot episode is sampled as in the benchmark "
        "and every support and validation shot of h is dropped: HiCA stage 2 (`hica_args` "
        f"`{json.dumps(res['config']['hica_args'])}`) aligns the encoder on the seen classes only and never "
        f"reads an image, mask or label of h. The {res['split']} images are then classified over all "
        f"{n_cls} classes zero-shot: each class's prototype is the aligned text tower on its descriptor "
        f"prompts ({res['prompt_mode']} mode; h's prompts were never trained on), the code path of "
        "`hica predict --zero-shot --descriptors` on the exported checkpoint. Cells are mean ± std over "
        f"seeds with the 95% bootstrap CI of the seed mean ({res['bootstrap']} resamples of the evaluation "
        "images) in brackets.",
        "",
        f"**Reading it honestly.** {honesty} † marks a number whose CI contains the chance level "
        "(**not distinguishable from chance**); ‡ marks a CI entirely below chance. Chance is uniform "
        f"guessing (accuracy and recall 1/{n_cls} = {1 / n_cls:.3f}, AUC 0.5); a majority-class guess would "
        f"reach {ch['majority_class_accuracy']:.3f} accuracy, which is why balanced accuracy and AUC are the "
        "numbers to read.",
        "",
        "## Zero-shot over all classes",
        "",
        "| Encoder | Held out | Accuracy | Balanced acc. | Macro-F1 | AUC (macro OvR) |",
        "|---|---|---|---|---|---|",
        f"| Chance (uniform guess; not a method) | — | {ch['accuracy']:.3f} | {ch['balanced_accuracy']:.3f} "
        f"| {ch['macro_f1']:.3f} | {ch['auc']:.3f} |",
    ]
    bm = res["before_alignment"]["metrics"]
    lines.append(
        f"| {before_label} | — | "
        + " | ".join(_cell(bm[m]) for m in ("accuracy", "balanced_accuracy", "macro_f1", "auc"))
        + " |"
    )
    for key, h in res["holdouts"].items():
        z = h["zero_shot"]
        lines.append(
            f"| HiCA aligned on {', '.join(h['seen'])} | {key} | "
            + " | ".join(_cell(z[m]) for m in ("accuracy", "balanced_accuracy", "macro_f1", "auc"))
            + " |"
        )
    lines += [
        "",
        "## The held-out class",
        "",
        "| Held-out class | Recall, aligned on the others | Recall before alignment "
        "| OvR AUC, aligned on the others | OvR AUC before alignment |",
        "|---|---|---|---|---|",
    ]
    for h in res["holdouts"].values():
        for c, s in h["heldout"].items():
            b = s["before_alignment"]
            lines.append(
                f"| {c} | {_cell(s['recall'])} | {_cell(b['recall'])} | {_cell(s['ovr_auc'])} "
                f"| {_cell(b['ovr_auc'])} |"
            )
    lines.append(f"| Chance (not a method) | {ch['recall']:.3f} | {ch['recall']:.3f} | 0.500 | 0.500 |")
    lines += [
        "",
        "## Per-class recall (zero-shot over all classes)",
        "",
        "| Encoder | Held out | " + " | ".join(classes) + " |",
        "|---|---|" + "---|" * n_cls,
        f"| {before_label} | — | "
        + " | ".join(_cell(res["before_alignment"]["recall"][c]) for c in classes)
        + " |",
    ]
    for key, h in res["holdouts"].items():
        lines.append(
            f"| Aligned on {', '.join(h['seen'])} | {key} | "
            + " | ".join(
                _cell(h["recall"][c]) + (" (held out)" if c in h["heldout"] else "") for c in classes
            )
            + " |"
        )
    lines += [
        "",
        "## Seen classes: what alignment bought (accuracy on the seen classes' images, seen classes only)",
        "",
        "| Held out | Seen classes | Images | Chance | Zero-shot before alignment | Zero-shot after "
        "alignment | HiCA few-shot (α-blend, K shots) | HiCA few-shot balanced acc. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, h in res["holdouts"].items():
        s = h["seen_classes"]

        def ms(d: dict[str, Any]) -> str:
            return f"{d['mean']:.3f} ± {d['std']:.3f}"

        lines.append(
            f"| {key} | {', '.join(h['seen'])} | {s['n_images']} | {s['chance_accuracy']:.3f} "
            f"| {s['before_alignment_zero_shot_accuracy']:.3f} | {ms(s['aligned_zero_shot_accuracy'])} "
            f"| {ms(s['hica_fewshot_accuracy'])} | {ms(s['hica_fewshot_balanced_accuracy'])} |"
        )
    lines += ["", "## Confusion matrices (rows: true class, columns: predicted; summed over seeds)", ""]
    mats = [("Before alignment (one run)", res["before_alignment"]["confusion"])]
    mats += [(f"Held out {key}", h["confusion_sum"]) for key, h in res["holdouts"].items()]
    for title, mat in mats:
        lines += [f"**{title}**", "", "| true \\ predicted | " + " | ".join(classes) + " |"]
        lines.append("|---|" + "---|" * n_cls)
        lines += [
            f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(classes, mat, strict=True)
        ]
        lines.append("")
    m = res["machine"]
    lines.append(
        f"Wall time {res['wall_seconds']:.0f} s this invocation ({res['resumed_parts']} part(s) resumed; "
        f"compute {res['compute_seconds']:.0f} s over all parts) on {m['cpu']} ({m['torch_threads']} torch "
        f"threads, {m['device']}, {m['precision']}). Config hash {res['config_hash']}."
    )
    return "\n".join(lines) + "\n"
