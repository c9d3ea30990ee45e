"""The realistic few-shot protocol (arXiv 2506.17500): imbalanced K × C support sets drawn to the train prior,
no validation set, every method on its declared fixed settings, and no validation image ever read."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from needs import missing_data

from hica.config import load_config, validate_config
from hica.data.episodes import realistic_counts, sample_episode
from hica.data.sample import Dataset
from hica.errors import HicaError
from hica.eval.grid import config_hash
from hica.methods import ClassText, FewShotData, method_registry
from hica.methods.settings import fixed_settings

REPO = Path(__file__).resolve().parents[1]
FIXED = {  # method → its settings used without validation shots, and their declared defaults
    "prototype": {"fixed_temperature": 0.05},
    "knn": {"fixed_k": 1},
    "linear_probe": {"fixed_c": 100.0},
    "tip_adapter": {"fixed_alpha": 1.0, "fixed_beta": 1.0},
    "tip_adapter_f": {"fixed_alpha": 1.0, "fixed_beta": 1.0},
    "finetune": {"fixed_step": "last"},
    "hica": {"fixed_alpha": 0.5},
}


# ------------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize(
    ("prior", "n"),
    [([437, 210, 133], 3), ([437, 210, 133], 6), ([218, 105, 66], 48), ([1206, 3487], 2), ([1206, 3487], 32)]
    + [([100, 1, 1], 3), ([100, 1, 1], 12), ([2, 2, 1], 6), ([5, 5, 5, 1], 4), ([1, 1], 7)],
)
def test_realistic_counts_follow_the_prior_with_one_per_class(prior: list[int], n: int) -> None:
    counts = realistic_counts(np.array(prior), n)
    p = np.array(prior) / sum(prior)
    assert sum(counts) == n and min(counts) >= 1
    bumped = (np.floor(n * p) < 1).sum()  # classes raised to one image take theirs from the largest
    for c, k in enumerate(counts):
        assert abs(k - n * p[c]) < 1 + bumped, (c, counts)


def test_realistic_counts_refuse_impossible_requests() -> None:
    with pytest.raises(HicaError, match="cannot hold one of each"):
        realistic_counts(np.array([5, 5, 5]), 2)
    with pytest.raises(HicaError, match="positive"):
        realistic_counts(np.array([5, 0]), 4)


@pytest.mark.parametrize("name", ["busi", "chest_xray"])
def test_realistic_episodes_on_the_real_data(real, name: str) -> None:
    ds = real(name)
    c = len(ds.classes)
    train = {s.id: s.label for s in ds.split("train")}
    prior = np.bincount(list(train.values()), minlength=c)
    for k in (1, 2, 4, 8, 16):
        supports = []
        for seed in (1, 2, 3):
            ep = sample_episode(ds, k, seed, "realistic")
            assert ep == sample_episode(ds, k, seed, "realistic"), "deterministic per (dataset, K, seed)"
            assert ep.val == () and ep.protocol == "realistic" and len(ep.support) == k * c
            assert all(i in train for i in ep.support) and len(set(ep.support)) == len(ep.support)
            per_class = Counter(train[i] for i in ep.support)
            assert [per_class[j] for j in range(c)] == realistic_counts(prior, k * c)
            supports.append(ep.support)
        assert len(set(supports)) == 3, "seeds give different episodes"
    shuffled = Dataset(ds.name, ds.classes, {"train": ds.split("train")[::-1], "val": []})
    assert sample_episode(shuffled, 4, 1, "realistic") == sample_episode(ds, 4, 1, "realistic")


def test_episode_identity(real) -> None:
    ds = real("busi")
    std, rea = sample_episode(ds, 2, 1), sample_episode(ds, 2, 1, "realistic")
    assert "protocol" not in std.to_json()  # standard episodes are stored as before protocols existed
    assert rea.to_json()["protocol"] == "realistic" and rea.to_json()["val"] == ()
    with pytest.raises(HicaError, match="unknown protocol"):
        sample_episode(ds, 2, 1, "relaxed")


# ------------------------------------------------------------------------------------------ config


def _cfg(**kw) -> dict:
    return {"datasets": ["busi"], "methods": ["linear_probe", "hica"], "shots": [1], "seeds": [1], **kw}


def test_config_protocol_is_checked_and_hashed() -> None:
    from hica.eval.protocol import Benchmark

    with pytest.raises(HicaError, match="eval_split must be test"):
        validate_config(_cfg(protocol="realistic", eval_split="val"))
    with pytest.raises(HicaError, match="method linear_probe needs a fixed value for fixed_c"):
        validate_config(_cfg(protocol="realistic", method_args={"linear_probe": {"fixed_c": None}}))
    with pytest.raises(HicaError, match="protocol"):
        validate_config(_cfg(protocol="balanced"))
    validate_config(_cfg(method_args={"linear_probe": {"fixed_c": None}}))  # standard: never used
    std = Benchmark(validate_config(_cfg()), "unused", progress=False).scope
    rea = Benchmark(validate_config(_cfg(protocol="realistic")), "unused", progress=False).scope
    # standard configs keep their hash: no protocol key, no setting used only without validation
    assert "protocol" not in std and "fixed_c" not in std["method_args"]["linear_probe"]
    assert "fixed_alpha" not in std["method_args"]["hica"]
    assert rea["protocol"] == "realistic" and rea["method_args"]["linear_probe"]["fixed_c"] == 100.0
    assert rea["method_args"]["hica"]["fixed_alpha"] == 0.5
    assert config_hash(std) != config_hash(rea)
    other = Benchmark(
        validate_config(_cfg(protocol="realistic", method_args={"hica": {"fixed_alpha": 1}})), "u"
    )
    assert config_hash(other.scope) != config_hash(rea)


def test_committed_realistic_config_declares_every_fixed_value() -> None:
    cfg = load_config(REPO / "configs" / "benchmark_realistic.yaml")
    assert cfg.protocol == "realistic" and cfg.eval_split == "test"
    assert [d for d in cfg.datasets] == ["busi", "chest_xray"]
    reg = method_registry()
    for m in cfg.methods:
        declared = fixed_settings(reg[m].Settings)
        assert set(declared) <= set(cfg.method_args.get(m, {})), (m, declared)  # written out, not defaulted


def test_fixed_settings_and_their_defaults() -> None:
    reg = method_registry()
    for m, cls in reg.items():
        declared = fixed_settings(cls.Settings)
        expected = FIXED.get(m.split("_")[0] if m.startswith("hica") else m, {})
        assert {k: cls.defaults[k] for k in declared} == expected, m
        assert all(cls.check_settings({k: None})[k] is None for k in declared), m  # null: none declared


# ------------------------------------------------------------------------------------------ methods


def _imbalanced(seed: int = 0, d: int = 32) -> tuple[FewShotData, torch.Tensor]:
    """Support of 5 / 2 / 1 shots (classes 0 / 1 / 2) and no validation shots."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(3, d, generator=g), dim=-1)

    def draw(y: torch.Tensor) -> torch.Tensor:
        return F.normalize(means[y] + 0.2 * torch.randn(len(y), d, generator=g), dim=-1)

    y = torch.tensor([0] * 5 + [1] * 2 + [2])
    text = ClassText(class_emb=means, prompt_emb=[means[i : i + 1] for i in range(3)], logit_scale=50.0)
    empty = torch.empty(0, d)
    data = FewShotData(draw(y), y, empty, torch.empty(0, dtype=torch.long), 3, text=text, seed=1)
    data.support_views = F.normalize(data.support[:, None] + 0.05 * torch.randn(8, 3, d, generator=g), dim=-1)
    return data, draw(torch.arange(3).repeat_interleave(20))


FEATURE_METHODS = ["zeroshot", "prototype", "knn", "linear_probe", "lp_plus_plus", "tip_adapter"]
FEATURE_METHODS += ["tip_adapter_f", "clap"]
SMALL = {"tip_adapter": {"views": 3}, "tip_adapter_f": {"views": 3, "epochs": 3}, "clap": {"views": 3}}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_feature_methods_fit_and_predict_without_validation(name: str) -> None:
    data, tx = _imbalanced()
    cls = method_registry()[name]
    m = cls(**SMALL.get(name, {})).fit(data)
    p = m.predict_proba(tx)
    assert p.shape == (60, 3) and torch.isfinite(p).all()
    assert torch.allclose(p.sum(1), torch.ones(60), atol=1e-5)
    assert (p.argmax(1) == torch.arange(3).repeat_interleave(20)).float().mean() > 0.8
    fixed = FIXED.get(name, {})
    if fixed:
        assert m.selected["fixed"] == list(fixed)
        for k, v in fixed.items():
            picked = {"fixed_c": "C", "fixed_temperature": "temperature", "fixed_k": "k"}.get(k, k[6:])
            assert m.selected[picked] == v
    again = cls(**SMALL.get(name, {})).fit(_imbalanced()[0]).predict_proba(tx)
    assert torch.equal(p, again)


@pytest.mark.usefixtures("one_thread")
def test_linear_probe_fixed_c_default_is_weakly_regularised() -> None:
    """scikit-learn's C = 1 on unit-norm features of an imbalanced few-shot set mostly predicts the majority
    class and never the one-shot class (why ``fixed_c`` defaults to 100)."""
    data, tx = _imbalanced()
    strong = method_registry()["linear_probe"](fixed_c=1.0).fit(data).predict_proba(tx).argmax(1)
    weak = method_registry()["linear_probe"]().fit(data).predict_proba(tx).argmax(1)
    truth = torch.arange(3).repeat_interleave(20)
    assert (strong == 0).float().mean() > 0.75 and not (strong == 2).any()
    assert (strong == truth).float().mean() < 0.6 and (weak == truth).float().mean() > 0.9


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("name", "setting"), [(m, k) for m in FEATURE_METHODS for k in FIXED.get(m, {})])
def test_selection_without_validation_or_fixed_value_names_the_setting(name: str, setting: str) -> None:
    data, _ = _imbalanced()
    with pytest.raises(HicaError, match=f"no validation shots.*set {setting} in its method_args"):
        method_registry()[name](**{**SMALL.get(name, {}), setting: None}).fit(data)


# ------------------------------------------------------------------------------------------ end to end

TRAIN = {"benign": 4, "malignant": 2, "normal": 2}  # an imbalanced train split


@pytest.fixture(scope="module")
def imbalanced_folder(tmp_path_factory) -> Path:
    from conftest import find_data_root

    src = find_data_root() / "busi" / "Dataset_BUSI_with_GT"
    if not src.is_dir():
        missing_data(f"real data not found at {src}")
    dst = tmp_path_factory.mktemp("imbalanced")
    for cls, n_train in TRAIN.items():
        files = sorted(p for p in (src / cls).glob("*).png"))
        for split, chunk in (("train", files[:n_train]), ("val", files[10:12]), ("test", files[20:22])):
            (dst / split / cls).mkdir(parents=True)
            for f in chunk:
                shutil.copy2(f, dst / split / cls / f.name)
    return dst


ALL = ["zeroshot", "prototype", "knn", "linear_probe", "lp_plus_plus", "tip_adapter", "tip_adapter_f", "clap"]
ALL += ["finetune", "hica"]


@pytest.mark.usefixtures("one_thread")
def test_realistic_benchmark_never_reads_a_validation_image(imbalanced_folder, tmp_path, monkeypatch) -> None:
    """Every method fits and predicts on realistic episodes, and nothing under ``val/`` is opened: no image
    file (every read goes through PIL.Image.open) and no feature-cache request for the val split."""
    from PIL import Image

    from hica.cache import FeatureCache
    from hica.jobs.benchmark import run_benchmark

    opened: list[str] = []
    splits: list[str] = []
    real_open, real_get, real_views = Image.open, FeatureCache.get, FeatureCache.views

    def spy_open(fp, *a, **kw):
        opened.append(str(fp))
        return real_open(fp, *a, **kw)

    def spy_get(self, encoder, dataset, split, *a, **kw):
        splits.append(split)
        return real_get(self, encoder, dataset, split, *a, **kw)

    def spy_views(self, encoder, dataset, split, *a, **kw):
        splits.append(split)
        return real_views(self, encoder, dataset, split, *a, **kw)

    monkeypatch.setattr(Image, "open", spy_open)
    monkeypatch.setattr(FeatureCache, "get", spy_get)
    monkeypatch.setattr(FeatureCache, "views", spy_views)
    small = {**SMALL, "lp_plus_plus": {"epochs": 20}, "clap": {"views": 3, "epochs": 5}}
    small |= {
        "finetune": {"steps": 2, "batch_size": 4},
        "hica": {"steps": 1, "head_steps": 2, "batch_size": 3},
    }
    spec = {"path": str(imbalanced_folder), "format": "imagefolder", "descriptors": "busi", "name": "imb"}
    cfg = validate_config(
        {
            "protocol": "realistic",
            "datasets": [spec],
            "encoder": {"name": "default", "args": {"image_size": 64}},
            "shots": [2],
            "seeds": [1],
            "methods": ALL,
            "method_args": small,
            "bootstrap": 10,
            "cache_dir": str(tmp_path / "cache"),
            "device": "cpu",
            "precision": "fp32",
        }
    )
    result = run_benchmark(cfg, tmp_path / "run", progress=False)

    assert opened and not [p for p in opened if f"{imbalanced_folder}/val/" in p]
    assert any(f"{imbalanced_folder}/test/" in p for p in opened)
    assert set(splits) == {"train", "test"}
    runs = {r["method"]: r for r in result["runs"]}
    assert set(runs) == set(ALL)
    for name, r in runs.items():
        assert r["metrics"]["accuracy"] == r["metrics"]["accuracy"], name  # scored
        if name == "zeroshot":
            continue
        ep = r["episode"]
        assert ep["protocol"] == "realistic" and ep["val"] == [] and len(ep["support"]) == 6
        assert Counter(i.split("/")[1] for i in ep["support"]) == {"benign": 3, "malignant": 2, "normal": 1}
        if name in FIXED and name != "hica":
            assert r["selected"]["fixed"] == list(FIXED[name]), name
    assert runs["hica"]["selected"]["alpha"] == 0.5 and runs["hica"]["selected"]["val_accuracy"] is None
    assert runs["finetune"]["selected"] == {"best_step": 2, "fixed": ["fixed_step"]}
    assert "Protocol: **realistic**" in (tmp_path / "run" / "results.md").read_text()
    episode_files = list((tmp_path / "run" / "episodes").glob("*.json"))
    assert [json.loads(p.read_text())["protocol"] for p in episode_files] == ["realistic"]
    # the spies do see validation reads: the standard protocol's episode reads its validation shots
    opened.clear()
    splits.clear()
    standard = cfg.model_copy(update={"protocol": "standard", "methods": ["prototype"], "method_args": {}})
    run_benchmark(standard, tmp_path / "standard", progress=False)
    assert [p for p in opened if f"{imbalanced_folder}/val/" in p] and "val" in splits
