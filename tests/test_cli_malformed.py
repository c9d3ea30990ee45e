"""Every CLI command with malformed arguments: no Python traceback reaches the user, the exit code is not 0,
and the message names what was wrong (issue 12).

The entry point ``hica.cli.main`` runs in process (as the ``hica`` script does): a user error must end in
``SystemExit`` with a one-line ``error: ...`` (HicaError) or a usage message (argument parsing); any other
exception escaping ``main`` is what a user would see as a traceback, and fails the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cli_helpers import run_main

pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``hica ARGS``; (-1, "Traceback: ...") when an exception other than
    SystemExit escapes (what a user would see as a traceback)."""
    try:
        code, out, err = run_main(args, capsys)
    except Exception as e:  # noqa: BLE001 — exactly what must not happen: reported by the caller
        capsys.readouterr()
        return -1, f"Traceback: a {type(e).__name__} reached the user: {e}"
    return code, out + err


def _yaml(path: Path, obj) -> str:
    path.write_text(yaml.safe_dump(obj) if not isinstance(obj, str) else obj)
    return str(path)


def cases(tmp: Path, data_root: Path) -> list[tuple[list[str], str]]:
    """(arguments, a piece of the expected message) for every command."""
    missing = str(tmp / "missing")
    dr = ["--data-root", str(data_root)]
    not_yaml = _yaml(tmp / "list.yaml", "- a\n- b\n")
    empty = _yaml(tmp / "empty.yaml", "")
    unknown_key = _yaml(tmp / "unknown.yaml", {"dataset": "busi", "bogus_key": 1})
    bad_bench = _yaml(tmp / "bench.yaml", {"datasets": ["busi"], "methods": ["prototype"], "shots": ["x"]})
    a_file = _yaml(tmp / "a-file.txt", "just text")
    return [
        (["datasets", "--data-root", missing], "missing"),
        (["encoders", "extra"], "Usage"),
        (["zeroshot", "--dataset", "nope", *dr], "nope"),
        (["zeroshot", "--dataset", "busi", "--encoder", "nope", *dr], "nope"),
        (["zeroshot", "--dataset", "busi", "--encoder-arg", "embeddim=256", *dr], "embeddim"),
        (["zeroshot", "--dataset", "busi", "--encoder-arg", "embed_dim=abc", *dr], "embed_dim"),
        (["zeroshot", "--dataset", "busi", "--encoder-arg", "=", *dr], "encoder-arg"),
        (["zeroshot", "--dataset", "", *dr], "dataset"),
        (["fewshot", "--dataset", "busi", "--method", "nope", *dr], "nope"),
        (["fewshot", "--dataset", "busi", "--method", "prototype", "--shots", "abc", *dr], "abc"),
        (["fewshot", "--dataset", "busi", "--method", "prototype", "--shots", "", *dr], "shots"),
        (["fewshot", "--dataset", "busi", "--method", "prototype", "--seeds", "1,x", *dr], "x"),
        (["benchmark", "--config", missing], "missing"),
        (["benchmark", "--config", not_yaml], "list.yaml"),
        (["benchmark", "--config", empty], "empty.yaml"),
        (["benchmark", "--config", bad_bench], "shots"),
        (["pretrain", "--config", missing], "missing"),
        (["pretrain", "--config", unknown_key], "bogus_key"),
        (["finetune", "--config", missing], "missing"),
        (["finetune", "--config", unknown_key], "bogus_key"),
        (["finetune", "--config", unknown_key, "--k", "abc"], "--k"),
        (["predict", str(tmp / "nope.png"), "--checkpoint", missing], "missing"),
        (["predict", "", "--checkpoint", missing], "missing"),
        (["evaluate", "--checkpoint", missing, "--dataset", "busi", *dr], "missing"),
        (["evaluate", "--checkpoint", missing, "--dataset", "busi", "--merge", "bad", *dr], "merge"),
        (["explain", str(tmp / "nope.png"), "--checkpoint", missing], "missing"),
        (["serve", "--port", "abc"], "--port"),
        (["serve", "--prepare-only"], "--demo"),
        (
            ["serve", "--models", str(tmp), "--work", str(tmp / "w"), "--demo", missing, "--prepare-only"],
            "missing",
        ),
        (
            ["serve", "--models", a_file, "--work", str(tmp / "w"), "--prepare-only", "--demo", missing],
            "a-file.txt",
        ),
        (["report", missing], "missing"),
        (["report", str(tmp), "--rename", "bad"], "rename"),
        (["bench", "encoder", "--encoder", "nope"], "nope"),
        (["bench", "table", "--config", missing], "missing"),
        (["analyze", "robustness", "--config", missing], "missing"),
        (["analyze", "unseen", "--config", unknown_key], "bogus_key"),
        (["analyze", "localization", "--config", empty], "empty.yaml"),
        (["analyze", "efficiency", "--config", not_yaml], "list.yaml"),
    ]


def test_every_command_refuses_malformed_arguments_without_a_traceback(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # default output folders (runs/...) land here if a command wrongly runs
    failures = []
    for args, expect in cases(tmp_path, data_root):
        code, out = run_cli(args, capsys)
        problems = []
        if code == 0:
            problems.append("exit code 0")
        if "Traceback" in out:
            problems.append("a traceback in the output")
        if expect.lower() not in out.lower():
            problems.append(f"no {expect!r} in the message")
        if "Usage" not in out and not out.strip().startswith("error:"):
            problems.append("not a one-line 'error: ...' message")
        if problems:
            failures.append(f"hica {' '.join(args)} -> {code}: {', '.join(problems)}\n{out.strip()[:600]}")
    assert not failures, "\n\n".join(failures)
