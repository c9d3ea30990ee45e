"""``hica analyze unseen``'s outputs: the aggregate of its parts, the Markdown table and predictions.csv.

``aggregate_unseen`` turns the parts of ``hica.analysis.unseen`` (before alignment; one per held-out group
and seed) into what ``metrics.json`` holds: seed means with the 95% bootstrap CI of the seed mean, each
flagged against chance (``hica.eval.stats``). ``render_table`` writes ``table.md`` from it;
``predictions_csv`` every image's probabilities per run.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np

from hica.eval.stats import (
    ABOVE,
    BELOW,
    NOT_DISTINGUISHABLE,
    bootstrap_seed_mean,
    chance_levels,
    class_recalls,
    seed_stat,
    versus_chance,
)
from hica.report.unseen_attributes import attribute_lines, group_key

MODE = "ensemble"  # the prompt ensemble of `hica predict --zero-shot --descriptors`


# -- aggregation --------------------------------------------------------------------------------------------


def aggregate_unseen(
    cfg: Any,
    ds: Any,
    labels: np.ndarray,
    before_probs: np.ndarray,
    records: list[dict[str, Any]],
    groups: list[list[int]],
) -> dict[str, Any]:
    """What ``metrics.json`` holds before the run's bookkeeping: chance, before alignment, each holdout.

    ``cfg``: the ``UnseenConfig``; ``records``: the aligned parts (their ``holdout_idx``, ``seed``,
    ``probs``, ``metrics``, ``recall``, ``ovr_auc``, ``confusion``, ``seen_fewshot``, ``selected``,
    ``shots`` and ``fit_seconds`` are read; nothing else of a part reaches the result).
    """
    from hica.eval.metrics import METRICS, classification_metrics, confusion, one_vs_rest_auc

    classes, n_cls = ds.classes, len(ds.classes)
    chance = chance_levels(labels, n_cls)
    b_ci = bootstrap_seed_mean(labels, [before_probs], cfg.bootstrap)
    b_metrics = classification_metrics(labels, before_probs)
    b_recall = class_recalls(labels, before_probs, classes)
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

        holdouts[group_key(names)] = {
            "holdout": names,
            "seen": [classes[c] for c in seen],
            "seeds": [r["seed"] for r in recs],
            "zero_shot": {m: seed_stat([r["metrics"][m] for r in recs], ci[m], chance[m]) for m in METRICS},
            "recall": {
                c: seed_stat([r["recall"][c] for r in recs], ci[f"recall/{i}"], chance["recall"])
                for i, c in enumerate(classes)
            },
            "ovr_auc": {
                c: seed_stat([r["ovr_auc"][c] for r in recs], ci[f"ovr_auc/{i}"], 0.5)
                for i, c in enumerate(classes)
            },
            "heldout": {
                classes[c]: {
                    "recall": seed_stat(
                        [r["recall"][classes[c]] for r in recs], ci[f"recall/{c}"], chance["recall"]
                    ),
                    "ovr_auc": seed_stat([r["ovr_auc"][classes[c]] for r in recs], ci[f"ovr_auc/{c}"], 0.5),
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
                "hica_fewshot_accuracy": seed_stat([r["seen_fewshot"]["accuracy"] for r in recs]),
                "hica_fewshot_balanced_accuracy": seed_stat(
                    [r["seen_fewshot"]["balanced_accuracy"] for r in recs]
                ),
                "aligned_zero_shot_accuracy": seed_stat([seen_acc(p) for p in probs]),
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


def predictions_csv(
    classes: list[str],
    ids: list[str],
    labels: np.ndarray,
    before: dict[str, Any],
    records: list[dict[str, Any]],
) -> str:
    """``predictions.csv``: one row per (run, image): true and predicted class and every class's probability.

    ``before`` / ``records``: the before-alignment part and the aligned parts (``holdout``, ``seed``,
    ``probs`` read), in the order written.
    """
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run", "holdout", "seed", "id", "label", "predicted", *[f"p_{c}" for c in classes]])
    runs = [("before_alignment", "", "", before["probs"])]
    runs += [("aligned", group_key(r["holdout"]), r["seed"], r["probs"]) for r in records]
    for run, held, seed, probs in runs:
        for sid, y, p in zip(ids, labels.tolist(), probs, strict=True):
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


def _rule(res: dict[str, Any]) -> str:
    if res["config"].get("zero_shot") == "attributes":
        return (
            "each class is **composed from its attribute profile** in the descriptor file (`profile`, "
            "`profile_match`; `hica.model.attributes.compose_classes`): the aligned text tower scores every "
            "attribute value of an image (presence on the whole image, the lesion groups on a proposed ROI), "
            "and a class's probability is P(presence) × the product (`all`) or noisy-OR (`any`) of its "
            "groups' probabilities; h's profile values are phrases like any other, h's images were never seen"
        )
    return (
        f"each class's prototype is the aligned text tower on its descriptor prompts ({res['prompt_mode']} "
        "mode; h's prompts were never trained on), the code path of `hica predict --zero-shot "
        "--descriptors` on the exported checkpoint"
    )


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
        f"{n_cls} classes zero-shot: {_rule(res)}. Cells are mean ± std over "
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
    if res.get("attribute_accuracy"):
        lines += attribute_lines(res["attribute_accuracy"])
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
    other = (res.get("grid") or {}).get("parts_from_other_code", 0)
    made_by = f", {other} made by another code commit" if other else ""
    lines.append(
        f"Wall time {res['wall_seconds']:.0f} s this invocation ({res['resumed_parts']} part(s) resumed"
        f"{made_by}; "
        f"compute {res['compute_seconds']:.0f} s over all parts) on {m['cpu']} ({m['torch_threads']} torch "
        f"threads, {m['device']}, {m['precision']}). Config hash {res['config_hash']}."
    )
    return "\n".join(lines) + "\n"
