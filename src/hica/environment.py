"""Where a run ran and with which code: CPU, cores, threads, GPU, library versions, git commit."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from hica.runtime import fit_threads


def git_state() -> tuple[str | None, bool | None]:
    """(commit, clean) of the git tree holding this hica source; (None, None) outside a git tree."""
    git = shutil.which("git")
    if git is None:
        return None, None
    where = Path(__file__).resolve().parent

    def run(*args: str) -> str | None:
        try:
            r = subprocess.run(
                [git, "-C", str(where), *args], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout if r.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = run("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), (None if status is None else status.strip() == "")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine_info(device: torch.device, precision: str) -> dict[str, Any]:
    """Where a run ran: CPU model, cores, GPU, library versions, and the code (git commit, clean tree)."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "fit_threads": fit_threads(),  # torch threads while fitting (results depend on it)
        "device": str(device),
        "precision": precision,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["git_commit"], info["git_clean"] = git_state()  # None outside a git checkout
    return info
