"""Chest X-ray validation carved per patient: Kermany patient ids, whole patients on one side, determinism,
and a grid part of the old (per-image) carving is never reused."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hica.data.catalog import SPLIT_VERSIONS, VAL_FRACTION, load_dataset, split_version
from hica.data.formats.kermany import kermany_patient_id, patient_groups
from hica.data.sample import Dataset, Sample
from hica.data.splits import carve_validation_by_group
from hica.errors import HicaError


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1_bacteria_1.jpeg", "person1"),
        ("person1_virus_6.jpeg", "person1"),
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0629-0001-0002.jpeg", "IM-0629"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("NORMAL2-IM-0629-0001-0001.jpeg", "NORMAL2-IM-0629"),
        ("train/NORMAL/IM-0117-0001.JPEG", "IM-0117"),  # a path, any extension case
        ("scan_001.jpeg", None),
        ("person_bacteria_1.jpeg", None),
        ("IM-0115.jpeg", None),
        ("person1_bacteria_1.txt", None),
        ("", None),
    ],
)
def test_kermany_patient_id(name: str, patient: str | None) -> None:
    assert kermany_patient_id(name) == patient


def _samples(names: list[str], labels: list[int]) -> list[Sample]:
    return [
        Sample(id=f"train/{n}", label=y, path=Path("/nowhere") / n)
        for n, y in zip(names, labels, strict=True)
    ]


def test_unparseable_names_are_their_own_group_with_one_counted_warning(caplog) -> None:
    names = ["person1_virus_1.jpeg", "person1_virus_2.jpeg", "odd.jpeg", "odd2.png", "IM-0001-0001.jpeg"]
    with caplog.at_level(logging.WARNING, logger="hica.data.formats.kermany"):
        groups = patient_groups(_samples(names, [1, 1, 1, 0, 0]), "the test folder")
    assert groups == ["person1", "person1", "file:train/odd.jpeg", "file:train/odd2.png", "IM-0001"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("2 file name(s) in the test folder")


def _grouped(n_groups: int, seed: int = 0) -> tuple[list[Sample], list[str]]:
    """Two classes of patients with 1-5 images each, in a shuffled order."""
    rng = np.random.default_rng(seed)
    samples, groups = [], []
    for g in range(n_groups):
        label, size = g % 2, int(rng.integers(1, 6))
        for i in range(size):
            samples.append(Sample(id=f"p{g}_{i}", label=label, path=Path(f"/nowhere/p{g}_{i}.png")))
            groups.append(f"p{g}")
    order = rng.permutation(len(samples))
    return [samples[i] for i in order], [groups[i] for i in order]


def test_group_carving_keeps_groups_whole_stratified_and_deterministic() -> None:
    samples, groups = _grouped(200)
    train, val = carve_validation_by_group(samples, groups, 0.1, seed=0)
    of = dict(zip((s.id for s in samples), groups, strict=True))
    assert not {of[s.id] for s in train} & {of[s.id] for s in val}
    assert len(train) + len(val) == len(samples)
    per_class, val_class = Counter(s.label for s in samples), Counter(s.label for s in val)
    for c, n in per_class.items():
        assert val_class[c] == int(np.ceil(0.1 * n)), (c, val_class[c], n)  # met exactly here
    # deterministic, whatever the order of the samples; another seed gives another split
    back = carve_validation_by_group(samples[::-1], groups[::-1], 0.1, seed=0)
    assert sorted(s.id for s in back[1]) == sorted(s.id for s in val)
    assert [s.id for s in carve_validation_by_group(samples, groups, 0.1, seed=0)[1]] == [s.id for s in val]
    assert {s.id for s in carve_validation_by_group(samples, groups, 0.1, seed=1)[1]} != {s.id for s in val}
    assert [s.id for s in train] == [s.id for s in samples if s.id not in {v.id for v in val}]  # order kept


def test_group_carving_refuses_a_class_with_one_group() -> None:
    samples = _samples(["a1.png", "a2.png", "b1.png", "c1.png"], [0, 0, 1, 1])
    with pytest.raises(HicaError, match="class 0 has 1 group"):
        carve_validation_by_group(samples, ["a", "a", "b", "c"], 0.1, 0, "the test images")


def test_group_carving_with_only_large_groups_still_gives_both_sides() -> None:
    samples = _samples([f"x{i}.png" for i in range(20)], [0] * 10 + [1] * 10)
    groups = ["a"] * 5 + ["b"] * 5 + ["c"] * 5 + ["d"] * 5  # every group is over the 1-image target
    train, val = carve_validation_by_group(samples, groups, 0.1, 0)
    assert {s.label for s in val} == {0, 1} and {s.label for s in train} == {0, 1} and len(val) == 10


@pytest.fixture(scope="module")
def chest(data_root: Path) -> Dataset:
    if not (data_root / "chest_xray").is_dir():
        pytest.skip("chest_xray not found")
    return load_dataset("chest_xray", data_root)


def test_real_chest_xray_no_patient_on_both_sides(chest: Dataset, caplog) -> None:
    train, val = chest.split("train"), chest.split("val")
    pt = {kermany_patient_id(s.path.name) for s in train}
    pv = {kermany_patient_id(s.path.name) for s in val}
    assert None not in pt | pv  # every real name parses
    assert not pt & pv
    assert len(pt | pv) == 2846  # the training split's patients (issue 13)
    counts = chest.counts()
    total = {c: counts["train"][c] + counts["val"][c] for c in chest.classes}
    assert total == {"normal": 1341, "pneumonia": 3875}
    for c, n in total.items():  # the old fraction, per class
        assert counts["val"][c] == int(np.ceil(VAL_FRACTION * n)), (c, counts["val"][c])
    assert "carved per patient" in chest.notes[0]


def test_real_chest_xray_carving_is_deterministic(chest: Dataset, data_root: Path) -> None:
    again = load_dataset("chest_xray", data_root)
    assert [s.id for s in again.split("val")] == [s.id for s in chest.split("val")]
    assert again.fingerprint() == chest.fingerprint()


def test_split_version_names_only_changed_builtin_carvings() -> None:
    assert split_version("chest_xray") == SPLIT_VERSIONS["chest_xray"]
    assert split_version({"name": "chest_xray"}) == SPLIT_VERSIONS["chest_xray"]
    assert split_version({"name": "chest_xray", "path": "/x", "format": "imagefolder"}) is None
    assert split_version("busi") is None and split_version("imagefolder:/x") is None


def test_benchmark_part_of_another_split_version_is_recomputed(
    tiny_imagefolder, tmp_path, monkeypatch
) -> None:
    """The benchmark reuses a part only with the dataset's current split version (a dataset without one,
    like BUSI, adds nothing: its parts and the config hash stay as they were)."""
    import hica.eval.protocol as protocol
    from hica.config import validate_config
    from hica.jobs.benchmark import run_benchmark

    folder = tiny_imagefolder(n_train=6, n_test=2)
    cfg = validate_config(
        {
            "datasets": [{"path": str(folder), "format": "imagefolder", "name": "tiny"}],
            "encoder": {"name": "default", "args": {"image_size": 64}},
            "shots": [1],
            "seeds": [1],
            "methods": ["prototype"],
            "bootstrap": 10,
            "cache_dir": str(tmp_path / "cache"),
            "device": "cpu",
            "precision": "fp32",
        }
    )
    out = tmp_path / "run"

    def run(version: str | None) -> dict:
        monkeypatch.setattr(protocol, "split_version", lambda spec: version)
        return run_benchmark(cfg, out, progress=False)["timings"]["grid"]

    assert run(None)["parts_computed"] == 1
    assert "split_version" not in next((out / "parts").glob("*.json")).read_text()
    assert run(None)["parts_resumed"] == 1
    assert run("v1")["parts_computed"] == 1  # made before the version existed: not reused
    assert run("v1")["parts_resumed"] == 1
    assert run("v2")["parts_computed"] == 1
