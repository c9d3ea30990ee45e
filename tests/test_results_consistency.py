"""The numbers in README.md and results/hica/summary.md are the committed runs' metrics.json, regenerated."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_summary_and_readme_match_the_committed_metrics(tmp_path: Path) -> None:
    out = tmp_path / "README.md"
    subprocess.run(
        [sys.executable, "scripts/hica_results.py", "--out", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    committed = REPO / "results" / "hica"
    for name in ("summary.md", "README.md", "targets.json"):
        regenerated = (tmp_path / name).read_text(encoding="utf-8")
        assert regenerated == (committed / name).read_text(encoding="utf-8"), (
            f"results/hica/{name} is not what scripts/hica_results.py makes from the committed runs"
        )
    summary_rows = [ln for ln in (committed / "summary.md").read_text().splitlines() if ln.startswith("| ")]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(summary_rows) >= 6  # the header and one row per dataset and metric
    for row in summary_rows:
        assert row in readme, f"README.md's results table lacks or changed this row of summary.md: {row}"


def test_readme_headline_numbers_are_in_the_summary() -> None:
    """Every 'X vs Y' pair of the README's HiCA bullets is a cell of summary.md."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    summary = (REPO / "results" / "hica" / "summary.md").read_text(encoding="utf-8")
    cells = set(re.findall(r"\d\.\d{3}", summary))
    prose = readme.split("## Results", 1)[1].split("The baseline table alone", 1)[0]
    bullets = [ln for ln in prose.splitlines() if ln.startswith("- Chest X-ray:") or ln.startswith("- BUSI:")]
    assert len(bullets) == 2
    for num in re.findall(r"\d\.\d{3}", " ".join(bullets)):
        assert num in cells, f"README bullet number {num} is not in results/hica/summary.md"
