"""``hica benchmark``: run the protocol's grid (:class:`hica.eval.protocol.Benchmark`), then write its
outputs (:func:`hica.report.tables.write_outputs`: metrics.json, predictions.csv, results.md) and, when
HiCA runs kept their per-step loss terms (``loss_logs/``), ``loss_terms.png`` and a "Loss terms" section
at the end of results.md (:mod:`hica.report.losses`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hica.config import BenchmarkConfig
from hica.eval.protocol import Benchmark
from hica.io import out_lock, write_text
from hica.report.losses import loss_markdown, plot_loss_terms, run_loss_logs
from hica.report.tables import write_outputs

LOSS_PNG = "loss_terms.png"


def run_benchmark(
    cfg: BenchmarkConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    rerun_other_code: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) ``cfg``'s grid into ``out_dir`` and write its outputs there; the metrics dict.

    ``out_dir`` is locked from the first part to the last output: a second run writing it meanwhile is
    refused (HicaError)."""
    out = Path(out_dir)
    with out_lock(out):
        run = Benchmark(cfg, out, progress=progress).run(resume=resume, rerun_other_code=rerun_other_code)
        result = write_outputs(out, cfg, run.records, run.timings)
        write_loss_terms(out, run.records)
        return result


def write_loss_terms(out: Path, records: list[dict[str, Any]]) -> Path | None:
    """``out/loss_terms.png`` and results.md's "Loss terms" section from the loss logs of ``records``' HiCA
    runs; nothing (None) when none has a log, so runs without HiCA keep their results.md byte for byte.
    A reused part whose log file is missing is named in the section."""
    logs, missing = run_loss_logs(out, records)
    if not logs:
        return None
    png = plot_loss_terms(logs, out / LOSS_PNG)
    results = out / "results.md"
    md = results.read_text(encoding="utf-8") if results.is_file() else ""
    write_text(results, md + "\n" + "\n".join(loss_markdown(logs, LOSS_PNG, missing)))
    return png
