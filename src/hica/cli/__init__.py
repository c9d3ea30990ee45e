"""The ``hica`` command line. Subcommands only parse arguments and call the library.

Commands by topic: :mod:`~hica.cli.experiments` (datasets, encoders, zeroshot, fewshot, benchmark,
report), :mod:`~hica.cli.training` (pretrain, finetune), :mod:`~hica.cli.models` (predict, evaluate,
explain, serve), :mod:`~hica.cli.bench` and :mod:`~hica.cli.analyze` (the ``bench`` / ``analyze`` groups);
shared options in :mod:`~hica.cli.common`.
"""

from __future__ import annotations

import logging
import sys

import typer

from hica.cli import analyze, attributes, bench, experiments, models, training
from hica.cli.common import err_console, error_line
from hica.errors import HicaError

app = typer.Typer(
    name="hica",
    help="Few-shot and zero-shot medical image classification with vision-language models (HiCA).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _command in (
    experiments.datasets,
    experiments.encoders,
    experiments.zeroshot,
    experiments.fewshot,
    experiments.benchmark,
    training.pretrain,
    training.finetune,
    models.predict,
    models.evaluate,
    models.explain,
    models.serve,
    experiments.report,
    attributes.attributes,
):
    app.command()(_command)
app.add_typer(bench.app, name="bench")
app.add_typer(analyze.app, name="analyze")


def _interrupted(e: BaseException) -> bool:
    """Whether ``e`` is, or was raised while handling, a KeyboardInterrupt (typer makes Ctrl-C exit 130)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def main() -> None:
    """Entry point: user errors (and OSErrors naming a file) print one clear line and exit 2; Ctrl-C prints
    how to resume and exits 130. Outputs are written atomically, so an interrupted run leaves no half file."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except HicaError as e:
        error_line(str(e))
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit) as e:
        if (isinstance(e, SystemExit) and e.code != 130) or not _interrupted(e):
            raise
        err_console.print("interrupted: run the same command again to resume", soft_wrap=True)
        sys.exit(130)
    except OSError as e:
        if e.filename is None:
            raise
        where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
        error_line(f"{where}: {e.strerror or e}")
        sys.exit(2)


__all__ = ["app", "main"]
