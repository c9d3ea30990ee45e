"""The Fabric training loop: learning, exact kill-and-resume, DDP equivalence, safe checkpoints.

This file is also a worker script (``python tests/test_train_engine.py kill|ddp RUN_DIR [OUT]``) for the
tests that need a separate process: one killed with SIGKILL, and two launched by ``torchrun``.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from hica.errors import HicaError
from hica.train import TrainConfig, find_latest, load_checkpoint, save_checkpoint, train

HERE = Path(__file__).resolve()
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def make_data(n: int = 64, d: int = 8, classes: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = (x @ torch.randn(d, classes, generator=g)).argmax(1)
    return TensorDataset(x, y)


def make_model(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3))


def loss_fn(model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean()}


def resume_cfg() -> TrainConfig:
    return TrainConfig(
        max_steps=20, batch_size=8, grad_accum=2, lr=1e-2, warmup_steps=3, checkpoint_every=5,
        log_every=1, devices=1, accelerator="cpu", progress=False,
    )  # fmt: skip


def ddp_cfg(batch_size: int, devices: int) -> TrainConfig:
    return TrainConfig(
        max_steps=6, batch_size=batch_size, lr=1e-2, checkpoint_every=100, log_every=1, devices=devices,
        strategy="ddp" if devices > 1 else "auto", accelerator="cpu", progress=False,
    )  # fmt: skip


def _states_equal(a: nn.Module, b: nn.Module, atol: float = 0.0) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=atol, rtol=0) for k in sa)


def _log_rows(run_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run_dir / "log.csv").read_text().splitlines()))


def test_tiny_model_learns(tmp_path: Path) -> None:
    cfg = TrainConfig(max_steps=40, batch_size=16, lr=1e-2, log_every=5, checkpoint_every=20, devices=1,
                      accelerator="cpu", progress=False)  # fmt: skip
    out = train(make_model(0.1), loss_fn, make_data(), cfg, tmp_path)
    losses = out["losses"]
    assert out["step"] == 40 and len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    rows = _log_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(5, 41, 5))
    assert {"loss", "lr", "acc"} <= set(rows[0])
    assert find_latest(tmp_path).name == "step-00000040"


def test_sigkill_and_resume_matches_uninterrupted(tmp_path: Path) -> None:
    data = make_data()
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, str(HERE), "kill", str(killed)], env=ENV, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert find_latest(killed).name == "step-00000010"
    steps = [int(r["step"]) for r in _log_rows(killed)]
    assert steps == list(range(1, 13))  # steps 11-12 were logged after the last checkpoint

    resumed_model = make_model(0.3)
    out = train(resumed_model, loss_fn, data, resume_cfg(), killed)
    assert out["resumed_from"] == 10 and out["step"] == 20

    ref_model = make_model(0.3)
    ref = train(ref_model, loss_fn, data, resume_cfg(), tmp_path / "ref")
    assert _states_equal(resumed_model, ref_model, atol=1e-6)
    assert out["losses"] == pytest.approx(ref["losses"][10:], abs=1e-6)
    steps = [int(r["step"]) for r in _log_rows(killed)]
    assert steps == list(range(1, 21))  # no duplicated rows for steps 11-12
    # Sanity: dropout RNG matters, a run from the same weights with other RNG state diverges.
    assert not _states_equal(make_model(0.3), ref_model, atol=1e-3)


@pytest.mark.skipif(not (BIN / "torchrun").exists(), reason="torchrun not installed")
def test_ddp_two_processes_equal_one_process(tmp_path: Path) -> None:
    out_json = tmp_path / "ddp.json"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(HERE), "ddp",
           str(tmp_path / "ddp"), str(out_json)]  # fmt: skip
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out_json.read_text())

    model = make_model(0.0)
    single = train(model, loss_fn, make_data(), ddp_cfg(batch_size=8, devices=1), tmp_path / "one")
    assert len(ddp["losses"]) == 6
    assert ddp["losses"] == pytest.approx(single["losses"], abs=1e-5)
    assert ddp["losses"][0] != ddp["losses"][-1]
    ddp_model = make_model(0.0)
    load_checkpoint(tmp_path / "ddp", ddp_model)
    assert _states_equal(ddp_model, model, atol=1e-5)


def test_checkpoint_mismatch_and_no_pickle(tmp_path: Path) -> None:
    from safetensors import safe_open

    cfg = TrainConfig(max_steps=3, batch_size=8, checkpoint_every=3, devices=1, accelerator="cpu",
                      progress=False)  # fmt: skip
    classes = ["benign", "malignant", "normal"]
    train(make_model(), loss_fn, make_data(), cfg, tmp_path, extra={"classes": classes})
    ckpt = find_latest(tmp_path)
    assert ckpt is not None

    with pytest.raises(HicaError, match=r"state\.json.*classes"):
        load_checkpoint(ckpt, make_model(), expect={"classes": ["benign", "malignant"]})
    with pytest.raises(HicaError, match="classes"):
        train(make_model(), loss_fn, make_data(), cfg, tmp_path, extra={"classes": classes[::-1]})

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".pkl", ".pickle")]
    for name in ("model.safetensors", "optimizer.safetensors"):
        with safe_open(str(ckpt / name), framework="pt") as f:
            assert len(list(f.keys())) > 0
        assert (ckpt / name).read_bytes()[:1] != b"\x80"  # not a pickle protocol header
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 3 and state["extra"]["classes"] == classes

    # Round trip restores weights, optimizer moments and the scheduler.
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    info = load_checkpoint(ckpt, model, opt, sched, expect={"classes": classes})
    assert info["step"] == 3 and sched.last_epoch == 3
    assert all(int(s["step"]) == 3 for s in opt.state.values()) and len(opt.state) == 4


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    model = make_model()
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, model, opt, None, 5, {"classes": ["a"]})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    real = safetensors.torch.save_file

    def fail_on_optimizer(tensors, filename, metadata=None):
        if filename.endswith("optimizer.safetensors"):
            raise OSError("disk full")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", fail_on_optimizer)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model, opt, None, 10, {"classes": ["a"]})
    monkeypatch.undo()

    assert find_latest(tmp_path).name == "step-00000005"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000005"]
    fresh = make_model()
    assert load_checkpoint(tmp_path, fresh, expect={"classes": ["a"]})["step"] == 5
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())


def _worker(argv: list[str]) -> None:
    mode, run_dir = argv[0], Path(argv[1])
    if mode == "kill":
        calls = 0

        def killing_loss(model, batch):
            nonlocal calls
            if calls == 12 * 2:  # 12 steps of grad_accum=2 done: die without any cleanup
                os.kill(os.getpid(), signal.SIGKILL)
            calls += 1
            return loss_fn(model, batch)

        train(make_model(0.3), killing_loss, make_data(), resume_cfg(), run_dir)
    elif mode == "ddp":
        out = train(make_model(0.0), loss_fn, make_data(), ddp_cfg(batch_size=4, devices=2), run_dir)
        if int(os.environ.get("RANK", "0")) == 0:
            Path(argv[2]).write_text(json.dumps({"losses": out["losses"]}))
        if torch.distributed.is_initialized():  # orderly gloo teardown: no rank exits mid-collective
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1:])
