"""Model cards as text: the one-line summary the CLI prints, the lineage chain and ``MODEL_CARD.md``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hica.integrity import CARD_JSON
from hica.modelcard.limits import RESEARCH_ONLY


def missing_card_warning(model_dir: str | Path) -> str:
    """The one-line warning for a model folder without a card."""
    return (
        f"warning: {model_dir} has no {CARD_JSON} (made before model cards): its data, K, lineage and "
        "weights cannot be checked; retrain it to get a card. Research use only."
    )


def lineage_text(lineage: Sequence[dict[str, Any]]) -> str:
    """``default→stage1(1a2b3c4)``: the chain of encoders (stages with a short weights hash)."""
    parts = []
    for e in lineage:
        if e.get("stage") == "base":
            parts.append(str(e.get("name")))
        else:
            sha = e.get("weights_sha256") or e.get("fingerprint") or ""
            parts.append(f"{e.get('stage')}({str(sha)[:7]})")
    return "→".join(parts)


def card_summary(card: dict[str, Any]) -> str:
    """One line: name, data, K, seed, classes, encoder lineage, metrics, intended use."""
    td = card.get("training_data") or {}
    bits = [f"{card.get('kind', 'model')} {card.get('name')}", f"{td.get('dataset')}"]
    if card.get("k") is not None:
        bits[-1] += f" K={card['k']}"
    bits[-1] += f" seed {card.get('seed')}"
    if card.get("classes"):
        bits.append("classes " + "/".join(card["classes"]))
    lineage = (card.get("encoder") or {}).get("lineage") or []
    bits.append("encoder " + lineage_text(lineage[:-1] if len(lineage) > 1 else lineage))
    m = card.get("metrics") or {}
    for key, label in (("validation", "val"), ("test", "test")):
        if isinstance(m.get(key), dict) and m[key].get("accuracy") is not None:
            bits.append(f"{label} acc {m[key]['accuracy']:.2f}")
        elif card.get("kind") == "classifier":
            bits.append(f"{label} not measured")
    bits.append("research use only")
    return " · ".join(bits)


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (dict, list)):
        v = json.dumps(v, default=str)
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out + [""]


def render_markdown(card: dict[str, Any]) -> str:
    """A readable Markdown card rendered from the JSON card."""
    td = card.get("training_data") or {}
    enc = card.get("encoder") or {}
    m = card.get("metrics") or {}
    lines = [
        f"# Model card: {card.get('name')} ({card.get('kind')})",
        "",
        f"**{RESEARCH_ONLY}**",
        "",
        f"`{card_summary(card)}`",
        "",
        "| field | value |",
        "|---|---|",
    ]
    commit = card.get("git_commit")
    if commit:
        commit = f"{commit[:12]}" + ("" if card.get("git_clean") else " (uncommitted changes)")
    for k, v in (
        ("kind", card.get("kind")),
        ("classes", ", ".join(card.get("classes") or []) or None),
        ("dataset", td.get("dataset")),
        ("dataset fingerprint", td.get("dataset_fingerprint")),
        ("K (shots per class)", card.get("k")),
        ("seed", card.get("seed")),
        ("method", card.get("method")),
        ("ROI source", card.get("roi_source")),
        ("created (UTC)", card.get("created")),
        ("hica version", card.get("hica_version")),
        ("git commit", commit),
        ("card schema", card.get("schema_version")),
    ):
        lines.append(f"| {k} | {_cell(v)} |")
    lines += ["", "## Intended use", "", str(card.get("intended_use")), ""]
    lines += ["## Known limits", ""]
    for lim in card.get("limits") or []:
        src = f" (source: `{lim['source']}`)" if lim.get("source") else ""
        lines.append(f"- {lim.get('text')}{src}")
    lines += ["", "## Training data", ""]
    lines += [
        f"Dataset `{td.get('dataset')}` (fingerprint `{td.get('dataset_fingerprint')}`), splits used: "
        f"{', '.join(td.get('splits_used') or [])}.",
        "",
    ]
    counts = td.get("n_images") or {}
    if counts and all(isinstance(v, dict) for v in counts.values()):
        cols = list(dict.fromkeys(c for v in counts.values() for c in v))
        lines += _table(["class", *cols], [[c, *[v.get(col, 0) for col in cols]] for c, v in counts.items()])
    elif counts:
        lines += _table(["images", "count"], list(counts.items()))
    if td.get("episode"):
        lines += ["### Episode files", ""]
        lines += _table(
            ["set", "label", "id", "path"],
            [[r["set"], r["label"], r["id"], r["path"]] for r in td["episode"]],
        )
    elif td.get("images") is not None:
        lines += [
            f"{len(td['images'])} unlabelled image ids are listed in `{CARD_JSON}` (`training_data.images`).",
            "",
        ]
    lines += ["## Encoder and lineage", ""]
    lines += [
        f"Started from encoder `{enc.get('name')}` with arguments `{json.dumps(enc.get('args') or {})}` "
        f"(fingerprint `{enc.get('fingerprint')}`): {lineage_text(enc.get('lineage') or [])}.",
        "",
    ]
    lines += _table(
        ["step", "name", "dataset", "fingerprint", "weights sha256", "path"],
        [
            [
                e.get("stage"),
                e.get("name"),
                e.get("dataset"),
                e.get("fingerprint"),
                (e.get("weights_sha256") or "")[:16] or None,
                e.get("path"),
            ]
            for e in enc.get("lineage") or []
        ],
    )
    lines += ["## Metrics", ""]
    measured = {k: v for k, v in (("validation", m.get("validation")), ("test", m.get("test"))) if v}
    if measured:
        keys = list(dict.fromkeys(k for v in measured.values() for k in v))
        lines += _table(["metric", *measured], [[k, *[v.get(k) for v in measured.values()]] for k in keys])
    else:
        lines += ["No validation or test metrics were measured for this model.", ""]
    lines += [f"- {n}" for n in m.get("notes") or []]
    if m.get("training"):
        lines += ["", "Training summary:", "", "```json", json.dumps(m["training"], indent=2), "```"]
    lines += ["", "## Method and hyperparameters", ""]
    if card.get("selected"):
        lines += ["Chosen on validation data:", ""]
        lines += _table(["hyperparameter", "value"], list(card["selected"].items()))
    lines += ["Settings:", "", "```json", json.dumps(card.get("hyperparameters") or {}, indent=2), "```", ""]
    lines += ["## Weights", ""]
    lines += _table(["file", "sha256"], [[f, f"`{h}`"] for f, h in (card.get("weights") or {}).items()])
    lines += [
        f"Rendered from `{CARD_JSON}` by `hica.modelcard`. `hica predict` / `evaluate` / `explain` refuse "
        "this model if a weights file no longer matches these hashes.",
        "",
    ]
    return "\n".join(lines)
