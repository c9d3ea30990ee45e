"""HiCA's per-step loss terms kept with every run: ``loss_logs/<part key>.json`` and ``loss_terms.png`` from
``hica benchmark`` (with a "Loss terms" section in results.md), ``train/loss_log.json`` from ``hica
finetune``, a section in ``hica report``; the flat-term check. A tiny real BUSI (5 images per class) at 64 px,
K = 1, one seed, a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hica.config import Stage2Config, validate_config
from hica.eval.protocol import part_key
from hica.jobs.benchmark import run_benchmark, write_loss_terms
from hica.report.losses import flat_terms, method_of, plot_loss_terms

FAST = {"steps": 2, "head_steps": 3, "batch_size": 3}
HICA = ["hica", "hica_no_cross"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(root: Path, cache: Path, methods: list[str]) -> dict:
    return {
        "name": "tiny-losses",
        "encoder": {"name": "default", "args": {"image_size": 64}},
        "datasets": ["busi"],
        "shots": [1],
        "seeds": [1],
        "methods": methods,
        "method_args": {m: FAST for m in methods if m.startswith("hica")},
        "bootstrap": 20,
        "cache_dir": str(cache),
        "data_root": str(root),
        "precision": "fp32",
        "device": "cpu",
    }


def _check_log(log: dict) -> None:
    assert set(log) == {"head", "train"}
    assert [len(log["head"]), len(log["train"])] == [FAST["head_steps"], FAST["steps"]]
    for terms in log["head"] + log["train"]:
        assert {"total", "global", "local"} <= set(terms)
        assert any(t.startswith("local/") for t in terms)
        assert all(isinstance(v, float) for v in terms.values())


def test_benchmark_keeps_loss_logs_and_plots_them(tiny_busi, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = validate_config(_config(tiny_busi.root, tmp_path / "cache", [*HICA, "prototype"]))
    result = run_benchmark(cfg, out, progress=False)
    ds = result["runs"][0]["dataset"]  # the grid's part key: the dataset name made safe (here with its CSV)
    keys = [part_key(ds, m, 1, 1) for m in HICA]
    assert sorted(p.stem for p in (out / "loss_logs").glob("*.json")) == sorted(keys)  # none for prototype
    logs = {k: json.loads((out / "loss_logs" / f"{k}.json").read_text()) for k in keys}
    for log in logs.values():
        _check_log(log)
    assert any(t.startswith("cross") for t in logs[keys[0]]["train"][0])
    assert not any(t.startswith("cross") for t in logs[keys[1]]["train"][0])
    assert (out / "loss_terms.png").read_bytes()[:8] == PNG_MAGIC
    md = (out / "results.md").read_text()
    assert "### Loss terms" in md and "![loss terms](loss_terms.png)" in md
    # the log stays out of the parts and metrics.json (committed tables keep their bytes)
    assert "loss_log" not in (out / "parts" / f"{keys[0]}.json").read_text()
    assert "loss_log" not in (out / "metrics.json").read_text()

    # resume: parts and logs reused as they are; a reused part whose log is gone is named, not recomputed
    (out / "loss_logs" / f"{keys[1]}.json").unlink()
    before = (out / "loss_logs" / f"{keys[0]}.json").stat().st_mtime_ns
    again = run_benchmark(cfg, out, progress=False)
    assert again["timings"]["grid"]["parts_computed"] == 0
    assert (out / "loss_logs" / f"{keys[0]}.json").stat().st_mtime_ns == before
    assert not (out / "loss_logs" / f"{keys[1]}.json").exists()
    md = (out / "results.md").read_text()
    assert md.count("### Loss terms") == 1 and f"`{keys[1]}`" in md and "no loss log" in md
    assert [r["metrics"] for r in again["runs"]] == [r["metrics"] for r in result["runs"]]

    # `hica report` adds the figure and a section for runs that kept loss logs
    from hica.report.build import build_report

    rep = build_report([out], tmp_path / "report")
    text = rep["markdown"].read_text()
    assert "## Loss terms" in text and "figures/loss_terms.png" in text
    assert (tmp_path / "report" / "figures" / "loss_terms.png").read_bytes()[:8] == PNG_MAGIC


def test_benchmark_without_hica_writes_no_loss_terms(tiny_busi, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = validate_config(_config(tiny_busi.root, tmp_path / "cache", ["prototype", "linear_probe"]))
    run_benchmark(cfg, out, progress=False)
    assert not (out / "loss_logs").exists() and not (out / "loss_terms.png").exists()
    md = (out / "results.md").read_bytes()
    assert b"Loss terms" not in md
    records = [json.loads(p.read_text()) for p in sorted((out / "parts").glob("*.json"))]
    assert write_loss_terms(out, records) is None and (out / "results.md").read_bytes() == md


def test_finetune_writes_loss_log_next_to_log_csv(tiny_busi, tmp_path: Path) -> None:
    from hica.jobs.finetune import run_stage2

    cfg = Stage2Config.model_validate(
        {
            "encoder": {"name": "default", "args": {"image_size": 64}},
            "dataset": "busi",
            "k": 1,
            "seed": 1,
            "method_args": FAST,
            "evaluate_test": False,
            "device": "cpu",
            "precision": "fp32",
            "data_root": str(tiny_busi.root),
        }
    )
    out = tmp_path / "ft"
    run_stage2(cfg, out)
    path = out / "train" / "loss_log.json"
    assert (out / "train" / "log.csv").is_file()
    first = json.loads(path.read_text())
    _check_log(first)
    run_stage2(cfg, out)  # resumes at the last checkpoint: no new training step, the earlier ones kept
    assert json.loads(path.read_text())["train"] == first["train"]


def _log(**series: list[float]) -> dict:
    n = len(next(iter(series.values())))
    return {"head": [], "train": [{k: v[i] for k, v in series.items()} for i in range(n)]}


def test_flat_terms_and_plot(tmp_path: Path) -> None:
    logs = {
        f"busi__hica__K1__s{s}": _log(
            total=[3.0 - s * 0.1, 2.0, 1.0],
            local=[0.5, 0.502, 0.5001],  # flat: < 1 % from first to last
            cross=[0.0, 0.0, 0.0],  # zero from the start
            **{"local/n_images": [3.0, 3.0, 3.0]},  # a count: not a loss term, not checked
        )
        for s in (1, 2)
    }
    flagged = flat_terms(logs)
    assert len(flagged) == 2
    assert any("local" in f and "flat" in f for f in flagged)
    assert any("cross" in f and "zero" in f for f in flagged)
    assert not any("total" in f or "n_images" in f for f in flagged)
    assert all(f.startswith("hica train:") for f in flagged)
    assert method_of("imagefolder__x__hica_no_local__K16__s3") == "hica_no_local"
    png = plot_loss_terms(logs, tmp_path / "l.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
