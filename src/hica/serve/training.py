"""Turn a Train-page request into a job folder: uploads, masks, manifest, class text and stage-2 config.

Per class, the first K uploaded images are the support set (train split) and the rest the validation
split (α selection on min(K,4) of them, and the reported validation metrics on all of them). The manifest
also lists the validation images as the test split (hard links), which ``run_stage2`` scores: so the
reported numbers are on held-out uploads, never on the training images. Masks are paired by name:
``NAME_mask.png`` (or ``NAME_mask_1.png``…) belongs to the image ``NAME.*``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any

import yaml

from hica.errors import HicaError
from hica.io import write_text
from hica.serve.safety import UploadError
from hica.serve.settings import ServeSettings
from hica.serve.uploads import check_count, save_upload

MAX_DESCRIPTOR_BYTES = 1024 * 1024
_MASK = re.compile(r"^(?P<stem>.+)_mask(_\d+)?$")


def load_class_text(bundled: str | None, upload_text: str | None, upload_name: str) -> Any:
    """The descriptor file: a bundled id or the text of an uploaded YAML (validated); 400 otherwise."""
    from hica.data.descriptors import list_bundled, load_descriptors, parse_descriptors

    try:
        if upload_text is not None:
            return parse_descriptors(upload_text, upload_name)
        if bundled and bundled in list_bundled():
            return load_descriptors(bundled)
    except HicaError as e:
        raise UploadError(str(e), 400) from e
    raise UploadError(
        f"descriptors {bundled!r} is not a bundled descriptor file ({', '.join(list_bundled())}); choose one "
        "or upload a YAML written as in docs/descriptors.md",
        400,
    )


def subset_yaml(desc: Any, classes: list[str]) -> str:
    """The descriptor file restricted to ``classes`` (in that order), as YAML, re-validated."""
    from hica.data.descriptors import parse_descriptors

    data = desc.spec.model_dump(mode="json", exclude_none=True)
    data["classes"] = {c: data["classes"][c] for c in classes}
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    parse_descriptors(text, "descriptors.yaml")
    return text


def check_training_request(
    desc: Any, classes: list[str], labels: list[str], k: int, steps: int, limits
) -> None:
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise UploadError(f"choose at least two different classes, got {classes}", 400)
    unknown = [c for c in classes if c not in desc.classes]
    if unknown:
        raise UploadError(
            f"class(es) {unknown} are not in the descriptor file; its classes: {desc.classes}", 400
        )
    if not 1 <= k <= 64:
        raise UploadError(f"K must be between 1 and 64 images per class, got {k}", 400)
    if not 1 <= steps <= limits.max_steps:
        raise UploadError(f"steps must be between 1 and {limits.max_steps}, got {steps}", 400)
    bad = sorted(set(labels) - set(classes))
    if bad:
        raise UploadError(f"images labelled {bad}, which are not among the chosen classes {classes}", 400)
    need = k + min(k, 4)
    for c in classes:
        n = labels.count(c)
        if n < need:
            raise UploadError(
                f"class {c!r}: K={k} needs {k} training image(s) plus at least {min(k, 4)} validation "
                f"image(s), {need} in all; {n} uploaded",
                400,
            )


async def prepare_job(
    settings: ServeSettings,
    job_dir: Path,
    desc: Any,
    descriptors_source: str,
    classes: list[str],
    files: list[Any],
    labels: list[str],
    masks: list[Any],
    k: int,
    steps: int,
    seed: int,
) -> dict[str, Any]:
    """Write the uploads, ``manifest.csv``, ``descriptors.yaml`` and the stage-2 config; return the record."""
    from hica.config import Stage2Config

    limits = settings.limits
    check_count(len(files) + len(masks), limits)
    if len(labels) != len(files):
        raise UploadError(f"{len(files)} image(s) but {len(labels)} label(s): give one label per image", 400)
    check_training_request(desc, classes, labels, k, steps, limits)
    data = job_dir / "data"
    images = []
    for i, (f, label) in enumerate(zip(files, labels, strict=True)):
        up = await save_upload(f, i, data, limits, prefix="img-", decode=True)
        images.append((up, label))
    stems: dict[str, int] = {}
    for i, (up, _) in enumerate(images):
        stem = Path(up.name).stem
        if stem in stems:
            raise UploadError(f"two images are named {stem!r}; rename one (masks are paired by name)", 400)
        stems[stem] = i
    mask_of: dict[int, list[str]] = {}
    for j, f in enumerate(masks):
        up = await save_upload(f, j, data, limits, prefix="mask-", decode=True)
        if up.kind == "dicom":
            raise UploadError(f"mask {up.name}: masks must be PNG or JPEG images (0 = background)", 415)
        m = _MASK.match(Path(up.name).stem)
        if not m or m["stem"] not in stems:
            raise UploadError(
                f"mask {up.name}: no uploaded image named {m['stem'] if m else Path(up.name).stem!r}.*; "
                "name masks NAME_mask.png after their image NAME.png",
                400,
            )
        img = images[stems[m["stem"]]][0]
        if (up.width, up.height) != (img.width, img.height):
            raise UploadError(
                f"mask {up.name} is {up.width}x{up.height} but its image {img.name} is "
                f"{img.width}x{img.height}; masks must match their image's size",
                400,
            )
        mask_of.setdefault(stems[m["stem"]], []).append(up.path.name)
    rows, seen = [], dict.fromkeys(classes, 0)
    n_val = 0
    for i, (up, label) in enumerate(images):
        split = "train" if seen[label] < k else "val"
        seen[label] += 1
        rows.append(
            {"path": up.path.name, "label": label, "split": split, "mask": ";".join(mask_of.get(i, []))}
        )
        if split == "val":
            n_val += 1
            twin = data / f"test-{up.path.name}"
            try:
                os.link(up.path, twin)
            except OSError:
                twin.write_bytes(up.path.read_bytes())
            rows.append({"path": twin.name, "label": label, "split": "test", "mask": ""})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["path", "label", "split", "mask"])
    w.writeheader()
    w.writerows(rows)
    write_text(data / "manifest.csv", buf.getvalue())
    write_text(job_dir / "descriptors.yaml", subset_yaml(desc, classes))
    base = settings.train_base
    raw = {
        **base,
        "name": "serve",
        "dataset": {
            "path": str(data / "manifest.csv"),
            "format": "manifest",
            "classes": classes,
            "descriptors": str(job_dir / "descriptors.yaml"),
            "name": f"browser-upload-{job_dir.name}",
        },
        "k": k,
        "seed": seed,
        "method_args": {**base.get("method_args", {}), "steps": steps},
        "evaluate_test": True,
        "device": settings.device,
        "precision": settings.precision,
    }
    try:
        Stage2Config.model_validate(raw)
    except ValueError as e:
        raise UploadError(f"training settings are invalid: {e}", 400) from e
    counts = {c: labels.count(c) for c in classes}
    return {
        "k": k,
        "steps": steps,
        "seed": seed,
        "classes": classes,
        "descriptors_source": descriptors_source,
        "n_validation": n_val,
        "training_data": (
            f"{len(images)} images uploaded in the browser (job {job_dir.name}): "
            + ", ".join(f"{c} {n} ({k} train, {n - k} validation)" for c, n in counts.items())
            + (f"; {len(masks)} lesion mask(s)" if masks else "; no masks")
        ),
        "config": raw,
    }
