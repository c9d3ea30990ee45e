"""GPU smoke check of the training engine (run on a CUDA machine): bf16-mixed training, checkpoints,
a crash after step 25, resume to step 40, compared with an uninterrupted run.

Usage: python scripts/gpu_smoke.py OUT_DIR [DROPOUT]   (writes OUT_DIR/gpu_smoke_p<DROPOUT>.json)
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hica.train import TrainConfig, train  # noqa: E402


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g)
    return TensorDataset(x, (x @ torch.randn(64, 5, generator=g)).argmax(1))


DROPOUT = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1


def model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Dropout(DROPOUT), nn.Linear(256, 5))


def loss_fn(m: nn.Module, batch):
    x, y = batch
    logits = m(x)
    return F.cross_entropy(logits.float(), y), {"acc": (logits.argmax(1) == y).float().mean()}


def cfg(steps: int) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=32, lr=3e-3, checkpoint_every=10, log_every=5,
                       devices=1, accelerator="cuda", precision="auto", progress=False)  # fmt: skip


def main(out: Path) -> None:
    res: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "dropout": DROPOUT}
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        t = time.perf_counter()
        m_full = model()
        full = train(m_full, loss_fn, data(), cfg(40), Path(a))
        res["seconds_40_steps"] = round(time.perf_counter() - t, 2)
        res["loss_first5"] = sum(full["losses"][:5]) / 5
        res["loss_last5"] = sum(full["losses"][-5:]) / 5
        calls = {"n": 0}

        def dying_loss(m: nn.Module, batch):  # simulated crash after the step-20 checkpoint
            calls["n"] += 1
            if calls["n"] > 25:
                raise KeyboardInterrupt
            return loss_fn(m, batch)

        with contextlib.suppress(KeyboardInterrupt):
            train(model(), dying_loss, data(), cfg(40), Path(b))
        m_res = model()
        resumed = train(m_res, loss_fn, data(), cfg(40), Path(b))
        res["resumed_from"] = str(resumed.get("resumed_from"))
        sa, sb = m_full.state_dict(), m_res.state_dict()
        res["resume_max_abs_weight_diff"] = max(
            (sa[k].float() - sb[k].float()).abs().max().item() for k in sa
        )
        res["resume_loss_diff_last"] = abs(full["losses"][-1] - resumed["losses"][-1])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu_smoke_p{DROPOUT}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
