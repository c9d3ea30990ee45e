"""``hica serve``: a browser app (FastAPI + uvicorn) to classify, explain and train few-shot HiCA models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hica.serve.settings import DEFAULT_HOST, DEFAULT_PORT, Limits, ServeSettings

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Limits", "ServeSettings", "create_app", "serve"]


def create_app(settings: ServeSettings) -> Any:
    """The ASGI app (imported lazily: FastAPI is only needed to serve)."""
    from hica.serve.app import create_app as make

    return make(settings)


def serve(
    models_dir: str | Path,
    work_dir: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    device: str = "auto",
    precision: str = "auto",
    train_config: str | Path | None = None,
    demo_config: str | Path | None = None,
    data_root: str | None = None,
    limits: Limits | None = None,
    prepare_only: bool = False,
    echo: Any = print,
) -> None:
    """Start the app with uvicorn (blocking). ``demo_config``: train the demo model first if it is missing;
    ``prepare_only``: only that, then return without serving."""
    import tempfile

    import uvicorn

    from hica.serve.demo import ensure_demo_model, read_train_base

    settings = ServeSettings.make(
        models_dir,
        work_dir,
        device=device,
        precision=precision,
        limits=limits or Limits(),
        **({"train_base": read_train_base(train_config)} if train_config else {}),
    )
    # Uploads being received are spooled under the work folder, not the system's temporary folder.
    tmp = settings.work_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    tempfile.tempdir = str(tmp)
    if demo_config:
        ensure_demo_model(settings, demo_config, data_root, echo)
    if prepare_only:
        return
    scope = "this machine only" if host in ("127.0.0.1", "localhost", "::1") else "OTHER MACHINES TOO"
    echo(f"hica serve: http://{host}:{port}/  (bound to {host}: reachable from {scope})")
    echo(f"  models: {settings.models_dir}   work: {settings.work_dir}")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
