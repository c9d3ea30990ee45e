"""A training job's worker process: ``python -m hica.serve.worker JOB_DIR``.

Reads ``job.json``, runs HiCA stage 2 (:func:`hica.jobs.finetune.run_stage2`) on the job's manifest,
then installs the model into the models folder (copied to a hidden temporary folder, then renamed, so the
Models list never shows half a model) with its class text and ``training.json``. ``status.json`` says
where it is; the server reads it together with the training log.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hica.errors import HicaError
from hica.io import write_json
from hica.serve.jobs import read_json
from hica.serve.models import DESCRIPTORS_FILE

LIMITS = [
    "A few-shot research model trained in the browser: not a medical device, not validated for clinical use.",
    "Validation metrics come from a handful of uploaded images (they also chose the text/image blend α): "
    "expect wide uncertainty.",
]


def _status(job_dir: Path, **fields: Any) -> None:
    write_json(
        job_dir / "status.json", {**read_json(job_dir / "status.json"), **fields, "updated": time.time()}
    )


def adopt_card(model_dir: Path, name: str, app: dict[str, Any], limits: list[str]) -> None:
    """Rename the card ``run_stage2`` wrote to the installed model and add what the app knows (its uploads,
    which split scored what, the app's limits); the weights are untouched, so the card's hashes still hold."""
    from hica.modelcard import read_model_card, write_model_card

    card = read_model_card(model_dir)
    if card is None:
        raise HicaError(f"the trained model in {model_dir} has no model card")
    card["name"] = name
    lineage = (card.get("encoder") or {}).get("lineage") or []
    if lineage:
        lineage[-1].update(name=name, path=f"<models>/{name}")
    card["app"] = app
    card["limits"] = [*(card.get("limits") or []), *({"text": t, "source": None} for t in limits)]
    write_model_card(model_dir, card)


def install_model(job_dir: Path, job: dict[str, Any], summary: dict[str, Any]) -> Path:
    """Copy ``run/model`` into ``MODELS/<name>`` atomically (hidden temporary copy, then one rename)."""
    models = Path(job["models_dir"])
    name = job["model"]
    target = (models / name).resolve()
    if target.parent != models.resolve():
        raise HicaError(f"model name {name!r} leaves the models folder")
    tmp = models / f".{name}.{job['id']}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(job_dir / "run" / "model", tmp)
    shutil.copy2(job_dir / DESCRIPTORS_FILE, tmp / DESCRIPTORS_FILE)
    app = {
        "trained_in": "hica serve (browser upload)",
        "job": job["id"],
        "training_data": job["training_data"],
        "steps": job["steps"],
        "descriptors": job["descriptors_source"],
        "metric_notes": [
            f"here 'test' is the {job['n_validation']} held-out uploaded image(s) (every upload after the "
            "first K per class); 'validation' is min(K,4) of them per class, which also chose α",
        ],
    }
    adopt_card(tmp, name, app, LIMITS)
    if target.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise HicaError(f"model {name!r} appeared in the models folder while training; nothing was replaced")
    tmp.rename(target)
    return target


def run_job(job_dir: Path) -> int:
    """Run one job to its end; returns the exit code (0 done, 1 failed)."""
    from hica.config import Stage2Config
    from hica.jobs.finetune import run_stage2

    job = read_json(job_dir / "job.json")
    if read_json(job_dir / "status.json").get("state") in ("done", "failed", "cancelled"):
        return 1  # cancelled before this worker got going
    _status(job_dir, state="running", phase="loading", message="loading the encoder and the uploads")
    try:
        cfg = Stage2Config.model_validate(job["config"])
        _status(job_dir, phase="training", message="HiCA stage 2")
        summary = run_stage2(cfg, job_dir / "run", resume=False)
        # From here the job finishes: a cancel is refused (409) and SIGTERM waits until the model is in.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        _status(job_dir, phase="installing", message="saving the model")
        install_model(job_dir, job, summary)
    except HicaError as e:
        _status(job_dir, state="failed", message=str(e).replace(str(job_dir), "<job>"), finished=time.time())
        return 1
    except Exception as e:  # noqa: BLE001 — reported in the page; the traceback goes to worker.log
        traceback.print_exc()
        _status(
            job_dir, state="failed", message=f"internal error: {type(e).__name__}: {e}", finished=time.time()
        )
        return 1
    val = {k: round(float(v), 4) for k, v in (summary.get("test") or {}).items()}
    _status(job_dir, state="done", phase="done", message="model ready", metrics=val, finished=time.time())
    return 0


if __name__ == "__main__":
    sys.exit(run_job(Path(sys.argv[1])))
