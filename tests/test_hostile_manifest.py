"""Hostile CSV manifests: missing files, escaping paths, empty labels, duplicates, BOM/CRLF, bad headers and
encodings. Each is read correctly or refused with one HicaError line naming the CSV (and the row)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hica.cli
from hica.data.catalog import load_dataset
from hica.data.formats.manifest import read_manifest
from hica.errors import HicaError

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("benign", "malignant")
N = 3  # images per class
HEAD = "path,label,split,mask"


@pytest.fixture
def mdir(data_root: Path, tmp_path: Path) -> Path:
    """``tmp_path/m/<class>/`` with the first N real BUSI images of each class and their masks."""
    src = data_root / "busi" / "Dataset_BUSI_with_GT"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    dst = tmp_path / "m"
    for cls in CLASSES:
        (dst / cls).mkdir(parents=True)
        for i in range(1, N + 1):
            for name in (f"{cls} ({i}).png", f"{cls} ({i})_mask.png"):
                shutil.copy2(src / cls / name, dst / cls / name)
    return dst


def _rows(mask: bool = True) -> list[str]:
    """Valid rows: per class, image 1 in train, 2 in val, 3 in test."""
    out = []
    for cls in CLASSES:
        for i, split in zip(range(1, N + 1), ("train", "val", "test"), strict=True):
            m = f",{cls}/{cls} ({i})_mask.png" if mask else ","
            out.append(f"{cls}/{cls} ({i}).png,{cls},{split}{m}")
    return out


def _write(folder: Path, lines: list[str], name: str = "m.csv") -> Path:
    p = folder / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _err(csv: Path, **kw: object) -> str:
    with pytest.raises(HicaError) as e:
        read_manifest(csv, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(csv) in msg
    return msg


def _summary(ds_splits: dict) -> dict:
    return {k: [(s.id, s.label, s.path, s.masks) for s in v] for k, v in ds_splits.items()}


# -- valid manifests ------------------------------------------------------------------------------------


def test_valid_manifest_loads(mdir: Path) -> None:
    classes, splits = read_manifest(_write(mdir, [HEAD, *_rows()]))
    assert classes == list(CLASSES) and {k: len(v) for k, v in splits.items()} == {
        "train": 2,
        "val": 2,
        "test": 2,
    }
    assert all(
        s.path.is_file() and len(s.masks) == 1 and s.masks[0].is_file() for v in splits.values() for s in v
    )


def test_bom_and_crlf_read_like_the_clean_file(mdir: Path) -> None:
    clean = _write(mdir, [HEAD, *_rows()])
    dirty = mdir / "dirty.csv"
    dirty.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([HEAD, *_rows()]).encode() + b"\r\n")
    assert read_manifest(dirty) == read_manifest(clean)
    a, b = load_dataset(f"manifest:{clean}"), load_dataset(f"manifest:{dirty}")
    assert a.classes == b.classes and _summary(a.splits) == _summary(b.splits)
    assert a.fingerprint() == b.fingerprint()


def test_paths_inside_the_folder_are_fine(mdir: Path) -> None:
    """Absolute paths, ``..`` and symlinks that stay inside the manifest's folder are allowed."""
    (mdir / "sub").mkdir()
    os.symlink(mdir / "benign" / "benign (1).png", mdir / "sub" / "link.png")
    lines = [
        "path,label",
        f"{mdir / 'benign' / 'benign (2).png'},benign",
        "sub/../benign/benign (3).png,benign",
        "sub/link.png,benign",
        "malignant/malignant (1).png,malignant",
    ]
    _, splits = read_manifest(_write(mdir, lines))
    assert [s.path.name for s in splits["train"]][:3] == [
        "benign (2).png",
        "benign (3).png",
        "benign (1).png",
    ]


# -- 1. missing files -----------------------------------------------------------------------------------


def test_missing_image_names_csv_row_and_path(mdir: Path) -> None:
    csv = _write(mdir, [HEAD, *_rows(mask=False)[:2], "benign/ghost.png,benign,test,"])
    msg = _err(csv)
    assert f"{csv}:4:" in msg and "benign/ghost.png not found" in msg


def test_missing_image_skipped_with_skip_bad(mdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = _rows()
    rows[1] = "benign/ghost.png,benign,val,"
    rows[4] = "malignant/malignant (2).png,malignant,val,malignant/nomask.png"  # missing mask
    csv = _write(mdir, [HEAD, *rows])
    with caplog.at_level(logging.WARNING, logger="hica.data.formats.manifest"):
        _, splits = read_manifest(csv, skip_bad=True)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "test": 2}
    assert "skipped 2 of 6 row(s)" in caplog.text and f"{csv}:3: image benign/ghost.png" in caplog.text
    # a class whose every row is skipped is an error, not a silently smaller class list
    rows = [r.replace("malignant/", "malignant/gone-") if r.startswith("malignant") else r for r in _rows()]
    assert "every row of class(es) ['malignant']" in _err(_write(mdir, [HEAD, *rows]), skip_bad=True)


def test_missing_mask_and_directory_as_image(mdir: Path) -> None:
    rows = _rows()
    rows[2] = "benign/benign (3).png,benign,test,benign/benign (3)_mask.png;benign/ghost_mask.png"
    msg = _err(_write(mdir, [HEAD, *rows]))
    assert ":4: mask benign/ghost_mask.png not found" in msg
    msg = _err(_write(mdir, [HEAD, "benign,benign,train,", *_rows(mask=False)[3:]]))
    assert ":2: image benign is not a file" in msg
    msg = _err(_write(mdir, [HEAD, f"{'x' * 5000}.png,benign,train,", *_rows(mask=False)[3:]]))
    assert ":2: image xxx" in msg and "cannot be checked (File name too long)" in msg


# -- 2. paths escaping the manifest's folder -------------------------------------------------------------


def test_escaping_paths_are_refused(mdir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    shutil.copy2(mdir / "benign" / "benign (1).png", outside)
    os.symlink(outside, mdir / "benign" / "link.png")
    good = _rows(mask=False)[3:]
    for bad in [
        "../../etc/passwd,benign,train,",
        f"{outside},benign,train,",
        "benign/link.png,benign,train,",  # a symlink pointing outside
        "benign/benign (1).png,benign,train,../outside.png",  # a mask outside
    ]:
        msg = _err(_write(mdir, [HEAD, bad, *good]))
        assert ":2:" in msg and "outside the manifest's folder" in msg and "must stay inside" in msg
    # explicit opt-in: the absolute path outside loads
    _, splits = read_manifest(_write(mdir, [HEAD, f"{outside},benign,train,", *good]), allow_outside=True)
    assert splits["train"][0].path == outside


# -- 3. empty labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["", "  ", "benign "], ids=["empty", "blank", "padded"])
def test_empty_or_padded_label(mdir: Path, label: str) -> None:
    rows = _rows(mask=False)
    rows[2] = f"benign/benign (3).png,{label},test,"
    msg = _err(_write(mdir, [HEAD, *rows]))
    assert ":4:" in msg and "label" in msg


# -- 4. duplicates --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dup",
    [
        "benign/benign (1).png,benign,train,",
        "benign/benign (1).png,malignant,test,",
        "./benign/benign (1).png,benign,val,",
    ],
    ids=["same", "other-label-and-split", "other-spelling"],
)
def test_duplicate_rows_name_both_lines(mdir: Path, dup: str) -> None:
    csv = _write(mdir, [HEAD, *_rows(mask=False), dup])
    msg = _err(csv)
    assert f"{csv}:8:" in msg and "lines 2 and 8" in msg and "leak" in msg


# -- 6. header, encoding and CSV structure --------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expect"),
    [
        ("label,split", "needs a header with columns path,label"),
        ("path,split", "needs a header with columns path,label"),
        ("path,label,patient", "unknown column(s) ['patient']"),
        ("path,label,Split", "unknown column(s) ['Split']"),
        ("path,label,label", "appear twice"),
    ],
)
def test_bad_header(mdir: Path, header: str, expect: str) -> None:
    n = header.count(",") + 1
    rows = [",".join(r.split(",")[:n]) for r in _rows(mask=False)]
    assert expect in _err(_write(mdir, [header, *rows]))


def test_empty_file_and_header_only(mdir: Path) -> None:
    empty = mdir / "empty.csv"
    empty.write_bytes(b"")
    assert "is empty" in _err(empty)
    empty.write_bytes(b"\xef\xbb\xbf\r\n")
    assert "is empty" in _err(empty)
    assert "has no rows" in _err(_write(mdir, ["path,label"]))


def test_non_utf8_and_binary_files(mdir: Path) -> None:
    latin = mdir / "latin.csv"
    latin.write_bytes("path,label\nbenign/benign (1).png,b\xe9nin\n".encode("latin-1"))
    msg = _err(latin)
    assert f"{latin}:2:" in msg and "not UTF-8" in msg and "0xe9" in msg
    png = mdir / "benign" / "benign (1).png"
    assert "NUL byte" in _err(png)
    for row in ("benign/benign (1).png,benign\0", "benign/benign\0.png,benign"):  # NUL in a label, a path
        nul = _write(mdir, ["path,label", row])
        assert f"{nul}:2: manifest contains a NUL byte" in _err(nul)


def test_row_structure(mdir: Path) -> None:
    good = _rows(mask=False)[3:]
    rows = [",".join(r.split(",")[:2]) for r in good]
    msg = _err(_write(mdir, ["path,label", *rows, "benign/benign (1).png,benign,x"]))
    assert ":5: row has 3 fields but the header has 2" in msg
    # blank lines do not shift the reported line numbers
    msg = _err(_write(mdir, ["path,label", "", "benign/ghost.png,benign"]))
    assert ":3: image benign/ghost.png" in msg
    # a split that would be silently ignored ("Test" is not "test")
    rows = _rows(mask=False)
    rows[2] = "benign/benign (3).png,benign,Test,"
    assert ":4: split 'Test'" in _err(_write(mdir, [HEAD, *rows]))


# -- through the CLI ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "expect"),
    [("benign/benign (1).png,benign,test,", "lines 2 and 8"), ("../../etc/passwd,benign,train,", "outside")],
    ids=["duplicate", "escape"],
)
def test_cli_refuses_hostile_manifest(mdir: Path, tmp_path: Path, bad: str, expect: str) -> None:
    csv = _write(mdir, [HEAD, *_rows(mask=False), bad])
    args = [
        "fewshot",
        "--dataset",
        f"manifest:{csv}",
        "--method",
        "prototype",
        "--shots",
        "1",
        "--seeds",
        "1",
    ]
    res = CliRunner().invoke(
        hica.cli.app, [*args, "--data-root", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert isinstance(res.exception, HicaError), res.output
    assert str(csv) in str(res.exception) and expect in str(res.exception)
