"""The ASGI app: JSON API, the three pages (Predict, Train, Models) and their static files."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
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
    max_body = lim.max_files * lim.max_file_bytes + 2 * 1024 * 1024

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body:
            return JSONResponse(
                {
                    "detail": f"request of {int(length):,} bytes is over the limit of {max_body:,} bytes "
                    f"({lim.max_files} files of at most {lim.max_file_bytes:,} bytes)"
                },
                status_code=413,
            )
        return await call_next(request)

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
