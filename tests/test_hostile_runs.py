"""Output folders and interrupted runs (docs/hostile-inputs.md, the section of that name).

Each case ends in correct behaviour or a one-line ``error: ...`` naming the path with a non-zero exit code,
and never loses or half-writes what a run had already written:

* an ``--out`` that cannot be written (a read-only folder, a file, a path under a file), for every command
  that writes outputs: refused before anything is computed;
* two runs writing the same ``--out`` at once: the second is refused (``OUT/.lock``, an ``flock``);
* SIGKILL or SIGINT in the middle of ``hica benchmark``, then the same command again: it resumes and its
  metrics equal those of an uninterrupted run.

The runs are real: BUSI, the default encoder on CPU, in a subprocess of ``python -m hica.cli``; one feature
cache is shared by the module (warmed by the uninterrupted reference run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from cli_helpers import run_main

from hica.errors import HicaError
from hica.io import out_lock

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
N_RUNS = 8  # 2 methods x 2 shots x 2 seeds
INTERRUPTED = "interrupted: run the same command again to resume"


# -- helpers -----------------------------------------------------------------------------------------------
def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit code, stderr) of ``hica ARGS`` run in process through ``main``; an exception other than
    SystemExit escaping ``main`` (a traceback for a user) propagates and fails the test."""
    code, _, err = run_main(args, capsys)
    return code, err


def one_error_line(err: str) -> str:
    """The single ``error: ...`` line of ``err`` (asserts there is exactly one line and no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: relative path -> (content, mtime_ns)."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def comparable_metrics(out: Path) -> dict:
    """``metrics.json`` without wall-clock fields (the run-level timings and each run's ``*_seconds``)."""
    res = json.loads((out / "metrics.json").read_text())
    res.pop("timings")
    res["runs"] = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in res["runs"]]
    return res


# -- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def cfg_path(work: Path) -> Path:
    cfg = {
        "name": "hostile",
        "encoder": {"name": "default"},
        "datasets": ["busi"],
        "shots": [1, 2],
        "seeds": [1, 2],
        "methods": ["prototype", "linear_probe"],
        "device": "cpu",
        "precision": "fp32",
    }
    path = work / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def env(work: Path, data_root: Path) -> dict[str, str]:
    """The subprocesses' environment: real data, offline, one thread, the module's shared feature cache."""
    return {
        **os.environ,
        "HICA_DATA": str(data_root),
        "HICA_CACHE": str(work / "cache"),
        "HF_HUB_OFFLINE": "1",
        "HICA_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def bench_cmd(cfg_path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "hica.cli", "benchmark", "--config", str(cfg_path), "--out", str(out)]


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` with SIGINT at its default (a parent that ignores it would make the child ignore it)."""
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture(scope="module")
def reference(work: Path, cfg_path: Path, env: dict[str, str]) -> Path:
    """An uninterrupted run (it also fills the shared feature cache)."""
    out = work / "reference"
    res = subprocess.run(bench_cmd(cfg_path, out), env=env, cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((out / "parts").glob("*.json"))) == N_RUNS
    return out


def wait_for(cond, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll ``cond()`` every 5 ms until true; fail if ``proc`` ends first or ``timeout`` seconds pass."""
    t_end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > t_end:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


# -- 1 and 2: outputs that cannot be written ---------------------------------------------------------------
def _commands(cfg_path: Path, target: Path, tmp: Path, data_root: Path) -> dict[str, list[str]]:
    """Every command that writes outputs, with its output at ``target`` (a folder, or a file for some)."""
    image = str(next((data_root / "busi" / "Dataset_BUSI_with_GT" / "benign").glob("*).png")))
    model = str(tmp / "no-model")
    analysis = REPO / "configs" / "analysis"
    return {
        "benchmark": ["benchmark", "--config", str(cfg_path), "--out", str(target)],
        "fewshot": ["fewshot", "--dataset", "busi", "--method", "prototype", "--shots", "1", "--seeds", "1"]
        + ["--out", str(target)],
        "zeroshot": ["zeroshot", "--dataset", "busi", "--out", str(target)],
        "pretrain": [
            "pretrain",
            "--config",
            str(REPO / "configs" / "stage1_busi.yaml"),
            "--out",
            str(target),
        ],
        "finetune": [
            "finetune",
            "--config",
            str(REPO / "configs" / "stage2_busi.yaml"),
            "--out",
            str(target),
        ],
        "predict": ["predict", image, "--checkpoint", model, "--out", str(target / "p.csv")],
        "evaluate": ["evaluate", "--checkpoint", model, "--dataset", "busi", "--out", str(target / "m.json")],
        "explain": ["explain", image, "--checkpoint", model, "--out", str(target)],
        "report": ["report", str(tmp), "--out", str(target)],
        "analyze robustness": ["analyze", "robustness", "--config", str(analysis / "robustness_busi.yaml")]
        + ["--out", str(target)],
        "analyze unseen": ["analyze", "unseen", "--config", str(analysis / "unseen_busi.yaml")]
        + ["--out", str(target)],
        "analyze localization": [
            "analyze",
            "localization",
            "--config",
            str(analysis / "localization_busi.yaml"),
        ]
        + ["--out", str(target)],
        "analyze efficiency": ["analyze", "efficiency", "--config", str(analysis / "efficiency.yaml")]
        + ["--out", str(target)],
        "bench encoder": ["bench", "encoder", "--out", str(target / "b.json")],
    }


COMMANDS = [
    "benchmark",
    "fewshot",
    "zeroshot",
    "pretrain",
    "finetune",
    "predict",
    "evaluate",
    "explain",
    "report",
    "analyze robustness",
    "analyze unseen",
    "analyze localization",
    "analyze efficiency",
    "bench encoder",
]


@pytest.fixture
def busi_image_root(data_root: Path) -> Path:
    if not (data_root / "busi" / "Dataset_BUSI_with_GT" / "benign").is_dir():
        pytest.skip("BUSI not found")
    return data_root


@pytest.mark.parametrize("command", COMMANDS)
def test_out_under_a_file_is_refused_with_the_path(
    command: str, cfg_path: Path, tmp_path: Path, busi_image_root: Path, capsys, monkeypatch
) -> None:
    """``--out some_file.txt/run``: one line naming the path, exit 2, the file untouched, nothing computed."""
    monkeypatch.setenv("HICA_CACHE", str(tmp_path / "cache"))
    blocker = tmp_path / "some_file.txt"
    blocker.write_text("keep me\n")
    target = blocker / "run"
    t0 = time.perf_counter()
    code, err = run_cli(_commands(cfg_path, target, tmp_path, busi_image_root)[command], capsys)
    line = one_error_line(err)
    assert code == 2 and str(blocker) in line and "is a file" in line, line
    assert blocker.read_text() == "keep me\n"
    assert not (tmp_path / "cache").exists()  # refused before any encoding
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("command", ["benchmark", "fewshot", "finetune", "report", "analyze robustness"])
def test_out_that_is_a_file_is_refused(command: str, cfg_path: Path, tmp_path: Path, busi_image_root, capsys):
    """``--out some_file.txt`` for a command whose output is a folder: refused, the file untouched."""
    target = tmp_path / "some_file.txt"
    target.write_text("keep me\n")
    code, err = run_cli(_commands(cfg_path, target, tmp_path, busi_image_root)[command], capsys)
    line = one_error_line(err)
    assert code == 2 and f"--out {target} is a file" in line, line
    assert target.read_text() == "keep me\n"


def test_predict_out_that_is_a_folder_is_refused(tmp_path: Path, busi_image_root: Path, capsys) -> None:
    cmd = _commands(Path("c"), tmp_path, tmp_path, busi_image_root)["predict"]
    cmd[-1] = str(tmp_path)
    code, err = run_cli(cmd, capsys)
    assert code == 2 and f"--out {tmp_path} is a folder" in one_error_line(err)


def test_read_only_out_is_refused(reference: Path, cfg_path: Path, tmp_path: Path, capsys) -> None:
    """A read-only ``--out`` holding an earlier run: refused with the path, the earlier run untouched.

    Root ignores permission bits (a chmod 0o555 folder stays writable for it), so as root the same
    refusal is exercised by the cases above (an ``--out`` under a file), and this one is skipped."""
    if os.geteuid() == 0:
        pytest.skip(
            "running as root: permission bits are not enforced (covered by the --out-under-a-file cases)"
        )
    out = tmp_path / "ro"
    subprocess.run(["cp", "-a", str(reference), str(out)], check=True)
    before = snapshot(out)
    out.chmod(0o555)
    try:
        code, err = run_cli(["benchmark", "--config", str(cfg_path), "--out", str(out)], capsys)
    finally:
        out.chmod(0o755)
    line = one_error_line(err)
    assert code == 2 and str(out) in line and "not writable" in line, line
    assert snapshot(out) == before


def test_os_error_naming_a_file_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """The catch-all in ``main``: an OSError with a file name that no check foresaw is one line, exit 2."""
    import hica.report.build

    def fail(*_a, **_k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "report" / "figures"))

    monkeypatch.setattr(hica.report.build, "build_report", fail)
    code, err = run_cli(["report", str(tmp_path), "--out", str(tmp_path / "report")], capsys)
    assert code == 2
    assert one_error_line(err) == f"error: {tmp_path / 'report' / 'figures'}: Permission denied"


# -- 3: two runs writing the same --out ---------------------------------------------------------------------
def test_lock_refuses_a_second_process_and_a_dead_holder_does_not_block(
    cfg_path: Path, tmp_path: Path, env: dict[str, str], capsys
) -> None:
    out = tmp_path / "out"
    holder = start(
        [
            sys.executable,
            "-c",
            f"from hica.io import out_lock\nwith out_lock({str(out)!r}):\n"
            "    print('locked', flush=True)\n    import time; time.sleep(600)",
        ],
        env,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = run_cli(["benchmark", "--config", str(cfg_path), "--out", str(out)], capsys)
        line = one_error_line(err)
        assert code == 2
        want = f"another hica run is writing {out} (pid {holder.pid}); wait for it or choose another --out"
        assert line == f"error: {want}"
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with out_lock(out):  # the .lock file of the killed holder is left behind, and does not block
        assert (out / ".lock").read_text().strip() == str(os.getpid())


def test_lock_is_reentrant_in_its_thread_only(tmp_path: Path) -> None:
    """The CLI locks and then calls a runner that locks again (same thread: allowed); another thread of the
    same process (e.g. a server running jobs) is refused like another process."""
    errors: list[str] = []

    def other() -> None:
        try:
            with out_lock(tmp_path):
                pass
        except HicaError as e:
            errors.append(str(e))

    with out_lock(tmp_path), out_lock(tmp_path):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and f"another hica run is writing {tmp_path}" in errors[0]
    with out_lock(tmp_path):  # released after the outer block
        pass


def test_concurrent_benchmark_into_the_same_out_is_refused(
    reference: Path, cfg_path: Path, tmp_path: Path, env: dict[str, str], capsys
) -> None:
    """A real run holds ``OUT``; a second ``hica benchmark --out OUT`` meanwhile is refused and changes
    nothing; the first finishes with the reference's metrics."""
    out = tmp_path / "out"
    lock = out / ".lock"
    first = start(bench_cmd(cfg_path, out), env)
    wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), first, 60, "the lock")
    code, err = run_cli(["benchmark", "--config", str(cfg_path), "--out", str(out)], capsys)
    assert code == 2 and f"another hica run is writing {out} (pid {first.pid})" in one_error_line(err)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-3000:]
    assert comparable_metrics(out) == comparable_metrics(reference)
    assert (out / "predictions.csv").read_bytes() == (reference / "predictions.csv").read_bytes()


# -- 4: SIGKILL / SIGINT in the middle, then the same command again -----------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_interrupted_benchmark_resumes_to_the_same_metrics(
    sig: signal.Signals, reference: Path, cfg_path: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    parts = out / "parts"
    # A feature cache of its own: with the module's warm cache the other parts finish within milliseconds of
    # the first, and a parent starved of CPU (a parallel test worker) signalled too late. Cold, every part
    # encodes its support images, and the results are the same (the cache keeps exact tensors).
    env = {**env, "HICA_CACHE": str(tmp_path / "cache")}
    proc = start(bench_cmd(cfg_path, out), env)
    wait_for(lambda: parts.is_dir() and any(parts.glob("*.json")), proc, 180, "a first part")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert not (out / "metrics.json").exists(), "the run finished before the signal: nothing was interrupted"
    done = sorted(parts.glob("*.json"))
    assert 1 <= len(done) < N_RUNS
    for p in done:  # every part written is whole
        assert json.loads(p.read_text())["metrics"]
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # one line saying how to go on, no traceback, no temporary file left behind
        assert proc.returncode == 130, stderr[-3000:]
        assert "Traceback" not in stderr
        last = [ln.strip() for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()][-1]
        assert last == INTERRUPTED
        assert not [p for p in out.rglob(".*.tmp")]
    kept = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in done}

    res = subprocess.run(bench_cmd(cfg_path, out), env=env, cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list(parts.glob("*.json"))) == N_RUNS
    assert {n: (parts / n).read_bytes() for n in kept} == {n: b for n, (b, _) in kept.items()}
    assert {n: (parts / n).stat().st_mtime_ns for n in kept} == {n: t for n, (_, t) in kept.items()}  # reused
    assert comparable_metrics(out) == comparable_metrics(reference)
    assert (out / "predictions.csv").read_bytes() == (reference / "predictions.csv").read_bytes()
