"""The JSON API behind the pages (``/api/...``); its OpenAPI schema is served at ``/openapi.json``."""

from __future__ import annotations

import shutil
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from hica.serve.safety import UploadError, check_name, display_name

router = APIRouter(prefix="/api")


def _state(request: Request) -> Any:
    return request.app.state


@router.get("/health", summary="Server status")
def health(request: Request) -> dict[str, Any]:
    s = _state(request)
    jobs = s.jobs.list()
    return {
        "status": "ok",
        "models": len(s.models.names()),
        "jobs_running": sum(j["state"] in ("queued", "running") for j in jobs),
        "limits": vars(s.settings.limits),
    }


@router.get("/models", summary="Trained models and their cards")
def list_models(request: Request) -> dict[str, Any]:
    reg = _state(request).models
    return {"models": [reg.info(n) for n in reg.names()]}


@router.get("/models/{name}", summary="One model's card")
def get_model(name: str, request: Request) -> dict[str, Any]:
    return _state(request).models.info(name)


@router.get("/descriptors", summary="Bundled descriptor files (class text)")
def list_descriptor_files() -> dict[str, Any]:
    from hica.data.descriptors import list_bundled, load_descriptors

    out = []
    for i in list_bundled():
        d = load_descriptors(i)
        out.append({"id": i, "dataset": d.dataset, "modality": d.modality, "classes": d.classes})
    return {"descriptors": out}


@router.get("/descriptors/{desc_id}", summary="One bundled descriptor file's classes")
def get_descriptor_file(desc_id: str) -> dict[str, Any]:
    from hica.data.descriptors import list_bundled, load_descriptors

    if desc_id not in list_bundled():
        raise UploadError(
            f"no bundled descriptor file {desc_id!r}; bundled: {', '.join(list_bundled())}", 404
        )
    d = load_descriptors(desc_id)
    return {
        "id": desc_id,
        "dataset": d.dataset,
        "modality": d.modality,
        "classes": [{"key": c, "name": d.name(c)} for c in d.classes],
    }


async def _descriptor_upload(file: UploadFile | None) -> tuple[str, str] | None:
    """(text, display name) of an uploaded descriptor YAML, or None."""
    from hica.serve.training import MAX_DESCRIPTOR_BYTES

    if file is None or not file.filename:
        return None
    name = display_name(file.filename, 0)
    data = await file.read(MAX_DESCRIPTOR_BYTES + 1)
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise UploadError(f"descriptor file {name} is over {MAX_DESCRIPTOR_BYTES:,} bytes", 413)
    try:
        return data.decode("utf-8"), name
    except UnicodeDecodeError as e:
        raise UploadError(f"descriptor file {name} is not UTF-8 text (a YAML file)", 415) from e


@router.post("/descriptors/check", summary="Validate an uploaded descriptor YAML and list its classes")
async def check_descriptor_file(
    descriptors_file: Annotated[UploadFile, File(description="Descriptor YAML (see docs/descriptors.md)")],
) -> dict[str, Any]:
    from hica.serve.training import load_class_text

    up = await _descriptor_upload(descriptors_file)
    if up is None:
        raise UploadError("no descriptor file uploaded", 400)
    d = await run_in_threadpool(load_class_text, None, *up)
    return {
        "file": up[1],
        "dataset": d.dataset,
        "classes": [{"key": c, "name": d.name(c)} for c in d.classes],
    }


@router.post("/predict", summary="Classify (and explain) uploaded images with a model")
async def predict(
    request: Request,
    files: Annotated[list[UploadFile], File(description="PNG, JPEG or DICOM images")],
    model: Annotated[str, Form(description="Model name (see /api/models)")],
    zero_shot: Annotated[bool, Form(description="Classify the descriptor file's classes from text")] = False,
    descriptors: Annotated[str | None, Form(description="Bundled descriptor id (zero-shot)")] = None,
    descriptors_file: Annotated[UploadFile | None, File(description="Descriptor YAML (zero-shot)")] = None,
    explain: Annotated[bool, Form(description="Region–text heatmaps and top phrases per class")] = True,
    top: Annotated[int, Form(ge=1, le=10, description="Top phrases per class")] = 3,
) -> dict[str, Any]:
    from hica.serve.inference import classify_uploads, results_csv, zero_shot_view
    from hica.serve.training import load_class_text
    from hica.serve.uploads import check_count, save_upload

    s = _state(request)
    limits = s.settings.limits
    check_name(model)
    check_count(len(files), limits)
    s.models.path(model)  # 404 before reading any upload
    desc_up = await _descriptor_upload(descriptors_file)
    if (descriptors or desc_up) and not zero_shot:
        raise UploadError(
            "a descriptor file is only used with zero-shot; set zero_shot (tick Zero-shot)", 400
        )
    if zero_shot and not (descriptors or desc_up):
        raise UploadError("zero-shot needs a descriptor file: a bundled id or an uploaded YAML", 400)
    folder = s.settings.work_dir / "requests" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    try:
        desc_name = None
        if zero_shot:
            # validates (400 with the reason); parsing is CPU work, off the event loop
            d = await run_in_threadpool(load_class_text, descriptors, *(desc_up or (None, "")))
            if desc_up:
                from hica.io import write_text

                desc_name = str(write_text(folder / "descriptors.yaml", desc_up[0]))
            else:
                desc_name = descriptors
            del d
        uploads, ordered = [], []  # ordered: one entry per file, a refusal or (later) its result
        for i, f in enumerate(files):
            try:
                uploads.append(await save_upload(f, i, folder, limits, decode=True))
                ordered.append(len(uploads) - 1)
            except UploadError as e:
                ordered.append({"file": display_name(f.filename, i), "error": str(e), "status": e.status})
        if not uploads:
            raise UploadError("; ".join(e["error"] for e in ordered), ordered[0]["status"])

        def work() -> dict[str, Any]:
            pred, lock = s.models.predictor(model)
            with lock:
                view = zero_shot_view(pred, desc_name) if zero_shot else pred
                expl = desc_name if zero_shot else s.models.descriptors_of(model)
                results = classify_uploads(view, uploads, expl, explain, top)
                return {
                    "classes": list(view.classes),
                    "results": results,
                    "explained": bool(explain and expl),
                }

        out = await run_in_threadpool(work)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ordered = [out["results"][r] if isinstance(r, int) else r for r in ordered]
    if not any("probs" in r for r in ordered):
        first = next(r for r in ordered if "error" in r)
        raise UploadError("; ".join(r["error"] for r in ordered if "error" in r), first.get("status", 422))
    return {
        "model": model,
        "zero_shot": zero_shot,
        "descriptors": descriptors or (desc_up[1] if desc_up else None),
        "classes": out["classes"],
        "explained": out["explained"],
        "results": ordered,
        "csv": results_csv(ordered, out["classes"]),
    }


@router.post("/jobs", status_code=202, summary="Start a few-shot training job (HiCA stage 2)")
async def create_job(
    request: Request,
    model: Annotated[str, Form(description="Name of the model to train")],
    classes: Annotated[list[str], Form(description="Class keys of the descriptor file to train")],
    files: Annotated[
        list[UploadFile], File(description="Images: the first K per class train, the rest validate")
    ],
    labels: Annotated[list[str], Form(description="The class of each image, in the order of files")],
    masks: Annotated[
        list[UploadFile] | None, File(description="Optional NAME_mask.png per image NAME")
    ] = None,
    descriptors: Annotated[str | None, Form(description="Bundled descriptor id")] = None,
    descriptors_file: Annotated[UploadFile | None, File(description="Or an uploaded descriptor YAML")] = None,
    k: Annotated[int, Form(description="Shots per class")] = 1,
    steps: Annotated[int, Form(description="Training steps of both towers")] = 30,
    seed: Annotated[int, Form(ge=0, le=2**31 - 1, description="Episode seed")] = 1,
) -> JSONResponse:
    from hica.serve.training import load_class_text, prepare_job

    s = _state(request)
    check_name(model)
    masks = [m for m in (masks or []) if m.filename]
    desc_up = await _descriptor_upload(descriptors_file)
    bundled = None if desc_up else descriptors
    desc = await run_in_threadpool(load_class_text, bundled, *(desc_up or (None, "")))
    source = f"uploaded {desc_up[1]}" if desc_up else f"bundled {descriptors}"
    job_id, job_dir = s.jobs.reserve(model, s.models.exists)
    try:
        record = await prepare_job(
            s.settings, job_dir, desc, source, classes, files, labels, masks, k, steps, seed
        )
    except BaseException as e:  # any failure frees the model name and the job slot
        why = str(e) if isinstance(e, UploadError) else f"internal error: {type(e).__name__}"
        s.jobs.discard(job_id, why)
        shutil.rmtree(job_dir / "data", ignore_errors=True)
        raise
    return JSONResponse(s.jobs.start(job_id, record), status_code=202)


@router.get("/jobs", summary="All training jobs")
def list_jobs(request: Request) -> dict[str, Any]:
    return {"jobs": _state(request).jobs.list()}


@router.get("/jobs/{job_id}", summary="A job's state and progress")
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    return _state(request).jobs.status(job_id)


@router.post("/jobs/{job_id}/cancel", summary="Cancel a running job")
def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    return _state(request).jobs.cancel(job_id)
