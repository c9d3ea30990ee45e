"""The support-trained text head of the text-using feature baselines (``hica.methods.text_head``).

Real default encoder (its untrained projection head) and the BUSI descriptors; support features are
synthetic clusters, one per class, so what a trained head must achieve is known: its class texts classify
the support features that the untrained head cannot.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hica.config import BenchmarkConfig, TextHeadConfig
from hica.data.descriptors import load_descriptors
from hica.encoders import create_encoder
from hica.errors import HicaError
from hica.methods.hica import HiCASettings
from hica.methods.text_head import EpisodeText, SupportTextHead
from hica.model.class_text import build_class_text

CLASSES = ["benign", "malignant", "normal"]


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    return create_encoder("default", image_size=64)


def clusters(dim: int, per_class: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit features around one random centre per class, and their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(len(CLASSES), dim, generator=g), dim=-1)
    y = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    x = F.normalize(centres[y] + 0.3 * torch.randn(len(y), dim, generator=g) / dim**0.5, dim=-1)
    return x, y


def accuracy(text_emb: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x @ text_emb.T).argmax(1) == y).float().mean())


def test_trained_head_aligns_class_text_with_the_support(encoder) -> None:
    desc = load_descriptors("busi")
    before = build_class_text(encoder, desc, CLASSES)
    x, y = clusters(before.class_emb.shape[1])
    proj0 = {k: v.clone() for k, v in encoder.text_proj.state_dict().items()}
    head = SupportTextHead(encoder, desc, CLASSES)
    text, losses = head.fit(x, y, seed=1)
    # label-aware InfoNCE with 4 images per class cannot fall below log 4: it ends near that floor
    assert len(losses) == 100 and losses[0] > math.log(4) + 0.8 and losses[-1] < math.log(4) + 0.2
    assert accuracy(text.class_emb, x, y) == 1.0
    assert accuracy(before.class_emb, x, y) < 1.0  # the untrained head does not do it by itself
    # same layout as the encoder's class text: prompts per class, normalised, the encoder's logit scale
    assert [len(p) for p in text.prompt_emb] == [len(p) for p in before.prompt_emb]
    assert torch.allclose(text.class_emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert text.logit_scale == pytest.approx(before.logit_scale)
    assert text.class_norm is not None and (text.class_norm > 0).all()
    # the encoder's own head is untouched
    for k, v in encoder.text_proj.state_dict().items():
        assert torch.equal(v, proj0[k])


def test_same_seed_same_head_other_support_other_head(encoder) -> None:
    desc = load_descriptors("busi")
    head = SupportTextHead(encoder, desc, CLASSES, steps=5)
    x, y = clusters(encoder.embed_dim)
    a, _ = head.fit(x, y, seed=3)
    b, _ = head.fit(x, y, seed=3)
    c, _ = head.fit(*clusters(encoder.embed_dim, seed=1), seed=3)
    assert torch.equal(a.class_emb, b.class_emb)
    assert not torch.allclose(a.class_emb, c.class_emb)


def test_bad_input_is_named(encoder) -> None:
    desc = load_descriptors("busi")
    with pytest.raises(HicaError, match="steps must be >= 1"):
        SupportTextHead(encoder, desc, CLASSES, steps=0)
    head = SupportTextHead(encoder, desc, CLASSES, steps=1)
    with pytest.raises(HicaError, match="need support features"):
        head.fit(torch.empty(0, encoder.embed_dim), torch.empty(0, dtype=torch.long), seed=0)
    with pytest.raises(HicaError, match="text_proj"):
        SupportTextHead(SimpleNamespace(name="open_clip"), desc, CLASSES)


def test_episode_text_passes_the_encoder_text_through_or_trains_one(encoder) -> None:
    desc = load_descriptors("busi")
    ds = SimpleNamespace(name="busi", classes=CLASSES)
    own = build_class_text(encoder, desc, CLASSES)
    x, y = clusters(own.class_emb.shape[1])
    assert EpisodeText(TextHeadConfig().model_dump()).text(encoder, ds, desc, own, x, y, 1) is own
    sup = EpisodeText(TextHeadConfig(source="support", steps=20).model_dump())
    got = sup.text(encoder, ds, desc, own, x, y, 1)
    assert got is not own and got.class_emb.shape == own.class_emb.shape
    assert accuracy(got.class_emb, x, y) == 1.0
    with pytest.raises(HicaError, match="no class descriptors"):
        sup.text(encoder, SimpleNamespace(name="other", classes=CLASSES), None, own, x, y, 1)


def test_defaults_are_hicas_head_phase() -> None:
    c, h = TextHeadConfig(), HiCASettings()
    assert (c.steps, c.lr, c.temperature) == (h.head_steps, h.head_lr, h.temperature)


def test_config_refuses_zero_shot_with_a_support_head_and_bad_values() -> None:
    base = {"datasets": ["busi"], "methods": ["tip_adapter"]}
    assert BenchmarkConfig(**base).text_head.source == "encoder"
    assert BenchmarkConfig(**base, text_head={"source": "support"}).text_head.steps == 100
    with pytest.raises(ValueError, match="zeroshot"):
        BenchmarkConfig(datasets=["busi"], methods=["zeroshot", "clap"], text_head={"source": "support"})
    for bad in ({"source": "hica"}, {"source": "support", "steps": 0}, {"lr": 0}, {"epochs": 3}):
        with pytest.raises(ValueError):
            BenchmarkConfig(**base, text_head=bad)


def test_config_hash_keeps_old_runs_and_covers_the_support_head(tmp_path) -> None:
    from hica.eval.protocol import Benchmark

    base = {"datasets": ["busi"], "methods": ["tip_adapter"], "cache_dir": str(tmp_path)}
    assert "text_head" not in Benchmark(BenchmarkConfig(**base), tmp_path / "a", progress=False).scope
    scope = Benchmark(
        BenchmarkConfig(**base, text_head={"source": "support"}), tmp_path / "b", progress=False
    ).scope
    assert scope["text_head"]["source"] == "support"


def test_trained_head_keeps_the_encoders_prompt_lengths(encoder) -> None:
    """Training sets directions only: CLAP's prototype lengths (``class_norm``) stay the encoder's."""
    desc = load_descriptors("busi")
    own = build_class_text(encoder, desc, CLASSES)
    text, _ = SupportTextHead(encoder, desc, CLASSES).fit(*clusters(encoder.embed_dim), seed=1)
    assert not torch.allclose(text.class_emb, own.class_emb, atol=1e-3)  # the directions moved
    # a class's mean raw prompt is at most as long as its prompts under the encoder's head; without keeping
    # those lengths the trained head's raw output grows about tenfold
    lengths = SupportTextHead(encoder, desc, CLASSES).lengths.squeeze(-1)
    assert (text.class_norm <= lengths.max() + 1e-4).all()
    assert ((text.class_norm / own.class_norm) < 2).all() and ((text.class_norm / own.class_norm) > 0.5).all()


@pytest.mark.usefixtures("one_thread")
def test_benchmark_gives_only_text_methods_a_head_trained_on_the_support_features(
    encoder, tiny_busi, tmp_path, monkeypatch
) -> None:
    """End to end on a tiny BUSI copy: the head is trained once per episode, from that episode's support
    features (one row per support image, its labels), and only text-using methods receive it."""
    from hica.config import validate_config
    from hica.jobs.benchmark import run_benchmark
    from hica.methods import text_head as th
    from hica.methods.tip_adapter import TipAdapter

    fits: list[tuple[int, list[int]]] = []
    got: dict[str, object] = {}
    real_fit, real_init = th.SupportTextHead.fit, TipAdapter._init

    def spy_fit(self, support, labels, seed):
        fits.append((support.shape[0], labels.tolist()))
        return real_fit(self, support, labels, seed)

    def spy_init(self, data):  # both Tip-Adapters read their text here
        got[self.name] = data.text
        return real_init(self, data)

    monkeypatch.setattr(th.SupportTextHead, "fit", spy_fit)
    monkeypatch.setattr(TipAdapter, "_init", spy_init)
    cfg = validate_config(
        {
            "datasets": ["busi"],
            "data_root": str(tiny_busi.root),
            "encoder": {"name": "default", "args": {"image_size": 64}},
            "shots": [1],
            "seeds": [1],
            "methods": ["prototype", "tip_adapter", "tip_adapter_f"],
            "method_args": {"tip_adapter": {"views": 2}, "tip_adapter_f": {"views": 2, "epochs": 2}},
            "text_head": {"source": "support", "steps": 5},
            "bootstrap": 10,
            "cache_dir": str(tmp_path / "cache"),
            "device": "cpu",
            "precision": "fp32",
        }
    )
    result = run_benchmark(cfg, tmp_path / "run", progress=False)
    assert fits == [(3, [0, 1, 2])]  # one episode: K=1 × 3 classes, trained once for both methods
    assert got["tip_adapter"] is got["tip_adapter_f"]  # the same trained class text, not the encoder's
    own = build_class_text(encoder, load_descriptors("busi"), CLASSES)
    assert not torch.allclose(got["tip_adapter"].class_emb, own.class_emb, atol=1e-3)
    assert {r["method"] for r in result["runs"]} == {"prototype", "tip_adapter", "tip_adapter_f"}
