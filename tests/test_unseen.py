"""Unseen-category analysis (``hica.analysis.unseen``) on real BUSI at 64 px, one tiny HiCA run.

One run holds out malignant (K=1, seed 1, 2+3 HiCA steps, 12 test images) with spies on HiCA.fit and on
every image / mask read. Checks: outputs and probabilities over all classes, that no train/val image, mask or
label of the held-out class reached training, resume, that the zero-shot path equals exporting the
checkpoint + ``Predictor.use_descriptors``, the bootstrap against ``bootstrap_ci``, and bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hica.analysis.unseen import UnseenConfig, load_unseen_config, run_unseen
from hica.errors import HicaError
from hica.eval.grid import STAMP
from hica.eval.stats import NOT_DISTINGUISHABLE, bootstrap_seed_mean, chance_levels, versus_chance

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "encoder": {"name": "default", "args": {"image_size": 64}},
    "dataset": "busi",
    "holdout": ["malignant"],
    "k": 1,
    "seeds": [1],
    "hica_args": {"steps": 2, "head_steps": 3, "batch_size": 3},
    "max_images": 12,
    "bootstrap": 200,
    "device": "cpu",
    "precision": "fp32",
}


def _cfg(data_root: Path, **over) -> UnseenConfig:
    return UnseenConfig.model_validate({**TINY, "data_root": str(data_root), **over})


@pytest.fixture(scope="module")
def tiny_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """(out dir, result, fitted HiCA methods, fit data, ids of every image and mask read)."""
    import hica.eval.episode_data as episode_data
    import hica.model.imagedata as imagedata
    from hica.methods.hica import HiCA

    if not (data_root / "busi").is_dir():
        pytest.skip(f"BUSI not found under {data_root}")
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("unseen")
    fitted, seen_data, read = [], [], []
    fit = HiCA.fit

    def spy_fit(self, encoder, data, device, precision):
        seen_data.append(data)
        fitted.append(fit(self, encoder, data, device, precision))
        return fitted[-1]

    def spy(fn):
        def wrapped(sample, *a, **kw):
            read.append(sample.id)
            return fn(sample, *a, **kw)

        return wrapped

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HiCA, "fit", spy_fit)
        mp.setattr(episode_data, "load_image", spy(episode_data.load_image))
        mp.setattr(imagedata, "load_image", spy(imagedata.load_image))
        mp.setattr(imagedata, "load_mask", spy(imagedata.load_mask))
        result = run_unseen(_cfg(data_root), out)
    return out, result, fitted, seen_data, read


def test_outputs_and_probabilities(tiny_run) -> None:
    out, res, *_ = tiny_run
    for f in ("metrics.json", "table.md", "predictions.csv", "config.resolved.yaml", "environment.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "environment.json").read_text())["encoder"]["encoder"] == "default"
    assert sorted(p.name for p in (out / "parts").iterdir()) == [
        "before_alignment.json",
        "malignant__s1.json",
    ]
    part = json.loads((out / "parts" / "malignant__s1.json").read_text())
    probs = np.array(part["probs"])
    assert probs.shape == (12, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)  # all 3 classes, h included
    assert part["seen"] == ["benign", "normal"] and part["shots"] == {"support": 2, "val": 2}
    assert part["config_hash"] == res["config_hash"] and len(part["eval_ids"]) == 12 and STAMP in part
    assert res["grid"]["parts_computed"] == 2 and res["grid"]["parts_resumed"] == 0
    assert "seconds" not in res["grid"] and all(STAMP not in h for h in res["holdouts"].values())
    h = res["holdouts"]["malignant"]
    assert set(h["heldout"]) == {"malignant"}
    assert set(h["heldout"]["malignant"]) == {"recall", "ovr_auc", "before_alignment"}
    assert np.array(h["confusion_sum"]).sum() == 12
    assert res["chance"]["accuracy"] == pytest.approx(1 / 3) and res["chance"]["auc"] == 0.5
    assert h["zero_shot"]["accuracy"]["vs_chance"] in ("above chance", NOT_DISTINGUISHABLE, "below chance")
    assert "seen_classes" in h and h["seen_classes"]["n_images"] == 8
    table = (out / "table.md").read_text()
    assert "unaligned dual encoder" in table and "not distinguishable from chance" in table
    assert "Chance (uniform guess; not a method)" in table
    rows = (out / "predictions.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 12 and rows[0].endswith("p_benign,p_malignant,p_normal")


def test_held_out_class_never_reaches_training(tiny_run, data_root: Path) -> None:
    from hica.data.catalog import load_dataset

    _, _, fitted, seen_data, read = tiny_run
    ds = load_dataset("busi", data_root)
    h = ds.classes.index("malignant")
    held_ids = {s.id for split in ("train", "val") for s in ds.split(split) if s.label == h}
    assert read and not held_ids & set(read)  # no train/val image or mask of h was ever opened
    (data,) = seen_data
    assert data.classes == ["benign", "normal"] and data.num_classes == 2
    assert set(data.support_labels.tolist()) == {0, 1} and set(data.val_labels.tolist()) == {0, 1}
    assert fitted[0].model.text.num_classes == 2  # the text bank holds the seen classes only


def test_resume_skips_matching_parts(tiny_run, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hica.methods.hica import HiCA

    out, res, *_ = tiny_run
    calls: list[int] = []
    monkeypatch.setattr(HiCA, "fit", lambda *a, **kw: calls.append(1))
    again = run_unseen(_cfg(data_root), out)
    assert calls == [] and again["resumed_parts"] == 2 and again["grid"]["parts_computed"] == 0
    assert again["holdouts"] == res["holdouts"]
    # A part from another configuration is recomputed (the stub fit fails loudly when called).
    part = out / "parts" / "malignant__s1.json"
    rec = json.loads(part.read_text())
    part.write_text(json.dumps({**rec, "config_hash": "other"}))
    with pytest.raises(AttributeError):
        run_unseen(_cfg(data_root), out)
    assert calls == [1]
    part.write_text(json.dumps(rec))


def test_zero_shot_equals_exported_predictor(tiny_run, data_root: Path, tmp_path: Path) -> None:
    """The run's zero-shot probabilities = `hica predict --zero-shot --descriptors busi` on the export."""
    from hica.data.catalog import load_dataset
    from hica.jobs.finetune import export_classifier
    from hica.predict import Predictor

    out, _, fitted, *_ = tiny_run
    part = json.loads((out / "parts" / "malignant__s1.json").read_text())
    ds = load_dataset("busi", data_root)
    enc_cfg = TINY["encoder"]
    from hica.encoders import create_encoder

    base_fp = json.loads(json.dumps(create_encoder("default", image_size=64).fingerprint(), default=str))
    export_classifier(fitted[0], enc_cfg, base_fp, tmp_path / "model", {"classes": part["seen"]})
    pred = Predictor(tmp_path / "model", torch.device("cpu"), "fp32")
    pred.use_descriptors("busi")
    assert pred.classes == ds.classes
    by_id = {s.id: s for s in ds.split("test")}
    kept, probs, _ = pred.predict_samples([by_id[i] for i in part["eval_ids"]])
    assert len(kept) == 12
    assert np.allclose(probs.numpy(), np.array(part["probs"]), atol=1e-5)


def test_bootstrap_matches_bootstrap_ci_and_chance_flags() -> None:
    from hica.eval.metrics import bootstrap_ci, classification_metrics

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    probs = rng.dirichlet(np.ones(3), size=60)
    ours = bootstrap_seed_mean(labels, [probs], n_boot=300, seed=4)
    ref = bootstrap_ci(labels, probs, n_boot=300, seed=4)
    for m, ci in ref.items():
        assert np.allclose(ours[m], ci), m
    assert set(ours) >= {"recall/0", "ovr_auc/2"}
    # Two seeds: the CI is that of the seed mean, between the single-seed ones for identical seeds.
    assert np.allclose(bootstrap_seed_mean(labels, [probs, probs], 300, 4)["auc"], ours["auc"])
    assert classification_metrics(labels, probs)["accuracy"] < 0.6  # random scores: near chance
    assert versus_chance(ours["auc"], 0.5) == NOT_DISTINGUISHABLE
    assert versus_chance((0.0, 0.1), 1 / 3) == "below chance"
    assert versus_chance((0.6, 0.8), 0.5) == "above chance"
    ch = chance_levels(labels, 3)
    assert ch["macro_f1"] == pytest.approx(1 / 3) and ch["majority_class_accuracy"] == pytest.approx(1 / 3)


# -------------------------------------------------------------------------------------------- bad input


def test_unknown_holdout_class(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(HicaError, match=r"tumour.*available classes: \['benign', 'malignant', 'normal'\]"):
        run_unseen(_cfg(data_root, holdout=["tumour"]), tmp_path)


def test_holding_out_all_but_one_class(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(HicaError, match="at least 2 seen classes"):
        run_unseen(_cfg(data_root, holdout=[["benign", "malignant"]]), tmp_path)
    assert not (tmp_path / "parts").exists()  # fails before writing anything


def test_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: busi\nholdouts: [malignant]\n")
    with pytest.raises(HicaError, match=r"bad\.yaml.*holdouts"):
        load_unseen_config(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("holdout: [normal, normal]\n")
    with pytest.raises(HicaError, match=r"dup\.yaml.*more than once"):
        load_unseen_config(dup)
    with pytest.raises(HicaError, match="unknown argument"):
        run_unseen(UnseenConfig(hica_args={"stepz": 1}), tmp_path)


def test_shipped_config() -> None:
    cfg = load_unseen_config(REPO / "configs" / "analysis" / "unseen_busi.yaml")
    assert cfg.holdout == [["malignant"], ["benign"], ["normal"]]
    assert cfg.k == 16 and cfg.seeds == [1, 2, 3] and cfg.hica_args == {"freeze_stages": 0}


def test_zero_shot_composed_from_attribute_profiles(data_root: Path, tmp_path: Path) -> None:
    """``zero_shot: attributes``: every class composed from its profile (probabilities), the attribute level
    scored per group against the mask-measured values, and both in the report."""
    if not (data_root / "busi").is_dir():
        pytest.skip(f"BUSI not found under {data_root}")
    res = run_unseen(_cfg(data_root, zero_shot="attributes", max_images=9), tmp_path)
    probs = np.array(json.loads((tmp_path / "parts" / "malignant__s1.json").read_text())["probs"])
    assert probs.shape == (9, 3) and np.allclose(probs.sum(1), 1, atol=1e-4) and (probs >= 0).all()
    for roi in ("proposed_roi", "mask_roi"):
        att = res["attribute_accuracy"][roi]
        assert {"presence", "shape", "margin"} <= set(att["before_alignment"])
        assert att["before_alignment"]["presence"]["n"] == 9  # every image: mass or no mass
        aligned = att["aligned"]["malignant"]["margin"]
        assert 0 <= aligned["balanced_accuracy"]["mean"] <= 1 and aligned["n"] >= 1
    table = (tmp_path / "table.md").read_text()
    assert "composed from its attribute profile" in table and "## Attribute level" in table
    assert "**Mask ROI**" in table and "**Proposed ROI (what the classifier sees)**" in table
