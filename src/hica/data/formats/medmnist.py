"""MedMNIST ``.npz`` files (official keys ``{train,val,test}_{images,labels}``, any image size).

Where the file is missing, it can be downloaded from its official Zenodo record with an MD5 check
(``download=True``); with no network the error says which file to place where.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from hica.data.sample import Sample
from hica.errors import HicaError
from hica.io import atomic_write

# Official MedMNIST v2 record (Zenodo 10519652); MD5s from the medmnist package's INFO table.
ZENODO = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"
OFFICIAL_MD5 = {
    "pneumoniamnist": "28209eda62fecd6e6a2d98b1501bb15f",
    "pneumoniamnist_64": "8f4eceb4ccffa70c672198ea285246c6",
    "pneumoniamnist_128": "05b46931834c231683c68f40c47b2971",
    "pneumoniamnist_224": "d6a3c71de1b945ea11211b03746c1fe1",
    "breastmnist": "750601b1f35ba3300ea97c75c52ff8f6",
    "breastmnist_64": "742edef2a1fd1524b2efff4bd7ba9364",
    "breastmnist_128": "363e4b3f8d712e9b5de15470a2aaadf1",
    "breastmnist_224": "b56378a6eefa9fed602bb16d192d4c8b",
}
SPLITS = ("train", "val", "test")


def ensure_npz(path: Path, name: str, download: bool = False, timeout: float = 10.0) -> Path:
    """Return ``path`` if it exists; else download ``name`` from Zenodo (MD5-checked) when allowed."""
    if path.is_file():
        return path
    url = ZENODO.format(name=name)
    hint = f"place the official {name}.npz at {path} (from {url}) or set HICA_DATA to a folder with medmnist/"
    if not download:
        raise HicaError(f"{path} not found: {hint}, or pass --download")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            payload = r.read()
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise HicaError(f"could not download {url} ({e}); no network? {hint}") from e
    md5 = hashlib.md5(payload).hexdigest()
    if name in OFFICIAL_MD5 and md5 != OFFICIAL_MD5[name]:
        raise HicaError(f"downloaded {name}.npz has MD5 {md5}, expected {OFFICIAL_MD5[name]}; not saved")
    return atomic_write(path, lambda p: p.write_bytes(payload))


def read_npz(path: str | Path, prefix: str) -> dict[str, list[Sample]]:
    """Samples per official split; ids are ``<prefix>:<split>:<index>``."""
    path = Path(path)
    bad = f"cannot read {path} as a MedMNIST .npz"
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise HicaError(f"{bad}: {e}; replace the file (or delete it and pass --download)") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise HicaError(f"{bad}: it holds one array, not the archive of {{train,val,test}}_images/labels")
    out: dict[str, list[Sample]] = {}
    with data:
        for split in SPLITS:
            ik, lk = f"{split}_images", f"{split}_labels"
            if ik not in data or lk not in data:
                raise HicaError(f"{path} lacks key {ik!r} or {lk!r}; is it a MedMNIST file?")
            try:
                images, labels = data[ik], data[lk].reshape(-1)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise HicaError(f"{bad}: {e}; replace the file (or delete it and pass --download)") from e
            if len(images) != len(labels):
                raise HicaError(f"{path}: {ik} has {len(images)} images but {lk} has {len(labels)} labels")
            out[split] = [
                Sample(id=f"{prefix}:{split}:{i}", label=int(y), array=np.ascontiguousarray(im))
                for i, (im, y) in enumerate(zip(images, labels, strict=True))
            ]
    return out
