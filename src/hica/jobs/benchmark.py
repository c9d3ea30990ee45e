"""``hica benchmark``: run the protocol's grid (:class:`hica.eval.protocol.Benchmark`), then write its
outputs (:func:`hica.report.tables.write_outputs`: metrics.json, predictions.csv, results.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hica.config import BenchmarkConfig
from hica.eval.protocol import Benchmark
from hica.io import out_lock
from hica.report.tables import write_outputs


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
        return write_outputs(out, cfg, run.records, run.timings)
