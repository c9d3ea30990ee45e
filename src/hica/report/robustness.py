"""``hica analyze robustness``'s tables: the summary of its records (:func:`summarize`) and the Markdown of
its metrics.json (:func:`markdown`). The figures are drawn by :mod:`hica.report.analyses`.

``cfg`` is the run's ``RobustnessConfig`` (:mod:`hica.analysis.robustness_config`); only its two parts are
read, so anything with ``descriptor_noise`` and ``corruptions`` of the same shape will do.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import numpy as np

from hica.eval.stats import seed_summary


class RobustnessParts(Protocol):
    """What the tables read of a ``RobustnessConfig``: its two parts (None when not run)."""

    descriptor_noise: Any
    corruptions: Any


def _ms(values: list[float]) -> dict[str, float]:
    return seed_summary(values)


def summarize(records: list[dict[str, Any]], cfg: RobustnessParts) -> dict[str, Any]:
    """Mean ± std over seeds: accuracy vs p per method; per method and corruption, accuracy vs severity,
    mean accuracy under corruption (mCA, over all corruptions × severities) and mCA / clean accuracy."""
    out: dict[str, Any] = {}
    noise = [r for r in records if r["part"] == "noise"]
    if noise:
        nz: dict[str, Any] = {}
        for m in cfg.descriptor_noise.methods:  # type: ignore[union-attr]
            nz[m] = {}
            for p in cfg.descriptor_noise.p:  # type: ignore[union-attr]
                rs = [r for r in noise if r["method"] == m and r["p"] == p]
                if rs:
                    nz[m][f"{p:g}"] = {
                        metric: _ms([r["metrics"][metric] for r in rs if metric in r["metrics"]])
                        for metric in ("accuracy", "auc")
                        if all(metric in r["metrics"] for r in rs)
                    }
                    alphas = [r.get("selected", {}).get("alpha") for r in rs]
                    if m.startswith("hica") and all(a is not None for a in alphas):  # text weight
                        nz[m][f"{p:g}"]["alpha"] = _ms(alphas)
        out["descriptor_noise"] = nz
    corr = [r for r in records if r["part"] == "corruption"]
    if corr:
        cs: dict[str, Any] = {}
        for m in cfg.corruptions.methods:  # type: ignore[union-attr]
            rs = [r for r in corr if r["method"] == m]
            clean_by_seed = {r["seed"]: r["metrics"]["accuracy"] for r in rs if r["corruption"] == "clean"}
            if not clean_by_seed:
                continue
            per: dict[str, dict[str, Any]] = {}
            mca_by_seed: dict[int, list[float]] = {}
            for r in rs:
                if r["corruption"] == "clean":
                    continue
                per.setdefault(r["corruption"], {}).setdefault(str(r["severity"]), []).append(
                    r["metrics"]["accuracy"]
                )
                mca_by_seed.setdefault(r["seed"], []).append(r["metrics"]["accuracy"])
            mca = {s: float(np.mean(v)) for s, v in mca_by_seed.items()}
            by_sev: dict[int, dict[int, list[float]]] = {}  # severity -> seed -> accuracies
            for r in rs:
                if r["corruption"] != "clean":
                    by_sev.setdefault(r["severity"], {}).setdefault(r["seed"], []).append(
                        r["metrics"]["accuracy"]
                    )
            cs[m] = {
                "clean_accuracy": _ms(list(clean_by_seed.values())),
                "mean_corrupted_accuracy": _ms(list(mca.values())) if mca else None,
                "relative": _ms([mca[s] / clean_by_seed[s] for s in mca if clean_by_seed.get(s)])
                if mca
                else None,
                "per_severity": {
                    str(sev): _ms([float(np.mean(v)) for v in seeds.values()])
                    for sev, seeds in sorted(by_sev.items())
                },
                "per_corruption": {
                    c: {sev: _ms(v) for sev, v in sorted(d.items(), key=lambda kv: int(kv[0]))}
                    for c, d in per.items()
                },
            }
        out["corruptions"] = cs
    return out


def _pm(d: dict[str, float] | None, digits: int = 3) -> str:
    if not d:
        return "–"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def markdown(result: dict[str, Any], cfg: RobustnessParts) -> str:
    """The run's tables as Markdown."""
    s = result["summary"]
    lines = [
        f"# Robustness: {result['dataset']} (K={result['k']}, seeds {', '.join(map(str, result['seeds']))})",
        "",
        "Accuracy on the test split, mean ± std over seeds (each seed: its own K-shot episode). "
        "Produced by `hica analyze robustness`; the machine is in `environment.json`.",
        "",
    ]
    enc = result.get("encoder")
    if enc:
        args = ", ".join(f"{k}: {v}" for k, v in enc.get("args", {}).items())
        lines += [
            f"Every method uses the encoder `{enc['name']}`{f' ({args})' if args else ''}. Method arguments "
            f"other than the defaults: {json.dumps(result.get('method_args') or {})}.",
            "",
        ]
    if "descriptor_noise" in s:
        ps = [f"{p:g}" for p in cfg.descriptor_noise.p]  # type: ignore[union-attr]
        lines += [
            "## Noisy descriptors",
            "",
            f"A fraction p of the descriptor phrases corrupted ({', '.join(cfg.descriptor_noise.kinds)}; "  # type: ignore[union-attr]
            "drawn with the episode seed, logged in `noise_logs/`); methods fitted with the noisy text, "
            f"scored on the clean test images (n = {result['n_test']}).",
            "",
            "| method | " + " | ".join(f"p = {p}" for p in ps) + " | drop at largest p |",
            "|---|" + "---|" * (len(ps) + 1),
        ]
        for m, by_p in s["descriptor_noise"].items():
            cells = [_pm(by_p.get(p, {}).get("accuracy")) for p in ps]
            a0, a1 = by_p.get(ps[0], {}).get("accuracy"), by_p.get(ps[-1], {}).get("accuracy")
            drop = f"{a1['mean'] - a0['mean']:+.3f}" if a0 and a1 else "–"
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {drop} |")
        lines.append("")
        for m, by_p in s["descriptor_noise"].items():
            if all("alpha" in by_p.get(p, {}) for p in ps):
                lines.append(
                    f"{m}: weight α of the class-text prototypes in its classifier (chosen on the validation "
                    "shots), mean ± std over seeds: "
                    + ", ".join(f"p = {p}: {_pm(by_p[p]['alpha'], 2)}" for p in ps)
                    + "."
                )
                lines.append("")
    if "corruptions" in s:
        cs = s["corruptions"]
        names = sorted({c for v in cs.values() for c in v["per_corruption"]})
        lines += [
            "## Image corruptions",
            "",
            f"Each method fitted once on the clean episode, scored on n = {result['n_corruption_images']} "
            "test images corrupted at the encoder's input size (ImageNet-C severities; "
            "`hica.eval.corruptions`). mCA: mean accuracy over all corruptions × severities; relative: "
            "mCA / clean accuracy (per seed, then averaged).",
            "",
            "| method | clean | mCA | relative | " + " | ".join(names) + " |",
            "|---|---|---|---|" + "---|" * len(names),
        ]
        for m, v in cs.items():
            per = []
            for c in names:
                d = v["per_corruption"].get(c, {})
                per.append(f"{np.mean([x['mean'] for x in d.values()]):.3f}" if d else "–")
            lines.append(
                f"| {m} | {_pm(v['clean_accuracy'])} | {_pm(v['mean_corrupted_accuracy'])} | "
                f"{_pm(v['relative'])} | " + " | ".join(per) + " |"
            )
        lines += ["", "Per-corruption columns: accuracy averaged over severities (mean over seeds).", ""]
    reused = result.get("reused_parts", 0)
    other = (result.get("grid") or {}).get("parts_from_other_code", 0)
    made_by = f", {other} of them made by another code commit" if other else ""
    note = f" ({reused} finished part(s) reused from an earlier invocation{made_by})" if reused else ""
    lines += [f"Wall time of this invocation {result['wall_seconds']:.0f} s{note}.", ""]
    return "\n".join(lines)
