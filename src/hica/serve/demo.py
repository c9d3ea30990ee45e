"""The demo model (``hica serve --demo``) and the base config of browser jobs (``--train-config``)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from hica.errors import HicaError
from hica.serve.models import _model_dir
from hica.serve.safety import check_name
from hica.serve.settings import ServeSettings
from hica.serve.worker import adopt_card

DEMO_LIMITS = [
    "Demo model: HiCA stage 2 on a few BUSI images; a research model, not a medical device.",
    "Trained on breast ultrasound only (benign / malignant / normal); other images get meaningless classes.",
]
_JOB_KEYS = ("name", "dataset", "k", "seed", "evaluate_test", "data_root")


def read_train_base(path: str | Path) -> dict[str, Any]:
    """A stage-2 YAML as the base of browser jobs: encoder, method and method_args (the rest is per job)."""
    from hica.config import Stage2Config, _read_yaml

    raw = _read_yaml(path)
    raw.setdefault("dataset", "placeholder")
    try:
        Stage2Config.model_validate(raw)
    except ValueError as e:
        raise HicaError(f"{path}: invalid stage-2 config: {e}") from e
    return {k: v for k, v in raw.items() if k not in _JOB_KEYS}


def ensure_demo_model(
    settings: ServeSettings, config: str | Path, data_root: str | None, echo: Any = print
) -> Path:
    """Train the demo model of ``config`` (a stage-2 YAML; its ``name`` names the model) unless it exists."""
    from hica.config import Stage2Config, load_model_config
    from hica.jobs.finetune import run_stage2

    cfg = load_model_config(
        Stage2Config,
        config,
        {"data_root": data_root, "device": settings.device, "precision": settings.precision},
    )
    name = check_name(cfg.name, "demo model name (the config's name)")
    target = settings.models_dir / name
    if _model_dir(target) is not None:
        echo(f"demo model {name}: found in {target}")
        return target
    echo(f"demo model {name}: training HiCA stage 2 on {cfg.dataset}, K={cfg.k} (first start only) …")
    t0 = time.perf_counter()
    run = settings.work_dir / "demo" / name
    run_stage2(cfg, run, resume=False)
    tmp = settings.models_dir / f".{name}.demo.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run / "model", tmp)
    app = {"trained_in": "hica serve --demo (first start)", "config": str(config)}
    adopt_card(tmp, name, app, DEMO_LIMITS)
    tmp.rename(target)
    echo(f"demo model {name}: trained in {time.perf_counter() - t0:.0f} s → {target}")
    return target
