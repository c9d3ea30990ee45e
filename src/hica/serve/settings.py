"""What a ``hica serve`` app is allowed to do: its folders, upload limits, device and training base config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

# The few-shot settings a browser training job starts from (HiCA stage 2 on the embedded default encoder, as
# configs/stage2_busi.yaml); the page sets K, steps and seed. ``--train-config`` replaces it.
DEFAULT_TRAIN_BASE: dict[str, Any] = {
    "encoder": {"name": "default"},
    "method": "hica",
    "method_args": {"freeze_stages": 0},
}


@dataclass(frozen=True)
class Limits:
    """Upload limits; every refusal names the limit and the value that broke it."""

    max_file_bytes: int = 20 * 1024 * 1024
    max_files: int = 64
    max_pixels: int = 40_000_000
    max_steps: int = 1000
    max_jobs: int = 2  # training jobs running at once


@dataclass(frozen=True)
class ServeSettings:
    """Folders (nothing outside them is read or written), limits, device and the training base config."""

    models_dir: Path
    work_dir: Path
    limits: Limits = field(default_factory=Limits)
    device: str = "auto"
    precision: str = "auto"
    train_base: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TRAIN_BASE))

    @classmethod
    def make(cls, models_dir: str | Path, work_dir: str | Path, **kw: Any) -> ServeSettings:
        """Create both folders and resolve them to absolute paths."""
        from hica.errors import HicaError

        m, w = Path(models_dir).expanduser(), Path(work_dir).expanduser()
        for folder, what in ((m, "--models"), (w, "--work")):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                why = "it is a file" if isinstance(e, FileExistsError) else e.strerror
                raise HicaError(
                    f"{what} {folder}: cannot use it as a folder ({why}); give a folder path"
                ) from e
        return cls(models_dir=m.resolve(), work_dir=w.resolve(), **kw)
