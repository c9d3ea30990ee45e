"""Run the ``hica`` entry point in process, as the installed script does (shared by the CLI tests)."""

from __future__ import annotations

import sys

import pytest

from hica.cli import main


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``hica ARGS`` through ``hica.cli.main``. An exception other than
    SystemExit escaping ``main`` (what a user would see as a traceback) propagates to the caller."""
    argv = sys.argv
    sys.argv = ["hica", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err
