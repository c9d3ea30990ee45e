"""Same command, config, seed and machine → bit-identical weights, predictions and metrics (issue 16).

The stage-2 fit runs at the fixed fitting thread count (``$HICA_FIT_THREADS``, default 1) with torch's
deterministic algorithms, whatever the caller's thread count: here the caller uses 2 threads, which
before this change gave different weights on every run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from hica.config import Stage2Config
from hica.errors import HicaError
from hica.runtime import deterministic, fit_threads


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.suffix == ".safetensors"
    }


@pytest.fixture
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def test_stage2_fit_twice_gives_byte_identical_weights(data_root: Path, tmp_path: Path, two_threads) -> None:
    from hica.jobs.finetune import run_stage2

    cfg = Stage2Config.model_validate(
        {
            "encoder": {"name": "default"},
            "dataset": "busi",
            "k": 4,
            "seed": 3,
            # A few real steps of both phases on augmented 224-px images with lesion-mask ROIs. At batch
            # 12 (not at batch 4-6), two unpinned runs with 2 threads already differ after 3 steps.
            "method_args": {"steps": 3, "head_steps": 5, "batch_size": 12, "freeze_stages": 0},
            "evaluate_test": False,
            "device": "cpu",
            "precision": "bf16",
            "data_root": str(data_root),
        }
    )
    runs = [run_stage2(cfg, tmp_path / f"run{i}", resume=False) for i in range(2)]
    assert torch.get_num_threads() == 2  # the caller's setting is restored after fitting
    a, b = (_digest(tmp_path / f"run{i}" / "model") for i in range(2))
    assert set(a) == {"encoder.safetensors", "classifier.safetensors"}
    assert a == b
    assert runs[0]["selected"] == runs[1]["selected"]
    logs = [(tmp_path / f"run{i}" / "train" / "log.csv").read_text() for i in range(2)]
    assert logs[0] == logs[1] and logs[0].count("\n") > 1  # the per-step losses match too


def test_deterministic_scope_sets_and_restores(monkeypatch: pytest.MonkeyPatch, two_threads) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == 2
    assert torch.are_deterministic_algorithms_enabled() == before
    monkeypatch.setenv("HICA_FIT_THREADS", "3")
    assert fit_threads() == 3
    with deterministic():
        assert torch.get_num_threads() == 3
    for bad in ("0", "-2", "two", ""):
        monkeypatch.setenv("HICA_FIT_THREADS", bad)
        with pytest.raises(HicaError, match="HICA_FIT_THREADS"):
            fit_threads()
