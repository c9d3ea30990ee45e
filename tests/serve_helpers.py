"""Shared by the ``hica serve`` tests: one tiny trained model per test process, app settings, BUSI images."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from hica.serve import Limits, ServeSettings

# Browser jobs train at 64 px with few head steps (seconds on 2 CPU cores); the page sets K and steps.
TINY_TRAIN_BASE = {
    "encoder": {"name": "default", "args": {"image_size": 64}},
    "method": "hica",
    "method_args": {"head_steps": 3, "batch_size": 3},
}
TEST_LIMITS = Limits(max_file_bytes=1_500_000, max_files=6, max_pixels=1_000_000, max_steps=2000, max_jobs=2)
_BUILT: dict[str, Path] = {}


def busi_image(data_root: Path, cls: str = "benign", i: int = 1, mask: bool = False) -> Path:
    return data_root / "busi" / "Dataset_BUSI_with_GT" / cls / f"{cls} ({i}){'_mask' if mask else ''}.png"


def tiny_model(data_root: Path) -> Path:
    """A HiCA stage-2 model (K=1, 2 steps, 64 px) on real BUSI, trained once per process; its folder."""
    if "tiny" not in _BUILT:
        from hica.config import Stage2Config
        from hica.jobs.finetune import run_stage2

        tmp = Path(tempfile.mkdtemp(prefix="hica-serve-model-"))
        atexit.register(shutil.rmtree, tmp, True)
        cfg = Stage2Config.model_validate(
            {
                "name": "tiny",
                "encoder": {"name": "default", "args": {"image_size": 64}},
                "dataset": "busi",
                "data_root": str(data_root),
                "k": 1,
                "seed": 1,
                "method_args": {"steps": 2, "head_steps": 3, "batch_size": 3},
                "evaluate_test": False,
                "device": "cpu",
                "precision": "fp32",
            }
        )
        run_stage2(cfg, tmp / "run", resume=False)
        _BUILT["tiny"] = tmp / "run" / "model"
    return _BUILT["tiny"]


def make_settings(root: Path, data_root: Path, models: tuple[str, ...] = ("tiny",)) -> ServeSettings:
    """Models folder ``root/models`` holding copies of the tiny model under ``models``; work ``root/work``."""
    src = tiny_model(data_root)
    for name in models:
        shutil.copytree(src, root / "models" / name)
    return ServeSettings.make(
        root / "models",
        root / "work",
        device="cpu",
        precision="fp32",
        limits=TEST_LIMITS,
        train_base=dict(TINY_TRAIN_BASE),
    )
