"""Augmented views of support images: cached once, deterministic, extended lazily, handed to methods."""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import load_file, save_file

from hica.cache import FeatureCache, view_rng_seed
from hica.config import validate_config
from hica.data.catalog import load_dataset
from hica.data.episodes import sample_episode
from hica.encoders import create_encoder
from hica.eval.episode_data import view_augment
from hica.eval.protocol import Benchmark
from hica.methods.base import _METHODS, FewShotData, Method, register_method
from hica.methods.settings import MethodSettings

SIZE = 64  # small images: the real default encoder, fast


@pytest.fixture(scope="module")
def enc():
    return create_encoder("default", image_size=SIZE).eval()


@pytest.fixture
def busi(tiny_busi):
    ds = load_dataset("busi", tiny_busi.root)
    return ds, ds.split("train")[:3]


def test_views_are_deterministic_and_distinct(enc, busi, tmp_path, one_thread) -> None:
    ds, samples = busi
    aug = view_augment(enc, ds)
    assert aug.key["modality"] == "ultrasound" and aug.key["size"] == SIZE
    cache = FeatureCache(tmp_path / "a", precision="fp32")
    rng = torch.get_rng_state()
    v = cache.views(enc, ds, "train", samples, 2, aug, view_seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched
    assert v.shape == (3, 2, enc.embed_dim) and v.dtype == torch.float32
    assert cache.view_misses == 6
    assert torch.equal(cache.views(enc, ds, "train", samples, 2, aug), v) and cache.view_hits == 6
    assert torch.equal(
        FeatureCache(tmp_path / "a", precision="fp32").views(enc, ds, "train", samples, 2, aug), v
    )
    # computed afresh, in another order and one image at a time: the same bytes
    fresh = FeatureCache(tmp_path / "b", precision="fp32")
    for i in (2, 0, 1):
        assert torch.equal(fresh.views(enc, ds, "train", [samples[i]], 2, aug)[0], v[i])
    plain = cache.get(enc, ds, "train", samples, progress=False).global_
    assert not torch.allclose(v[:, 0], v[:, 1]) and not torch.allclose(v[:, 0], plain)
    other = FeatureCache(tmp_path / "a", precision="fp32").views(
        enc, ds, "train", samples, 2, aug, view_seed=1
    )
    assert not torch.allclose(other, v)  # the view seed is part of the key
    assert len(list((tmp_path / "a" / "views").iterdir())) == 2
    assert view_rng_seed(0, "a", 1) == view_rng_seed(0, "a", 1) != view_rng_seed(0, "a", 2)


def test_more_views_computes_only_the_new_ones(enc, busi, tmp_path, one_thread) -> None:
    ds, samples = busi
    aug = view_augment(enc, ds)
    cache = FeatureCache(tmp_path, precision="fp32")
    v2 = cache.views(enc, ds, "train", samples[:2], 2, aug)
    calls: list[int] = []
    real = enc.encode_image

    def counting(x: torch.Tensor) -> Any:
        calls.append(len(x))
        return real(x)

    enc.encode_image = counting
    try:
        v3 = cache.views(enc, ds, "train", samples[:2], 3, aug)
    finally:
        del enc.encode_image
    assert cache.view_misses == 4 + 2 and len(calls) == 1  # views 2 of the two images: one batch
    assert torch.equal(v3[:, :2], v2)
    # another image of the split is added without touching the stored ones
    v_all = cache.views(enc, ds, "train", samples, 3, aug)
    assert cache.view_misses == 6 + 3 and torch.equal(v_all[:2], v3)
    meta = _meta(cache, enc, ds, aug)
    assert meta["count"] == 9 and meta["view_seed"] == 0


def _path(cache, enc, ds, aug, seed: int = 0):
    return cache.views_file(cache.views_key(enc, ds, "train", aug, seed))


def _meta(cache, enc, ds, aug) -> dict:
    from safetensors import safe_open

    with safe_open(str(_path(cache, enc, ds, aug)), framework="pt") as f:
        return json.loads(f.metadata()["hica_views"])


def test_a_broken_views_file_is_not_reused(enc, busi, tmp_path, caplog, one_thread) -> None:
    ds, samples = busi
    aug = view_augment(enc, ds)
    cache = FeatureCache(tmp_path, precision="fp32")
    v = cache.views(enc, ds, "train", samples, 2, aug)
    path = _path(cache, enc, ds, aug)
    good = path.read_bytes()
    meta = _meta(cache, enc, ds, aug)
    tensors = {k: t.clone() for k, t in load_file(str(path)).items()}  # not a map of the file we overwrite
    broken = {
        "garbage": lambda: path.write_bytes(b"not a safetensors file"),
        "rows missing": lambda: save_file(
            {"views": tensors["views"][:-1]}, str(path), metadata={"hica_views": json.dumps(meta)}
        ),
        "other seed": lambda: save_file(
            tensors, str(path), metadata={"hica_views": json.dumps({**meta, "view_seed": 7})}
        ),
        "count": lambda: save_file(
            tensors, str(path), metadata={"hica_views": json.dumps({**meta, "count": 4})}
        ),
    }
    for name, spoil in broken.items():
        path.unlink()  # a new file: the cache may still map the old one
        spoil()
        before = cache.view_misses
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hica.cache"):
            again = cache.views(enc, ds, "train", samples, 2, aug)
        assert cache.view_misses - before == 6, name  # recomputed, not reused
        assert str(path) in caplog.text, name
        assert torch.equal(again, v), name
        assert path.read_bytes() == good, name


# -- the protocol hands views to methods -----------------------------------------------------------------


class _ViewSettings(MethodSettings):
    views: int = 2


class _ViewProbe(Method):
    """Records what ``fit`` was given; predicts uniformly."""

    Settings = _ViewSettings
    seen: ClassVar[list[FewShotData]] = []

    @classmethod
    def views_needed(cls, hparams: Any) -> int:
        return hparams["views"]

    def fit(self, data: FewShotData) -> _ViewProbe:
        type(self).seen.append(data)
        self.c = data.num_classes
        return self

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return torch.full((len(features), self.c), 1 / self.c)


NAME = "_test_view_probe"


@pytest.fixture
def probe():
    register_method(NAME)(_ViewProbe)
    _ViewProbe.seen.clear()
    yield _ViewProbe
    _METHODS.pop(NAME, None)


def _bench(root, tmp_path, views: int) -> Benchmark:
    raw = {
        "datasets": ["busi"],
        "encoder": {"name": "default", "args": {"image_size": SIZE}},
        "methods": [NAME],
        "method_args": {NAME: {"views": views}},
        "data_root": str(root),
        "cache_dir": str(tmp_path / "cache"),
        "precision": "fp32",
        "device": "cpu",
    }
    return Benchmark(validate_config(raw), tmp_path / f"out{views}", progress=False)


def test_protocol_passes_the_first_n_views(enc, tiny_busi, tmp_path, probe, one_thread) -> None:
    ds = load_dataset("busi", tiny_busi.root)
    ep = sample_episode(ds, 1, 1)
    none = _bench(tiny_busi.root, tmp_path, 0)
    assert "view_seed" not in none.scope  # unchanged config hash when no method uses views
    st = none.state(enc, ds)
    none.fit(enc, st, NAME, 1, ep)
    assert probe.seen[-1].support_views is None and none.cache.view_misses == 0
    two, three = _bench(tiny_busi.root, tmp_path, 2), _bench(tiny_busi.root, tmp_path, 3)
    assert two.scope["view_seed"] == 0
    three.fit(enc, st, NAME, 1, ep)
    two.fit(enc, st, NAME, 1, ep)
    v3, v2 = probe.seen[-2].support_views, probe.seen[-1].support_views
    n = len(ep.support)
    assert v3.shape == (n, 3, enc.embed_dim) and v2.shape == (n, 2, enc.embed_dim)
    assert torch.allclose(v2.norm(dim=-1), torch.ones(n, 2), atol=1e-5)
    assert torch.equal(v2, v3[:, :2]) and two.cache.view_misses == 0  # the first two of the three stored
    assert probe.seen[-1].support.shape == (n, enc.embed_dim)
