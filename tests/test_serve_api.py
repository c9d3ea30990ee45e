"""``hica serve``'s JSON API (FastAPI TestClient) on a tiny real BUSI model: every endpoint and bad input."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_helpers import busi_image, make_settings

from hica.serve import create_app

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def served(data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = make_settings(tmp_path_factory.mktemp("serve"), data_root, ("tiny", "tampered"))
    clf = settings.models_dir / "tampered" / "classifier.safetensors"
    data = bytearray(clf.read_bytes())
    data[-1] ^= 0xFF  # weights changed after training: the card no longer matches
    clf.write_bytes(bytes(data))
    with TestClient(create_app(settings)) as client:
        yield client, settings


def _png(path: Path, name: str | None = None) -> tuple[str, tuple[str, bytes, str]]:
    return ("files", (name or path.name, path.read_bytes(), "image/png"))


def _blank_png(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def test_health_pages_and_openapi(served) -> None:
    client, _ = served
    assert client.get("/api/health").json()["status"] == "ok"
    pages = (("predict", "predict"), ("train", "train"), ("models", "models"), ("api-docs", "api"))
    for route, page in pages:
        r = client.get(f"/{route}")
        assert r.status_code == 200 and f"/static/{page}.js" in r.text
    assert client.get("/", follow_redirects=False).headers["location"] == "/predict"
    assert client.get("/static/common.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/predict", "/api/models", "/api/models/{name}", "/api/jobs", "/api/jobs/{job_id}"):
        assert p in paths
    assert "post" in paths["/api/jobs/{job_id}/cancel"] and "post" in paths["/api/predict"]


def test_models_show_cards_and_refuse_tampered_weights(served, data_root: Path) -> None:
    client, _ = served
    models = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    tiny = models["tiny"]
    assert tiny["classes"] == ["benign", "malignant", "normal"] and tiny["k"] == 1
    assert tiny["card"].startswith("verified") and tiny["roi_source"] == "lesion masks (support set)"
    assert tiny["tta"] == "none"
    assert tiny["encoder"]["lineage"].startswith("default→stage2(")
    assert tiny["metrics"]["validation"]["n"] == 3 and tiny["metrics"]["test"] is None
    assert any("not for clinical" in t for t in [tiny["intended_use"], *tiny["limits"]])
    assert models["tampered"]["card"].startswith("refused") and "does not match" in models["tampered"]["card"]
    r = client.post("/api/predict", data={"model": "tampered"}, files=[_png(busi_image(data_root))])
    assert r.status_code == 409 and "does not match its model card" in r.json()["detail"]
    assert client.get("/api/models/tiny").json()["name"] == "tiny"
    r = client.get("/api/models/nope")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["detail"]
    assert client.get("/api/models/..").status_code in (400, 404)
    assert client.get("/api/models/.hidden").status_code == 400


def test_predict_matches_the_library_and_explains(served, data_root: Path) -> None:
    from hica.predict import Predictor
    from hica.runtime import resolve_device

    client, settings = served
    img = busi_image(data_root, "malignant", 3)
    r = client.post("/api/predict", data={"model": "tiny", "top": "2"}, files=[_png(img)])
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["classes"] == ["benign", "malignant", "normal"] and out["explained"] is True
    res = out["results"][0]
    assert res["file"] == img.name and res["predicted"] in out["classes"]
    assert abs(sum(res["probs"].values()) - 1) < 1e-4
    _, probs, _ = Predictor(settings.models_dir / "tiny", resolve_device("cpu"), "fp32").predict([img])
    assert [res["probs"][c] for c in out["classes"]] == pytest.approx(probs[0].tolist(), abs=1e-4)
    assert [h["class"] for h in res["heatmaps"]] == out["classes"]
    assert all(h["overlay"].startswith("data:image/png;base64,") for h in res["heatmaps"])
    assert all(1 <= len(h["phrases"]) <= 2 for h in res["heatmaps"])
    assert out["csv"].splitlines()[0] == "file,predicted,p_benign,p_malignant,p_normal"
    assert out["csv"].splitlines()[1].startswith(f"{img.name},{res['predicted']},")
    plain = client.post("/api/predict", data={"model": "tiny", "explain": "false"}, files=[_png(img)]).json()
    assert "heatmaps" not in plain["results"][0] and plain["results"][0]["probs"] == res["probs"]
    assert not any((settings.work_dir / "requests").iterdir())  # request files are removed afterwards


def test_predict_zero_shot(served, data_root: Path) -> None:
    client, _ = served
    img = _png(busi_image(data_root))
    r = client.post(
        "/api/predict", data={"model": "tiny", "zero_shot": "true", "descriptors": "busi"}, files=[img]
    )
    assert (
        r.status_code == 200
        and r.json()["zero_shot"] is True
        and len(r.json()["results"][0]["heatmaps"]) == 3
    )
    r = client.post("/api/predict", data={"model": "tiny", "zero_shot": "true"}, files=[img])
    assert r.status_code == 400 and "zero-shot needs a descriptor file" in r.json()["detail"]
    r = client.post("/api/predict", data={"model": "tiny", "descriptors": "busi"}, files=[img])
    assert r.status_code == 400 and "only used with zero-shot" in r.json()["detail"]
    bad = ("descriptors_file", ("mine.yaml", b"classes: [unclosed", "application/yaml"))
    r = client.post("/api/predict", data={"model": "tiny", "zero_shot": "true"}, files=[img, bad])
    assert r.status_code == 400 and "mine.yaml" in r.json()["detail"]


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (lambda p: b"root:x:0:0:root:/root:/bin/bash\n", 415, "not a PNG, JPEG or DICOM image"),
        (lambda p: p.read_bytes()[:300], 422, "x.png: cannot read the image (image file is truncated)"),
        (
            lambda p: b"\x89PNG\r\n\x1a\n" + b"\0" * 1_600_000,
            413,
            "over the limit of 1,500,000 bytes per file",
        ),
        (lambda p: _blank_png(1100, 1000), 413, "over the limit of 1,000,000 pixels per image"),
        (lambda p: b"", 422, "the file is empty"),
    ],
    ids=["wrong-type", "truncated", "oversized", "too-many-pixels", "empty"],
)
def test_predict_refuses_bad_files(served, data_root: Path, make, status: int, message: str) -> None:
    client, _ = served
    body = make(busi_image(data_root))
    r = client.post("/api/predict", data={"model": "tiny"}, files=[("files", ("x.png", body, "image/png"))])
    assert r.status_code == status and message in r.json()["detail"], r.text
    good = client.post("/api/predict", data={"model": "tiny"}, files=[_png(busi_image(data_root))])
    assert good.status_code == 200  # the server keeps serving


def test_predict_bad_requests(served, data_root: Path) -> None:
    client, settings = served
    img = busi_image(data_root)
    r = client.post("/api/predict", data={"model": "../../etc/passwd"}, files=[_png(img)])
    assert r.status_code == 400 and "is not allowed" in r.json()["detail"]
    r = client.post("/api/predict", data={"model": "nope"}, files=[_png(img)])
    assert r.status_code == 404 and "unknown model 'nope'; models: tampered, tiny" in r.json()["detail"]
    r = client.post("/api/predict", data={"model": "tiny"}, files=[_png(img)] * 7)
    assert r.status_code == 413 and "over the limit of 6 files per request" in r.json()["detail"]
    r = client.post("/api/predict", data={"model": "tiny"})
    assert r.status_code == 422 and "files" in r.json()["detail"]
    r = client.post("/api/predict", data={"model": "tiny", "top": "99"}, files=[_png(img)])
    assert r.status_code == 422 and "top" in r.json()["detail"]
    big = {"content-length": str(7 * 1_500_000 + 3 * 1024 * 1024)}
    r = client.post(
        "/api/predict", content=b"x", headers={**big, "content-type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    # A traversal file name is only a display name: shown as its base name, never used as a path.
    r = client.post(
        "/api/predict",
        data={"model": "tiny"},
        files=[_png(img, "../../etc/passwd"), ("files", ("notes.png", b"hello", "image/png"))],
    )
    assert r.status_code == 200
    ok, bad = r.json()["results"]
    assert ok["file"] == "passwd" and "probs" in ok and bad["status"] == 415 and bad["file"] == "notes.png"
    assert not (settings.work_dir.parent / "etc").exists()


def test_concurrent_predicts_agree(served, data_root: Path) -> None:
    client, _ = served
    imgs = [busi_image(data_root, c, 2) for c in ("benign", "malignant", "normal")] * 2

    def one(p: Path) -> dict:
        r = client.post("/api/predict", data={"model": "tiny", "explain": "false"}, files=[_png(p)])
        assert r.status_code == 200, r.text
        return r.json()["results"][0]["probs"]

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(one, imgs))
    assert got[:3] == got[3:]


def test_descriptor_endpoints(served) -> None:
    client, _ = served
    ids = [d["id"] for d in client.get("/api/descriptors").json()["descriptors"]]
    assert "busi" in ids
    busi = client.get("/api/descriptors/busi").json()
    assert [c["key"] for c in busi["classes"]] == ["benign", "malignant", "normal"]
    r = client.get("/api/descriptors/nope")
    assert r.status_code == 404 and "no bundled descriptor file 'nope'" in r.json()["detail"]
    from hica.data.descriptors import load_descriptors

    text = json.dumps(load_descriptors("busi").spec.model_dump(mode="json", exclude_none=True))
    r = client.post(
        "/api/descriptors/check", files=[("descriptors_file", ("my.yaml", text.encode(), "text/yaml"))]
    )
    assert r.status_code == 200 and r.json()["file"] == "my.yaml" and len(r.json()["classes"]) == 3
    bad = ("descriptors_file", ("bad.yaml", "\udcff".encode("utf-8", "surrogateescape"), "text/yaml"))
    r = client.post("/api/descriptors/check", files=[bad])
    assert r.status_code == 415 and "not UTF-8" in r.json()["detail"]


def _job_form(data_root: Path, model: str, steps: int = 3, **extra) -> dict:
    files, labels = [], []
    for cls in ("benign", "malignant"):
        for i in (1, 2):
            files.append(_png(busi_image(data_root, cls, i)))
            labels.append(cls)
    data = {"model": model, "classes": ["benign", "malignant"], "labels": labels, "descriptors": "busi"}
    return {"data": {**data, "k": "1", "steps": str(steps), **extra}, "files": files}


def test_job_bad_requests(served, data_root: Path) -> None:
    client, _ = served
    cases = [
        ({"model": "../../etc/passwd"}, 400, "is not allowed"),
        ({"model": "tiny"}, 409, "model 'tiny' already exists"),
        ({"descriptors": "nope"}, 400, "is not a bundled descriptor file"),
        (
            {"k": "2"},
            400,
            "K=2 needs 2 training image(s) plus at least 2 validation image(s), 4 in all; 2 uploaded",
        ),
        ({"steps": "5000"}, 400, "steps must be between 1 and 2000"),
        ({"labels": ["benign"]}, 400, "4 image(s) but 1 label(s)"),
        ({"classes": ["benign", "cyst"]}, 400, "not in the descriptor file"),
    ]
    for change, status, message in cases:
        form = _job_form(data_root, "m1")
        form["data"].update(change)
        r = client.post("/api/jobs", **form)
        assert r.status_code == status and message in r.json()["detail"], (change, r.text)
    form = _job_form(data_root, "m1")
    form["files"][0] = ("files", ("a.png", b"GIF89a....", "image/png"))
    r = client.post("/api/jobs", **form)
    assert r.status_code == 415 and "a.png: not a PNG" in r.json()["detail"]
    assert all(j["state"] == "failed" for j in client.get("/api/jobs").json()["jobs"])  # refused: name free
    assert client.get("/api/jobs/0123456789ab").status_code == 404
    r = client.get("/api/jobs/..%2F..%2Fetc")
    assert r.status_code in (400, 404)
    r = client.post("/api/jobs/not-a-job/cancel")
    assert r.status_code == 400 and "is not a job id" in r.json()["detail"]


def test_job_duplicate_refused_and_cancel(served, data_root: Path) -> None:
    client, settings = served
    r = client.post("/api/jobs", **_job_form(data_root, "long", steps=2000))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] in ("queued", "running") and job["model"] == "long"
    r = client.post("/api/jobs", **_job_form(data_root, "long"))
    assert r.status_code == 409 and "already" in r.json()["detail"] and job["id"] in r.json()["detail"]
    time.sleep(0.5)
    r = client.post(f"/api/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert client.get(f"/api/jobs/{job['id']}").json()["state"] == "cancelled"
    r = client.post(f"/api/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and "already cancelled" in r.json()["detail"]
    assert not (settings.models_dir / "long").exists()
    assert not [p for p in settings.models_dir.iterdir() if p.name.startswith(".")]
    assert client.get("/api/health").json()["jobs_running"] == 0


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring ``width`` x ``height``, and no pixel data (a bomb header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_hostile_uploads_are_refused_not_crashing(served, data_root: Path) -> None:
    client, _ = served
    # A 60-byte file declaring 20000 x 20000 pixels: refused from its header (413), not a 500.
    bomb = ("files", ("bomb.png", _png_header_only(20000, 20000), "image/png"))
    r = client.post("/api/predict", data={"model": "tiny"}, files=[bomb])
    assert r.status_code == 413 and "bomb.png" in r.json()["detail"], r.text
    # A body streamed without Content-Length (chunked) is cut off at the limit.
    limit = 6 * 1_500_000 + 2 * 1024 * 1024

    def chunks():
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    r = client.post(
        "/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code == 413 and "over the limit" in r.json()["detail"], r.text
    # Descriptor YAML: aliases (which could expand a small file enormously) and deep nesting are refused.
    img = _png(busi_image(data_root))
    for text, message in (
        (b"a: &x [one, two]\nb: *x\n", "aliases"),
        (b"[" * 5000, "not valid YAML"),
    ):
        bad = ("descriptors_file", ("d.yaml", text, "text/yaml"))
        r = client.post("/api/predict", data={"model": "tiny", "zero_shot": "true"}, files=[img, bad])
        assert r.status_code == 400 and message in r.json()["detail"], r.text
    assert client.get("/api/health").json()["status"] == "ok"
