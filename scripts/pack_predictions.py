"""Compress run directories' ``predictions.csv`` to ``predictions.csv.gz`` for committing (the plain file is
gitignored under results/; every reader of a run, :func:`hica.io.open_text`, takes either).

    python scripts/pack_predictions.py results/headline/busi results/headline/chest_xray

The same predictions give the same bytes (no time stamp), so re-packing an unchanged run changes nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hica.io import gzip_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories holding predictions.csv")
    args = ap.parse_args()
    for run in args.runs:
        src = run / "predictions.csv"
        if not src.is_file():
            raise SystemExit(f"{src}: not found (pass a run directory of `hica benchmark` or `hica analyze`)")
        out = gzip_file(src)
        print(f"{out}: {src.stat().st_size / 1e6:.1f} MB -> {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
