"""Model cards (``hica.modelcard``): written by ``hica finetune``, checked against the weights on load, one
line in ``hica predict``; every measured limit quotes numbers that are in its committed source file."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hica import modelcard
from hica.cli import app
from hica.errors import HicaError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ``hica finetune`` model (K=1, 64 px, 2 steps) on real BUSI, scored on the test split."""
    tmp = tmp_path_factory.mktemp("card")
    cfg = tmp / "s2.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "card-test",
                "encoder": {"name": "default", "args": {"image_size": 64}},
                "dataset": "busi",
                "k": 1,
                "seed": 2,
                "method_args": {"steps": 2, "head_steps": 3, "batch_size": 3},
                "evaluate_test": True,
                "device": "cpu",
                "precision": "fp32",
            }
        )
    )
    args = ["finetune", "--config", str(cfg), "--out", str(tmp / "run"), "--data-root", str(data_root)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    return tmp / "run" / "model"


def test_finetune_writes_a_complete_card(model: Path) -> None:
    card = json.loads((model / modelcard.CARD_JSON).read_text())
    md = (model / modelcard.CARD_MD).read_text()
    assert card["schema_version"] == modelcard.SCHEMA_VERSION and card["kind"] == "classifier"
    assert card["name"] == "card-test" and card["classes"] == ["benign", "malignant", "normal"]
    assert card["k"] == 1 and card["seed"] == 2
    td = card["training_data"]
    assert td["dataset"].startswith("busi") and td["splits_used"] == ["train", "val", "test"]
    sets = [r["set"] for r in td["episode"]]
    assert sets.count("support") == 3 and sets.count("validation") == 3  # K=1, min(K,4)=1 per class
    assert all(Path(r["path"]).is_file() and r["label"] in card["classes"] for r in td["episode"])
    assert sum(c["test"] for c in td["n_images"].values()) == card["metrics"]["test"]["n"]
    lineage = card["encoder"]["lineage"]
    assert [e["stage"] for e in lineage] == ["base", "stage2"] and lineage[0]["name"] == "default"
    assert lineage[1]["weights_sha256"] == modelcard.sha256_file(model / "encoder.safetensors")
    assert set(card["weights"]) == {"encoder.safetensors", "classifier.safetensors"}
    assert card["metrics"]["validation"]["n"] == 3 and 0 <= card["metrics"]["test"]["accuracy"] <= 1
    assert card["roi_source"] == "lesion masks (support set)"
    assert "not for clinical decisions" in card["intended_use"]
    assert any("28 px" in lim["text"] for lim in card["limits"])  # the measured BUSI resolution failure
    for want in ("card-test", "benign", "K=1", "not for clinical decisions", "sha256"):
        assert want in md, want


def test_predict_prints_the_card_line(model: Path, data_root: Path, tmp_path: Path) -> None:
    img = data_root / "busi" / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png"
    args = ["predict", str(img), "--checkpoint", str(model), "--out", str(tmp_path / "p.csv")]
    res = CliRunner().invoke(app, [*args, "--device", "cpu", "--precision", "fp32"])
    assert res.exit_code == 0, (res.output, res.exception)
    line = next(ln for ln in res.output.splitlines() if ln.startswith("model card:"))
    assert "classifier card-test" in line and "K=1" in line and "research use only" in line


def _copy(model: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "m"
    shutil.copytree(model, dst)
    return dst


def test_weights_that_do_not_match_the_card_are_refused(model: Path, data_root: Path, tmp_path: Path) -> None:
    m = _copy(model, tmp_path)
    clf = m / "classifier.safetensors"
    data = bytearray(clf.read_bytes())
    data[-1] ^= 0x01
    clf.write_bytes(bytes(data))
    img = data_root / "busi" / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png"
    out = tmp_path / "p.csv"
    res = CliRunner().invoke(app, ["predict", str(img), "--checkpoint", str(m), "--out", str(out)])
    assert isinstance(res.exception, HicaError)
    assert "classifier.safetensors does not match its model card" in str(res.exception)
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda m: (m / "encoder.safetensors").unlink(),
            "encoder.safetensors is listed in its model_card.json",
        ),
        (lambda m: (m / "extra.safetensors").write_bytes(b"x"), "extra.safetensors is not in its model card"),
        (lambda m: (m / modelcard.CARD_JSON).write_text("{"), "not valid JSON"),
        (lambda m: (m / modelcard.CARD_JSON).write_text('{"weights": {}}'), "no 'weights' hashes"),
    ],
    ids=["missing-weights", "extra-weights", "broken-json", "no-hashes"],
)
def test_damaged_cards_are_refused(model: Path, tmp_path: Path, damage, message: str) -> None:
    m = _copy(model, tmp_path)
    damage(m)
    with pytest.raises(HicaError, match=re.escape(message)):
        modelcard.verify_model_card(m)


def test_a_folder_without_a_card_loads_with_a_warning(model: Path, data_root: Path, tmp_path: Path) -> None:
    m = _copy(model, tmp_path)
    (m / modelcard.CARD_JSON).unlink()
    assert modelcard.verify_model_card(m) == {}
    img = data_root / "busi" / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png"
    args = ["predict", str(img), "--checkpoint", str(m), "--out", str(tmp_path / "p.csv"), "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    assert "has no model_card.json (made before model cards)" in res.output


def test_measured_limits_quote_their_sources() -> None:
    """Every number in a measured limit appears in the committed result file it cites."""
    for lim in modelcard.MEASURED_LIMITS:
        src = REPO / lim["source"]
        assert src.is_file(), lim["source"]
        text = src.read_text(encoding="utf-8")
        for num in re.findall(r"\d\.\d{3}", lim["text"]):
            assert num in text, (num, lim["source"])


def test_a_remembered_check_does_not_hide_a_later_change(model: Path, tmp_path: Path) -> None:
    """A verified folder is not re-hashed until it changes, and a change that restores the old size and
    mtime is still seen (the file's ctime moves)."""
    import os

    m = _copy(model, tmp_path)
    assert modelcard.verify_model_card(m)["name"] == "card-test"
    clf = m / "classifier.safetensors"
    st = clf.stat()
    data = bytearray(clf.read_bytes())
    data[-1] ^= 0x01
    clf.write_bytes(bytes(data))
    os.utime(clf, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime as when it was verified
    with pytest.raises(HicaError, match="does not match its model card"):
        modelcard.verify_model_card(m)
