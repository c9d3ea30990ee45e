"""CPU smoke test of the GPU grid (issue 13 §6): a tiny bundle from the real BUSI data, run by
``scripts/gpu_grid.py`` on CPU; the bundle rebuilds exactly what the protocol feeds HiCA."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_bundle  # noqa: E402
import gpu_bundle_io as gb  # noqa: E402
import gpu_grid  # noqa: E402
import gpu_grid_compare  # noqa: E402


@pytest.fixture(scope="module")
def bundle(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    report = gpu_bundle.main(
        ["--smoke", "--weights", "fp32", "--data-root", str(data_root), "--out", str(out)]
    )
    assert report["images"]["busi"]["exact"] == report["images"]["busi"]["count"]  # lossless by default
    return out


@pytest.fixture(scope="module")
def run_out(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu_out")
    gpu_grid.main(["--bundle", str(bundle), "--out", str(out), "--device", "cpu"])
    return out


def test_bundle_parts_and_manifest(bundle: Path, tmp_path: Path) -> None:
    part = bundle / "busi"
    man = gb.verify_part(part)
    want = {"encoder.safetensors", "encoder.json", "text.safetensors", "texts.json", "images.bin"}
    assert want | {"images.json", "episodes.json", "masks.npz", "grid.json"} <= set(man["files"])
    grid = json.loads((part / "grid.json").read_text())
    assert grid["shots"] == [1] and grid["seeds"] == [1] and grid["methods"] == ["hica"]
    assert man["texts"] > 0 and json.loads((bundle / "bundle.json").read_text())["tree_mib"] > 0
    bad = tmp_path / "busi"
    shutil.copytree(part, bad)
    with (bad / "texts.json").open("a") as f:
        f.write(" ")
    with pytest.raises(SystemExit, match="texts.json"):
        gb.verify_part(bad)


def test_bundle_rebuilds_the_protocol_episode(bundle: Path, data_root: Path) -> None:
    """Images, masks, attributes and embeddings from the bundle equal the protocol's own, on the real data."""
    from hica.data.catalog import load_dataset
    from hica.data.descriptors import load_descriptors
    from hica.data.episodes import Episode
    from hica.data.sample import load_image
    from hica.encoders import create_encoder
    from hica.eval.episode_data import image_episode
    from hica.methods.base import method_registry
    from hica.model.text import pooled_sentences

    run = gpu_grid.DatasetRun(bundle / "busi", torch.device("cpu"))
    cls = method_registry()["hica"]
    e = run.episodes[(1, 1)]
    ds = load_dataset("busi", data_root)
    by_id = {s.id: s for sp in ds.splits.values() for s in sp}
    enc = create_encoder("default", image_size=64).eval()
    ep = Episode(dataset=ds.name, k=1, seed=1, support=tuple(e["support"]), val=tuple(e["val"]))
    ref = image_episode(enc, ds, ep, by_id, 1, cls, load_descriptors("busi"))
    got = run.data(cls, 1, 1)
    for name in ("support", "val", "support_labels", "val_labels", "support_masks", "support_has_mask"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
    assert got.support_attributes == ref.support_attributes
    test = torch.stack([enc.preprocess(load_image(by_id[i])) for i in run.grid["test_ids"]])
    assert torch.equal(run.test, test)
    with torch.no_grad():
        a, b = run.enc.encode_image(test).global_, enc.encode_image(test).global_
        texts = json.loads((bundle / "busi" / "texts.json").read_text())[:8]
        ta, tb = run.enc.encode_text(texts), enc.encode_text(texts)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(ta, tb, atol=1e-5)
    assert torch.allclose(pooled_sentences(run.enc, texts), pooled_sentences(enc, texts), atol=1e-5)


def test_grid_outputs_and_comparison(run_out: Path) -> None:
    summary = json.loads((run_out / "summary.json").read_text())
    assert summary["episodes"] == 1 and summary["device"] == "cpu" and summary["wall_seconds"] > 0
    with gzip.open(run_out / "records.jsonl.gz", "rt") as f:
        (rec,) = [json.loads(line) for line in f]
    assert rec["method"] == "hica" and rec["k"] == 1 and rec["seed"] == 1
    assert all(0 <= rec["metrics"][m] <= 1 for m in ("accuracy", "balanced_accuracy", "macro_f1", "auc"))
    assert len(rec["probs"]) == 12 and all(abs(sum(p) - 1) < 1e-3 for p in rec["probs"])
    assert (run_out / "runs.csv").read_text().count("\n") == 2
    cmp = json.loads((run_out / "comparison.json").read_text())
    (cell,) = cmp["cells"]
    assert cell["accuracy"]["cpu"] is not None  # the committed CPU cell (busi, hica, K=1) was found
    assert cmp["timing"]["cpu_episodes"] == 60 and "| hica | 1 |" in (run_out / "comparison.md").read_text()
    same = gpu_grid_compare.compare(run_out, [run_out])  # a gpu_grid output as the reference
    assert same["agree"] == {"accuracy": [1, 1], "auc": [1, 1]} and same["cells"][0]["accuracy"]["delta"] == 0


def test_weight_codecs_round_trip() -> None:
    w = {"a.weight": torch.randn(8, 4, 3, 3), "a.bias": torch.randn(8), "n": torch.tensor(3)}
    for mode, tol in (("fp32", 0), ("fp16", 1e-3), ("int8", 2e-2)):
        back = gb.decode_weights(gb.encode_weights(w, mode))
        assert (
            set(back) == set(w)
            and torch.equal(back["n"], w["n"])
            and torch.equal(back["a.bias"], w["a.bias"])
        )
        assert (back["a.weight"] - w["a.weight"]).abs().max() <= tol * w["a.weight"].abs().max()


def test_carried_packages_unpack_only_when_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    wheel = tmp_path / "hica_gpu_fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("hica_gpu_fake/__init__.py", "X = 7\n")
    common = tmp_path / "common"
    common.mkdir()
    gb.pack_wheels([wheel], common / "site.tar.xz")
    info = {"wheels": [wheel.name], "provides": ["hica_gpu_fake"]}
    (common / "wheels.json").write_text(json.dumps(info))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    assert gb.ensure_wheels(common, tmp_path / "site") == [wheel.name]
    assert __import__("hica_gpu_fake").X == 7 and os.environ["PYTHONPATH"].startswith(str(tmp_path / "site"))
    assert gb.ensure_wheels(common, tmp_path / "site2") == []  # present now: nothing unpacked
    sys.modules.pop("hica_gpu_fake")
