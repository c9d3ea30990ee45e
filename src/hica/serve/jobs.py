"""Few-shot training jobs: one folder each under ``WORK/jobs/<id>/``, run by a worker subprocess.

A job folder holds ``job.json`` (what to train), the uploads and ``manifest.csv`` under ``data/``, the
class text ``descriptors.yaml``, the worker's ``status.json`` and ``worker.log``, and the stage-2 run folder
``run/``. Progress is read from the files (``status.json`` and the training log ``run/train/log.csv``), so a
page reload, and a server restart while the worker keeps running, lose nothing. Cancelling stops the
worker's whole process group.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from hica.io import write_json
from hica.serve.safety import UploadError, check_job_id, check_name, inside
from hica.serve.settings import ServeSettings

FINAL = ("done", "failed", "cancelled")
ACTIVE = ("preparing", "queued", "running")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _alive(pid: int | None, job_dir: Path) -> bool:
    """Whether ``pid`` still runs this job's worker (checked by its command line, not just the pid)."""
    if not pid:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "hica.serve.worker" in cmd and str(job_dir) in cmd


def _log_step(job_dir: Path) -> int:
    """The last step in the stage-2 training log (0 before training logs anything)."""
    log = job_dir / "run" / "train" / "log.csv"
    try:
        rows = list(csv.DictReader(log.open(newline="", encoding="utf-8")))
    except OSError:
        return 0
    for r in reversed(rows):
        try:
            return int(r.get("step") or 0)
        except ValueError:
            continue
    return 0


class JobManager:
    """Creates, starts, reports and cancels training jobs; refuses a second job for a model name."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.root = settings.work_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._recover()

    # -- folders and records -------------------------------------------------------------------------------
    def dir(self, job_id: str) -> Path:
        d = inside(self.root, check_job_id(job_id))
        if not (d / "job.json").is_file():
            raise UploadError(f"unknown job {job_id!r}", 404)
        return d

    def _ids(self) -> list[str]:
        return sorted(
            (p.name for p in self.root.iterdir() if (p / "job.json").is_file()),
            key=lambda i: read_json(self.root / i / "job.json").get("created", 0),
        )

    def _set_status(self, d: Path, **fields: Any) -> None:
        write_json(d / "status.json", {**read_json(d / "status.json"), **fields, "updated": time.time()})

    def _recover(self) -> None:
        """Jobs left active by a previous server: still running (the worker outlives the server) or failed."""
        for job_id in self._ids():
            d = self.root / job_id
            st = read_json(d / "status.json")
            if st.get("state") in ACTIVE and not _alive(read_json(d / "job.json").get("pid"), d):
                self._set_status(
                    d,
                    state="failed",
                    message="interrupted: the server stopped while this job ran",
                    finished=time.time(),
                )

    # -- lifecycle ------------------------------------------------------------------------------------------
    def reserve(self, model: str, models_exist: Any) -> tuple[str, Path]:
        """A new job folder for ``model``; 409 when the model exists or a job for it is active."""
        check_name(model)
        with self._lock:
            if models_exist(model):
                raise UploadError(f"model {model!r} already exists; choose another name", 409)
            running = 0
            for job_id in self._ids():
                st = self.status(job_id)
                if st["state"] in ACTIVE:
                    running += 1
                    if st["model"] == model:
                        raise UploadError(
                            f"a training job for model {model!r} is already {st['state']} (job {job_id}); "
                            "wait for it or cancel it",
                            409,
                        )
            if running >= self.settings.limits.max_jobs:
                raise UploadError(
                    f"{running} training job(s) are running, the limit is {self.settings.limits.max_jobs}; "
                    "wait for one to finish or cancel it",
                    429,
                )
            job_id = uuid.uuid4().hex[:12]
            d = self.root / job_id
            (d / "data").mkdir(parents=True)
            write_json(d / "job.json", {"id": job_id, "model": model, "created": time.time()})
            self._set_status(d, state="preparing", phase="receiving uploads", message="")
        return job_id, d

    def discard(self, job_id: str, message: str) -> None:
        """A reserved job whose uploads were refused: marked failed (unless already cancelled), so the name
        is free again."""
        with self._lock:
            if read_json(self.root / job_id / "status.json").get("state") not in FINAL:
                self._set_status(self.root / job_id, state="failed", message=message, finished=time.time())

    def start(self, job_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Write the job record and start its worker in a new process group."""
        d = self.dir(job_id)
        with self._lock:
            st = read_json(d / "status.json")
            if st.get("state") != "preparing":  # cancelled (or failed) while its uploads were received
                raise UploadError(
                    f"job {job_id} was {st.get('state')} before it started; nothing was trained", 409
                )
            job = {**read_json(d / "job.json"), **record, "models_dir": str(self.settings.models_dir)}
            write_json(d / "job.json", job)
            log = (d / "worker.log").open("ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "hica.serve.worker", str(d)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(d),
            )
            log.close()
            self._procs[job_id] = proc
            write_json(d / "job.json", {**job, "pid": proc.pid})
            self._set_status(d, state="queued", phase="starting the worker", started=time.time())
        return self.status(job_id)

    def status(self, job_id: str) -> dict[str, Any]:
        """State, phase, progress in [0, 1], message and (when done) the model's validation metrics."""
        d = self.dir(job_id)
        job, st = read_json(d / "job.json"), read_json(d / "status.json")
        state = st.get("state", "queued")
        proc = self._procs.get(job_id)
        if state in ("queued", "running") and (proc is not None or job.get("pid")):
            # Only a job whose worker was started can be found dead (not one still being started).
            exited = proc.poll() is not None if proc is not None else not _alive(job.get("pid"), d)
            if exited:
                st = read_json(d / "status.json")  # the worker may have finished just now
                state = st.get("state", state)
                if state not in FINAL:
                    code = proc.returncode if proc is not None else None
                    self._set_status(
                        d,
                        state="failed",
                        message=f"the training worker stopped (exit code {code}); see the job's worker.log",
                        finished=time.time(),
                    )
                    st, state = read_json(d / "status.json"), "failed"
        steps = int(job.get("steps") or 1)
        step = min(_log_step(d), steps)
        phase = st.get("phase", "")
        if state == "done":
            progress = 1.0
        elif state == "running" and phase == "training":
            progress = 0.1 + 0.8 * step / steps
            if step >= steps:
                phase = "evaluating and saving"
        else:
            progress = {"loading": 0.05, "installing": 0.95}.get(phase, 0.0)
            if state in FINAL:
                progress = 0.1 + 0.8 * step / steps if state != "done" else 1.0
        return {
            "id": job_id,
            "model": job.get("model"),
            "state": state,
            "phase": phase,
            "message": st.get("message", ""),
            "progress": round(progress, 3),
            "step": step,
            "steps": steps,
            "k": job.get("k"),
            "classes": job.get("classes"),
            "created": job.get("created"),
            "started": st.get("started"),
            "finished": st.get("finished"),
            "metrics": st.get("metrics"),
        }

    def list(self) -> list[dict[str, Any]]:
        return [self.status(i) for i in self._ids()]

    def cancel(self, job_id: str, message: str = "cancelled by the user") -> dict[str, Any]:
        """Stop an active job's worker (SIGTERM to its process group, SIGKILL after 5 s); 409 if finished or
        installing its model (then it is about to be done)."""
        d = self.dir(job_id)
        with self._lock:
            st = self.status(job_id)
            if st["state"] in FINAL:
                raise UploadError(f"job {job_id} is already {st['state']}; nothing to cancel", 409)
            if st["phase"] == "installing":
                raise UploadError(f"job {job_id} is saving its model; it is too late to cancel", 409)
            pid = read_json(d / "job.json").get("pid")
            proc = self._procs.pop(job_id, None)
            if pid and (proc is not None and proc.poll() is None or _alive(pid, d)):
                try:
                    os.killpg(pid, signal.SIGTERM)
                    if proc is not None:
                        try:
                            proc.wait(5)
                        except subprocess.TimeoutExpired:
                            os.killpg(pid, signal.SIGKILL)
                            proc.wait(5)
                except ProcessLookupError:
                    pass
            if read_json(d / "status.json").get("state") in FINAL:  # it finished while being stopped
                return self.status(job_id)
            self._set_status(d, state="cancelled", message=message, finished=time.time())
        _remove_partial(self.settings.models_dir, st["model"], job_id)
        return self.status(job_id)

    def shutdown(self) -> None:
        """Stop every running worker (the server is exiting)."""
        for job_id in list(self._procs):
            try:
                if self.status(job_id)["state"] in ACTIVE:
                    self.cancel(job_id, "stopped: the server shut down while it ran")
            except UploadError:
                pass


def _remove_partial(models_dir: Path, model: str | None, job_id: str) -> None:
    """A half-copied model of a stopped job (``MODELS/.<model>.<job>.tmp``)."""
    import shutil

    if model:
        shutil.rmtree(models_dir / f".{model}.{job_id}.tmp", ignore_errors=True)
