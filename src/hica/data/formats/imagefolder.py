"""ImageFolder layout: ``root/<class>/*.png|jpg|jpeg|dcm`` (e.g. Kermany ``chest_xray/train``)."""

from __future__ import annotations

import logging
from pathlib import Path

from hica.data.sample import IMAGE_EXTENSIONS, Sample, is_image_file
from hica.errors import HicaError

log = logging.getLogger(__name__)


def scan_imagefolder(
    root: str | Path,
    classes: list[str] | None = None,
    class_map: dict[str, str] | None = None,
    skip_bad: bool = False,
    id_prefix: str = "",
) -> tuple[list[str], list[Sample]]:
    """List ``root``'s class folders and their images.

    ``class_map`` renames folders to class names (``{"NORMAL": "normal"}``); ``classes`` fixes the class
    order (default: sorted mapped folder names). Files with other extensions are an error naming the file,
    unless ``skip_bad`` (then they are skipped with a warning). An empty class folder is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise HicaError(f"image folder {root} does not exist or is not a directory")
    class_map = class_map or {}
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise HicaError(f"{root} has no class sub-folders; expected {root}/<class>/<image files>")
    by_class = {class_map.get(f.name, f.name): f for f in folders}
    if classes is None:
        classes = sorted(by_class)
    missing = [c for c in classes if c not in by_class]
    if missing:
        raise HicaError(
            f"{root}: no folder for class(es) {missing}; found folders {[f.name for f in folders]}"
        )
    samples: list[Sample] = []
    skipped = 0
    for label, cname in enumerate(classes):
        folder = by_class[cname]
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        n_before = len(samples)
        for f in files:
            if not is_image_file(f):
                if skip_bad:
                    skipped += 1
                    continue
                raise HicaError(
                    f"{f} is not an image file (extensions {', '.join(IMAGE_EXTENSIONS)}); remove it or "
                    "pass --skip-bad"
                )
            samples.append(Sample(id=f"{id_prefix}{folder.name}/{f.name}", label=label, path=f))
        if len(samples) == n_before:
            raise HicaError(f"class folder {folder} has no images; add images or remove the folder")
    if skipped:
        log.warning("skipped %d non-image file(s) under %s", skipped, root)
    return classes, samples
