"""Descriptor YAML files, their loader, and the class-text bank."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from hica.data.descriptors import MODES, list_bundled, load_descriptors
from hica.errors import HicaError
from hica.model.class_text import build_class_text

EXPECTED = {
    "busi": ["benign", "malignant", "normal"],
    "chest_xray": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "benign_or_normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
}
BIRADS_GROUPS = {
    "shape",
    "orientation",
    "margin",
    "echo_pattern",
    "posterior_features",
    "associated_features",
}
CXR_GROUPS = {"opacity", "distribution", "air_bronchograms", "margins_silhouette", "pleura", "other"}

GOOD = """\
schema_version: 1
dataset: toy
modality: toy ultrasound
templates:
  - "toy ultrasound: {}."
  - "{} on toy ultrasound."
classes:
  cat:
    name: cat lesion
    synonyms: [feline lesion]
    description: ["A cat lesion is round."]
    attributes:
      shape: [a round mass, an oval mass]
      margin: [a circumscribed margin]
  dog:
    name: dog lesion
    description: ["A dog lesion is irregular."]
    attributes:
      shape: [an irregular mass]
"""


def _write(tmp_path: Path, text: str, name: str = "toy.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


class HashEncoder:
    """Deterministic stand-in for a DualEncoder text tower: each string hashes to a fixed vector."""

    def __init__(self, dim: int = 16, logit_scale: float | None = None) -> None:
        self.dim = dim
        self.calls: list[int] = []
        if logit_scale is not None:
            self.logit_scale = logit_scale

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        self.calls.append(len(texts))
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)) * 3.0)
        return torch.stack(rows).double()  # float64 on purpose: the bank must return float32


def test_bundled_ids() -> None:
    assert list_bundled() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_file_loads(name: str) -> None:
    d = load_descriptors(name)
    assert d.dataset == name
    assert d.classes == EXPECTED[name]
    assert d.references, "every bundled file cites its sources"
    for cls in d.classes:
        groups = d.attributes(cls)
        assert len(groups) >= 3, f"{name}/{cls} has {len(groups)} attribute groups"
        assert all(len(ps) >= 2 for ps in groups.values()), f"{name}/{cls}: a group with < 2 phrases"
        for mode in MODES:
            prompts = d.class_prompts(cls, mode)
            assert prompts and len(prompts) == len(set(prompts))
            assert all("{" not in p and "}" not in p for p in prompts)


def test_busi_uses_birads_groups() -> None:
    d = load_descriptors("busi")
    for cls in ("benign", "malignant"):
        assert set(d.attributes(cls)) >= BIRADS_GROUPS, cls
    assert "calcifications" in d.attributes("malignant")
    phrases = {g: " ".join(ps) for g, ps in d.attributes("malignant").items()}
    for word in ("spiculated", "angular", "microlobulated", "indistinct"):
        assert word in phrases["margin"]
    assert "taller-than-wide" in phrases["orientation"]
    assert "shadowing" in phrases["posterior_features"]
    benign = {g: " ".join(ps) for g, ps in d.attributes("benign").items()}
    assert "circumscribed" in benign["margin"] and "parallel" in benign["orientation"]
    assert "enhancement" in benign["posterior_features"]
    normal = " ".join(p for ps in d.attributes("normal").values() for p in ps)
    for tissue in ("skin", "subcutaneous fat", "fibroglandular", "Cooper's ligaments", "pectoralis"):
        assert tissue in normal


@pytest.mark.parametrize("name", ["chest_xray", "pneumoniamnist"])
def test_cxr_groups(name: str) -> None:
    d = load_descriptors(name)
    assert set(d.attributes("pneumonia")) == CXR_GROUPS
    assert "air bronchograms" in " ".join(d.attributes("pneumonia")["air_bronchograms"])
    assert "costophrenic" in " ".join(d.attributes("normal")["pleura"])


def test_no_phrase_shared_between_classes() -> None:
    for name in list_bundled():
        owner: dict[str, str] = {}
        for cls, _, phrase in load_descriptors(name).all_attribute_phrases():
            assert owner.setdefault(phrase, cls) == cls, f"{name}: {phrase!r}"


def test_prompt_modes(tmp_path: Path) -> None:
    d = load_descriptors(_write(tmp_path, GOOD))
    assert d.class_prompts("cat", "names") == [
        "toy ultrasound: cat lesion.",
        "cat lesion on toy ultrasound.",
        "toy ultrasound: feline lesion.",
        "feline lesion on toy ultrasound.",
    ]
    assert d.class_prompts("cat", "descriptions") == ["A cat lesion is round."]
    ensemble = d.class_prompts("cat", "ensemble")
    assert len(ensemble) == 4 + 1 + 3
    # No attribute_template: attribute phrases go through the first template.
    assert ensemble[-3:] == [
        "toy ultrasound: a round mass.",
        "toy ultrasound: an oval mass.",
        "toy ultrasound: a circumscribed margin.",
    ]
    assert d.all_attribute_phrases() == [
        ("cat", "shape", "a round mass"),
        ("cat", "shape", "an oval mass"),
        ("cat", "margin", "a circumscribed margin"),
        ("dog", "shape", "an irregular mass"),
    ]
    with pytest.raises(HicaError, match="unknown text mode"):
        d.class_prompts("cat", "everything")
    with pytest.raises(HicaError, match="no class 'bird'"):
        d.class_prompts("bird")


def test_bundled_attribute_sentence() -> None:
    d = load_descriptors("busi")
    assert "a breast ultrasound image showing a mass with spiculated margins." in d.class_prompts("malignant")
    for name in list_bundled():
        d = load_descriptors(name)
        for cls in d.classes:
            n_names = len(d.class_prompts(cls, "names"))
            n_ens = len(d.class_prompts(cls, "ensemble"))
            n_attr = sum(len(ps) for ps in d.attributes(cls).values())
            assert n_ens == n_names + len(d.class_prompts(cls, "descriptions")) + n_attr
            assert n_ens > n_names


def test_check_classes() -> None:
    d = load_descriptors("busi")
    d.check_classes(["normal", "benign", "malignant"], "busi")  # order does not matter
    with pytest.raises(HicaError) as e:
        d.check_classes(["benign", "malignant", "cyst"], "my_dataset")
    msg = str(e.value)
    assert "my_dataset" in msg and "busi.yaml" in msg
    assert "missing from the descriptors: ['cyst']" in msg and "not in the dataset: ['normal']" in msg


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("modality: toy ultrasound", "modality: toy ultrasound\ncolour: red", "colour: unknown key"),
        ("    name: dog lesion", "    name: dog lesion\n    gloss: x", "classes.dog.gloss: unknown key"),
        ('  - "{} on toy ultrasound."', '  - "toy ultrasound image"', "templates.1"),
        ('  - "{} on toy ultrasound."', '  - "{} and {}"', "exactly one"),
        ("      shape: [an irregular mass]", "      shape: []", "classes.dog.attributes.shape"),
        ("    attributes:\n      shape: [an irregular mass]", "    attributes: {}", "classes.dog.attributes"),
        ("      shape: [an irregular mass]", "      shape: [an oval mass]", "also listed under class 'cat'"),
        ("    name: dog lesion", "    name: '  '", "classes.dog.name"),
        ("  dog:\n    name", "  dog:\n    name: a\n  dog:\n    name", "duplicate key 'dog'"),
        ("dataset: toy", "dataset: [toy", "not valid YAML"),
    ],
)
def test_bad_files_name_file_and_key(tmp_path: Path, old: str, new: str, expect: str) -> None:
    assert old in GOOD
    p = _write(tmp_path, GOOD.replace(old, new, 1), "bad.yaml")
    with pytest.raises(HicaError) as e:
        load_descriptors(p)
    assert str(p) in str(e.value)
    assert expect in str(e.value)


def test_empty_class_and_not_a_mapping(tmp_path: Path) -> None:
    start = GOOD.index("  dog:")
    p = _write(tmp_path, GOOD[:start] + "  dog:\n", "empty.yaml")
    with pytest.raises(HicaError, match=r"empty\.yaml.*classes\.dog"):
        load_descriptors(p)
    p = _write(tmp_path, "- just\n- a list\n", "list.yaml")
    with pytest.raises(HicaError, match=r"list\.yaml.*expected a mapping"):
        load_descriptors(p)


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(HicaError, match="bundled id.*busi"):
        load_descriptors("no_such_dataset")
    with pytest.raises(HicaError, match="not found"):
        load_descriptors(tmp_path / "missing.yaml")


def test_build_class_text_shapes_and_norms() -> None:
    d = load_descriptors("busi")
    classes = ["malignant", "benign", "normal"]  # label order differs from file order
    enc = HashEncoder(dim=16)
    text = build_class_text(enc, d, classes, mode="ensemble", batch_size=7)
    assert text.class_emb.shape == (3, 16) and text.class_emb.dtype == torch.float32
    assert text.class_emb.device.type == "cpu"
    torch.testing.assert_close(text.class_emb.norm(dim=-1), torch.ones(3))
    assert [e.shape[0] for e in text.prompt_emb] == [len(d.class_prompts(c)) for c in classes]
    for e in text.prompt_emb:
        assert e.dtype == torch.float32
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(e.shape[0]))
    assert max(enc.calls) <= 7 and sum(enc.calls) == sum(len(d.class_prompts(c)) for c in classes)
    # class i's embedding is the normalised mean of class i's own prompts, in the requested order
    raw = enc.encode_text(d.class_prompts("benign")).float()
    mean = torch.nn.functional.normalize(raw, dim=-1).mean(0)
    torch.testing.assert_close(text.class_emb[1], mean / mean.norm())
    assert text.logit_scale == 100.0


def test_build_class_text_modes_and_scale() -> None:
    d = load_descriptors("chest_xray")
    names = build_class_text(HashEncoder(logit_scale=14.3), d, d.classes, mode="names")
    ens = build_class_text(HashEncoder(), d, d.classes, mode="ensemble")
    assert names.logit_scale == pytest.approx(14.3)
    for n, e in zip(names.prompt_emb, ens.prompt_emb, strict=True):
        assert n.shape[0] < e.shape[0]
    assert not torch.allclose(names.class_emb, ens.class_emb)
    with pytest.raises(HicaError, match="no entry in descriptor file"):
        build_class_text(HashEncoder(), d, ["normal", "covid"])
