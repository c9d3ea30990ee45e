"""The attribute level of ``hica analyze unseen`` (``zero_shot: attributes``): per-group accuracy of the
attribute posteriors against the mask-measured values, aggregated over seeds, and its Markdown tables."""

from __future__ import annotations

from typing import Any

from hica.eval.stats import seed_stat


def group_key(group: list[str]) -> str:
    """The name of a held-out group of classes: its class names joined by ``+``."""
    return "+".join(group)


def attribute_summary(before: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per attribute group: the unaligned encoder's and, per held-out group, the aligned models' (mean and
    std over seeds) accuracy / balanced accuracy against the mask-measured values; None when the parts
    carry no ``attribute_accuracy`` (prototype zero-shot)."""
    if "attribute_accuracy" not in before:
        return None
    out: dict[str, Any] = {}
    for roi in ("proposed_roi", "mask_roi"):
        out[roi] = {"before_alignment": before["attribute_accuracy"][roi], "aligned": {}}
        for key in dict.fromkeys(group_key(r["holdout"]) for r in records):
            recs = [r for r in records if group_key(r["holdout"]) == key and "attribute_accuracy" in r]
            groups = recs[0]["attribute_accuracy"][roi] if recs else {}
            out[roi]["aligned"][key] = {
                g: {
                    "n": groups[g]["n"],
                    "chance_balanced_accuracy": groups[g]["chance_balanced_accuracy"],
                    **{
                        m: seed_stat([r["attribute_accuracy"][roi][g][m] for r in recs])
                        for m in ("accuracy", "balanced_accuracy")
                    },
                }
                for g in groups
            }
    return out


def attribute_lines(both: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Attribute level: does the text tower score the attributes? (balanced accuracy per group)",
        "",
        "Each evaluation image's attribute values are measured from its lesion mask (`hica.data.attributes`; "
        "masks read for this scoring only, never by a classifier); the model's value is the argmax of its "
        "attribute posterior, presence on the whole image and the other groups on an ROI: the ROI the "
        "zero-shot classifier uses (proposed from token–text similarity, no mask), and, to separate the text "
        "tower from the ROI proposal, the lesion mask itself. "
        "Balanced accuracy (mean recall over the values present) over the images where a value was measured; "
        "chance is 1 / number of values present.",
        "",
    ]
    for roi, title in (("proposed_roi", "Proposed ROI (what the classifier sees)"), ("mask_roi", "Mask ROI")):
        att = both[roi]
        keys = list(att["aligned"])
        lines += _attribute_table(att, keys, title)
    return lines


def _attribute_table(att: dict[str, Any], keys: list[str], title: str) -> list[str]:
    lines = [
        "",
        f"**{title}**",
        "",
        "| Group | Images | Chance | Before alignment | "
        + " | ".join(f"Aligned, {k} held out" for k in keys)
        + " |",
        "|---|---|---|---|" + "---|" * len(keys),
    ]
    for g, b in att["before_alignment"].items():
        cells = []
        for k in keys:
            a = att["aligned"][k].get(g)
            cells.append(
                f"{a['balanced_accuracy']['mean']:.3f} ± {a['balanced_accuracy']['std']:.3f}" if a else "—"
            )
        lines.append(
            f"| {g} | {b['n']} | {b['chance_balanced_accuracy']:.3f} | {b['balanced_accuracy']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines
