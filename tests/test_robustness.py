"""`hica analyze robustness`: config checks, corrupted inputs, and a tiny real BUSI run (64 px, K=1).

The run's p = 0 / clean numbers must equal what the benchmark protocol scores for the same episode, the
noise log must hold round(p·N) changed phrases, and a rerun must resume from ``parts/`` without fitting.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from needs import missing_data

from hica.analysis.robustness import (
    corrupt_batch,
    load_robustness_config,
    run_robustness,
    stratified_subset,
)
from hica.errors import HicaError

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "rb.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


BASE = {"dataset": "busi", "k": 1, "seeds": [1]}


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({}, "give descriptor_noise, corruptions or both"),
        ({"descriptor_noise": {"methods": ["linear_probe"]}}, "do not use text"),
        ({"descriptor_noise": {"methods": ["zeroshot"], "p": [0, 1.5]}}, "[0, 1]"),
        ({"descriptor_noise": {"methods": ["zeroshot"], "kinds": ["shout"]}}, "unknown noise kind"),
        ({"corruptions": {"methods": ["nope"]}}, "unknown method"),
        ({"corruptions": {"methods": ["linear_probe"], "names": ["fog"]}}, "unknown corruption"),
        ({"corruptions": {"methods": ["linear_probe"], "severities": [0, 6]}}, "from 1 to 5"),
        ({"corruptions": {"methods": ["linear_probe"]}, "method_args": {"hica": {}}}, "not in any part"),
        ({"corruptions": {"methods": ["linear_probe"]}, "typo_key": 1}, "typo_key"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, extra: dict, needle: str) -> None:
    path = _write(tmp_path, {**BASE, **extra})
    with pytest.raises(HicaError) as e:
        load_robustness_config(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_stratified_subset_is_fixed_and_keeps_class_shares() -> None:
    labels = [0] * 60 + [1] * 30 + [2] * 10
    a = stratified_subset(labels, 20)
    assert a == stratified_subset(labels, 20) and a == sorted(a) and len(set(a)) == len(a)
    counts = np.bincount(np.asarray(labels)[a], minlength=3)
    assert counts.tolist() == [12, 6, 2]
    assert stratified_subset(labels, None) == list(range(100))
    assert stratified_subset(labels, 500) == list(range(100))


def test_corrupt_batch_clean_seeded_and_grayscale() -> None:
    g = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 256, (2, 1, 32, 32), generator=g, dtype=torch.uint8).repeat(1, 3, 1, 1)
    color = torch.randint(0, 256, (1, 3, 32, 32), generator=g, dtype=torch.uint8)
    x = torch.cat([gray, color])
    assert torch.equal(corrupt_batch(x, None, 0), x.float() / 255)
    a = corrupt_batch(x, "gaussian_noise", 3)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, corrupt_batch(x, "gaussian_noise", 3))  # seeded
    assert not torch.equal(a, corrupt_batch(x, "gaussian_noise", 4))
    # grayscale images stay grayscale (one noise draw for all three channels); colour ones do not
    assert torch.equal(a[0, 0], a[0, 1]) and torch.equal(a[0, 0], a[0, 2])
    assert not torch.equal(a[2, 0], a[2, 1])
    # the seed follows the image's index in the whole set: batches of 1 give the same pixels
    parts = torch.cat([corrupt_batch(x[i : i + 1], "gaussian_noise", 3, first_index=i) for i in range(3)])
    assert torch.equal(parts, a)
    # severity matters: heavier noise moves pixels further
    d1 = (corrupt_batch(x, "gaussian_noise", 1) - x.float() / 255).abs().mean()
    d5 = (corrupt_batch(x, "gaussian_noise", 5) - x.float() / 255).abs().mean()
    assert d5 > d1 > 0


def test_tiny_run_matches_benchmark_logs_noise_and_resumes(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (data_root / "busi").is_dir():
        missing_data(f"BUSI not found under {data_root}")
    from hica.config import validate_config
    from hica.data.descriptors import load_descriptors
    from hica.data.descriptors.noise import phrase_slots
    from hica.eval.protocol import Benchmark

    enc = {"name": "default", "args": {"image_size": 64}}
    cfg_raw = {
        **BASE,
        "name": "rb-tiny",
        "encoder": enc,
        "data_root": str(data_root),
        "cache_dir": str(tmp_path / "cache"),
        "descriptor_noise": {"methods": ["zeroshot", "tip_adapter"], "p": [0, 0.5]},
        "corruptions": {
            "methods": ["tip_adapter"],
            "names": ["gaussian_noise", "jpeg"],
            "severities": [1, 5],
            "max_images": 9,
        },
    }
    cfg = load_robustness_config(_write(tmp_path, cfg_raw))
    out = tmp_path / "run"
    res = run_robustness(cfg, out, progress=False)

    # p = 0 equals the benchmark's score of the same episode with the same method
    bcfg = validate_config(
        {
            "datasets": ["busi"],
            "encoder": enc,
            "shots": [1],
            "seeds": [1],
            "methods": ["zeroshot", "tip_adapter"],
            "data_root": str(data_root),
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    Benchmark(bcfg, tmp_path / "bench", progress=False).run()
    recs = [json.loads(f.read_text()) for f in (tmp_path / "bench" / "parts").glob("*.json")]
    by_method = {r["method"]: r["metrics"]["accuracy"] for r in recs}
    noise = res["summary"]["descriptor_noise"]
    for m in ("zeroshot", "tip_adapter"):
        assert noise[m]["0"]["accuracy"]["mean"] == pytest.approx(by_method[m], abs=1e-4)
        assert 0 <= noise[m]["0.5"]["accuracy"]["mean"] <= 1

    # the noise log holds exactly round(p * N) changed phrases
    log = json.loads((out / "noise_logs" / "p0.5__s1.json").read_text())
    n = len(phrase_slots(load_descriptors("busi")))
    assert len(log) == round(0.5 * n) and all(e["before"] != e["after"] for e in log)

    corr = res["summary"]["corruptions"]["tip_adapter"]
    assert set(corr["per_corruption"]) == {"gaussian_noise", "jpeg"}
    assert set(corr["per_corruption"]["jpeg"]) == {"1", "5"}
    assert res["n_corruption_images"] == 9
    assert 0 <= corr["clean_accuracy"]["mean"] <= 1
    assert (out / "results.md").read_text().startswith("# Robustness")
    assert len(list((out / "parts").glob("noise__*.json"))) == 4
    assert len(list((out / "parts").glob("corruption__*.json"))) == 5

    # resume: nothing is fitted again and the summary is the same
    def boom(*a, **k):
        raise AssertionError("resumed run fitted a method")

    monkeypatch.setattr(Benchmark, "fit", boom)
    again = run_robustness(cfg, out, progress=False)
    assert again["summary"] == res["summary"]


@pytest.mark.parametrize("command", ["robustness", "unseen", "localization", "efficiency"])
def test_analyze_commands_report_bad_config(tmp_path: Path, command: str) -> None:
    """Every `hica analyze` command names a missing config file and an unknown key."""
    from typer.testing import CliRunner

    from hica.cli import app

    missing = tmp_path / "nope.yaml"
    res = CliRunner().invoke(
        app, ["analyze", command, "--config", str(missing), "--out", str(tmp_path / "o")]
    )
    assert isinstance(res.exception, HicaError) and str(missing) in str(res.exception)
    bad = _write(tmp_path, {"dataset": "busi", "no_such_key": 1})
    res = CliRunner().invoke(app, ["analyze", command, "--config", str(bad), "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, HicaError)
    assert str(bad) in str(res.exception) and "no_such_key" in str(res.exception)
