"""The ASGI app: JSON API, the three pages (Predict, Train, Models) and their static files."""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from hica.errors import HicaError
from hica.serve.api import router
from hica.serve.jobs import JobManager
from hica.serve.models import ModelRegistry
from hica.serve.safety import UploadError
from hica.serve.settings import ServeSettings

log = logging.getLogger("hica.serve")
PAGES = {"predict": "predict", "train": "train", "models": "models", "api-docs": "api"}


class _TooLarge(HTTPException):
    """Raised inside the body stream; FastAPI passes HTTPExceptions through its body parsing unchanged."""


class BodyLimit:
    """ASGI middleware: a request body over ``max_body`` bytes is refused with 413, by its Content-Length
    before anything is read, and while it streams when it has none (chunked), so no upload larger than the
    limit is ever spooled to disk."""

    def __init__(self, app: Any, max_body: int, limits: Any) -> None:
        self.app, self.max_body, self.limits = app, max_body, limits

    def _detail(self, size: str) -> str:
        lim = self.limits
        return (
            f"request of {size} bytes is over the limit of {self.max_body:,} bytes "
            f"({lim.max_files} files of at most {lim.max_file_bytes:,} bytes)"
        )

    async def _refuse(self, send: Any, size: str) -> None:
        body = json.dumps({"detail": self._detail(size)}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_body:
            return await self._refuse(send, f"{int(length):,}")
        received = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _TooLarge(413, self._detail(f"more than {self.max_body:,}"))
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, f"more than {self.max_body:,}")


def _static_dir() -> str:
    return str(resources.files("hica.serve") / "static")


def create_app(settings: ServeSettings) -> FastAPI:
    """A FastAPI app over ``settings.models_dir`` (models) and ``settings.work_dir`` (jobs, request files)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.jobs.shutdown()

    app = FastAPI(
        title="hica serve",
        description="Classify, explain and train few-shot HiCA models. Pages: /predict, /train, /models.",
        version="1",
        lifespan=lifespan,
        # Swagger UI / ReDoc load their scripts from a CDN, which a closed network cannot reach: the API page
        # (/api-docs) renders /openapi.json with the app's own files instead.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.models = ModelRegistry(settings)
    app.state.jobs = JobManager(settings)
    lim = settings.limits
    app.add_middleware(BodyLimit, max_body=lim.max_files * lim.max_file_bytes + 2 * 1024 * 1024, limits=lim)

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, e: UploadError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=e.status)

    @app.exception_handler(HicaError)
    async def hica_error(_: Request, e: HicaError) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'request'}: {err['msg']}" for err in e.errors()
        ]
        return JSONResponse({"detail": "; ".join(parts)}, status_code=422)

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/predict")

    def page(name: str):
        def handler() -> Response:
            html = (resources.files("hica.serve") / "static" / f"{name}.html").read_text(encoding="utf-8")
            return HTMLResponse(html)

        return handler

    for route, name in PAGES.items():
        app.get(f"/{route}", include_in_schema=False)(page(name))
    return app
