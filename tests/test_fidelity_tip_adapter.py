"""Tip-Adapter / Tip-Adapter-F against the official code (github.com/gaopengcuhk/Tip-Adapter), recomputed
here on hand-made features: cache keys (``utils.build_cache_model``), logits (``main.run_tip_adapter``), the
α/β lists and the search (``utils.search_hp``), Tip-Adapter-F's training inputs (``run_tip_adapter_F``);
grid-edge picks (``selection.edge_picks``) and their report; bad settings."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import hica.methods.tip_adapter as tip_mod
from hica.errors import HicaError
from hica.methods import ClassText, FewShotData, method_registry
from hica.methods.base import check_method_args
from hica.methods.selection import edge_picks, val_score, val_scores
from hica.report.tables import edge_counts, edge_table, summarize

pytestmark = pytest.mark.usefixtures("one_thread")

C, D, V, SCALE = 3, 6, 4, 50.0


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _toy(views: bool = True, seed: int = 0) -> tuple[FewShotData, torch.Tensor]:
    """2 support images per class with V views each, 2 validation and 3 test features per class."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.eye(C, D) + 0.3 * torch.rand(C, D, generator=g)

    def draw(n: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(C).repeat_interleave(n)
        return _unit(centre[y] + noise * torch.randn(len(y), D, generator=g)), y

    sx, sy = draw(2, 0.4)
    vx, vy = draw(2, 0.6)
    tx, _ = draw(3, 0.6)
    sv = _unit(sx[:, None, :] + 0.3 * torch.randn(len(sx), V, D, generator=g))
    text = _unit(centre[[1, 0, 2]] + 0.5 * torch.randn(C, D, generator=g))  # half-wrong text
    ct = ClassText(class_emb=text, prompt_emb=[text[i : i + 1] for i in range(C)], logit_scale=SCALE)
    data = FewShotData(sx, sy, vx, vy, C, text=ct, seed=seed, support_views=sv if views else None)
    return data, tx


def _official_logits(f, keys, labels, text, alpha, beta) -> torch.Tensor:
    """``main.run_tip_adapter`` with hica's scale convention (the encoder's logit scale, not a fixed 100)."""
    affinity = f @ keys.T
    cache = ((-1) * (beta - beta * affinity)).exp() @ torch.nn.functional.one_hot(labels, C).float()
    return SCALE * f @ text.T + alpha * cache


def _official_list(scale: float, step: int) -> list[float]:
    return [i * (scale - 0.1) / step + 0.1 for i in range(step)]


# ------------------------------------------------------------------------------------------- Tip-Adapter


def test_keys_are_the_renormalised_view_mean() -> None:
    data, _ = _toy()
    tip = method_registry()["tip_adapter"](views=V).fit(data)
    mean = data.support_views.sum(1) / V
    assert torch.allclose(tip.keys, mean / mean.norm(dim=-1, keepdim=True), atol=1e-6)
    assert torch.allclose(tip.keys.norm(dim=-1), torch.ones(len(tip.keys)), atol=1e-6)
    assert tip.selected["keys"] == f"views:{V}"
    two = method_registry()["tip_adapter"](views=2).fit(data)  # the first `views` views only
    assert torch.allclose(two.keys, _unit(data.support_views[:, :2].sum(1)), atol=1e-6)
    assert two.selected["keys"] == "views:2"


def test_without_views_the_keys_are_the_plain_features() -> None:
    data, _ = _toy(views=False)
    tip = method_registry()["tip_adapter"]().fit(data)
    assert torch.equal(tip.keys, data.support) and tip.selected["keys"] == "plain"


def test_views_needed_is_the_setting() -> None:
    cls = method_registry()["tip_adapter"]
    assert cls.views_needed(cls().hparams) == 10 == cls().hparams["views"]
    assert cls.views_needed(cls(views=3).hparams) == 3
    assert method_registry()["tip_adapter_f"].views_needed({"views": 7}) == 7
    with pytest.raises(HicaError, match=r"tip_adapter: views = 5 but only 4"):
        cls(views=5).fit(_toy()[0])


def test_search_lists_are_the_official_formula() -> None:
    cls = method_registry()["tip_adapter"]
    betas, alphas = cls(beta_below=[], alpha_below=[], alpha_above=[]).grids()
    assert betas == _official_list(50, 200) and alphas == _official_list(50, 20)  # search_step [200, 20]
    assert len(betas) * len(alphas) == 4000 and betas[0] == alphas[0] == 0.1
    assert betas[-1] >= 30 and alphas[-1] >= 30  # covers FGVC's [30, 30]; Flowers' [50, 50] is the max
    # the defaults extend the official lists outward (β and α below 0.1, α above the maximum), ascending
    eb, ea = cls().grids()
    tail = [100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0]
    assert eb == [0.001, 0.003, 0.01, 0.03, *betas] and ea == [0.001, 0.003, 0.01, 0.03, *alphas, *tail]
    assert all(y > x for x, y in itertools.pairwise(eb)) and all(y > x for x, y in itertools.pairwise(ea))
    b, a = cls(
        beta_max=7, beta_steps=200, alpha_max=3, alpha_steps=20, beta_below=[], alpha_below=[], alpha_above=[]
    ).grids()
    assert b == _official_list(7, 200) and a == _official_list(3, 20)
    assert all(y > x for x, y in itertools.pairwise(b)) and b[-1] < 7
    assert cls(betas=[1, 2], alphas=[0, 5]).grids() == ([1.0, 2.0], [0.0, 5.0])  # explicit grids win


@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 1.0), (1.17, 1.0), (3.0, 5.5), (47.5, 30.0)])
def test_logits_are_the_official_formula(alpha: float, beta: float) -> None:
    data, tx = _toy()
    tip = method_registry()["tip_adapter"](views=V, alphas=[alpha], betas=[beta]).fit(data)
    keys = _unit(data.support_views.mean(1))
    want = _official_logits(tx, keys, data.support_labels, data.text.class_emb, alpha, beta).softmax(-1)
    assert torch.allclose(tip.predict_proba(tx), want, atol=1e-5)
    assert (tip.selected["alpha"], tip.selected["beta"]) == (alpha, beta)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pick_is_the_brute_force_validation_argmax(seed: int) -> None:
    data, tx = _toy(seed=seed)
    args = {"views": V, "beta_max": 12, "beta_steps": 60, "alpha_max": 10, "alpha_steps": 20}
    args |= {"beta_below": [], "alpha_below": [], "alpha_above": []}  # the official lists only
    tip = method_registry()["tip_adapter"](**args).fit(data)
    keys = _unit(data.support_views.mean(1))
    scores = {}
    for i, b in enumerate(_official_list(12, 60)):  # the official loop over every (β, α)
        for j, a in enumerate(_official_list(10, 20)):
            lg = _official_logits(data.val, keys, data.support_labels, data.text.class_emb, a, b)
            scores[(i, j)] = ((b, a), val_score(lg.softmax(-1), data.val_labels))
    top = max(s[:2] for _, s in scores.values())
    tied = [ij for ij, (_, s) in scores.items() if s[:2] == top]  # the best accuracy's plateau
    centre = np.mean(tied, axis=0)
    pick = min(
        tied, key=lambda ij: (round(float(np.hypot(*(np.array(ij) - centre))), 9), -scores[ij][1][2], ij)
    )
    best, best_s = scores[pick]
    assert (tip.selected["beta"], tip.selected["alpha"]) == best and tip.selected["tied"] == len(tied)
    assert tip.selected["val_accuracy"] == pytest.approx(best_s[0])
    assert tip.selected["edge"] == edge_picks(
        {"beta": best[0], "alpha": best[1]}, {"beta": _official_list(12, 60), "alpha": _official_list(10, 20)}
    )
    want = _official_logits(tx, keys, data.support_labels, data.text.class_emb, best[1], best[0])
    assert torch.allclose(tip.predict_proba(tx), want.softmax(-1), atol=1e-5)


def test_extension_outside_the_official_range_is_checked() -> None:
    cls = method_registry()["tip_adapter"]
    with pytest.raises(HicaError, match="beta_below"):
        cls(beta_below=[0.05, 0.2])
    with pytest.raises(HicaError, match="alpha_above"):
        cls(alpha_above=[20.0])
    with pytest.raises(HicaError, match="alpha_below"):
        cls(alpha_below=[0.01, 0.1])


def test_ties_go_to_the_centre_of_the_plateau() -> None:
    data, _ = _toy()
    tip = method_registry()["tip_adapter"](views=V, alphas=[0.0], betas=[1, 2, 3]).fit(data)  # all equal
    assert tip.selected["beta"] == 2.0 and tip.selected["edge"] == [] and tip.selected["tied"] == 3


def test_batched_scores_match_val_score() -> None:
    g = torch.Generator().manual_seed(3)
    probs = torch.randn(7, 9, C, generator=g).softmax(-1)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    for p, s in zip(probs, val_scores(probs, labels), strict=True):
        ref = val_score(p, labels)
        assert s[:2] == ref[:2] and s[2] == pytest.approx(ref[2], rel=1e-6)


# ----------------------------------------------------------------------------------------- Tip-Adapter-F


def test_f_trains_on_a_fresh_view_each_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = _toy()
    drawn: list[tuple[int, int]] = []
    inputs: list[torch.Tensor] = []
    real_index, real_inputs = tip_mod.train_view_index, tip_mod.TipAdapterF._train_inputs

    def spy_index(epoch: int, n_views: int) -> int:
        drawn.append((epoch, real_index(epoch, n_views)))
        return drawn[-1][1]

    def spy_inputs(self, data_: FewShotData, epoch: int) -> torch.Tensor:
        inputs.append(real_inputs(self, data_, epoch))
        return inputs[-1]

    monkeypatch.setattr(tip_mod, "train_view_index", spy_index)
    monkeypatch.setattr(tip_mod.TipAdapterF, "_train_inputs", spy_inputs)
    tipf = method_registry()["tip_adapter_f"](views=V, epochs=6).fit(data)
    assert drawn == [(e, e % V) for e in range(6)]
    assert all(a[1] != b[1] for a, b in itertools.pairwise(drawn))  # a different view in each epoch
    for (_, v), x in zip(drawn, inputs, strict=True):
        assert torch.equal(x, data.support_views[:, v])
    assert tipf.selected["keys"] == f"views:{V}"


def test_f_starts_from_the_view_mean_keys_and_uses_the_official_optimiser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, _ = _toy()
    seen: dict = {}
    real = torch.optim.AdamW

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, params, **kw) -> None:
            params = list(params)
            seen.update(kw, init=params[0].detach().clone())
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    cls = method_registry()["tip_adapter_f"]
    tipf = cls(views=V).fit(data)
    assert torch.allclose(seen["init"], _unit(data.support_views.mean(1)), atol=1e-6)
    assert seen["lr"] == 1e-3 and seen["eps"] == 1e-4  # main.run_tip_adapter_F, configs' lr
    h = cls().hparams
    assert (h["epochs"], h["batch_size"]) == (20, 256)  # train_epoch, the loaders' batch size
    assert not torch.allclose(tipf.keys, seen["init"])  # trained


def test_f_is_deterministic() -> None:
    data, tx = _toy()
    a = method_registry()["tip_adapter_f"](views=V, epochs=5).fit(data)
    b = method_registry()["tip_adapter_f"](views=V, epochs=5).fit(data)
    assert torch.equal(a.keys, b.keys) and a.selected == b.selected
    assert torch.equal(a.predict_proba(tx), b.predict_proba(tx))


def test_f_without_views_trains_on_the_plain_features() -> None:
    data, _ = _toy(views=False)
    tipf = method_registry()["tip_adapter_f"](epochs=3).fit(data)
    assert tipf.selected["keys"] == "plain" and not torch.equal(tipf.keys, data.support)


# ------------------------------------------------------------------------------------- edges and reports


def test_edge_picks() -> None:
    grids = {"beta": [1, 2, 3], "alpha": [0.5, 1], "c": [7]}
    assert edge_picks({"beta": 1, "alpha": 0.5, "c": 7}, grids) == ["beta", "alpha"]
    assert edge_picks({"beta": 3, "alpha": 1}, grids) == ["beta", "alpha"]
    assert edge_picks({"beta": 2, "c": 7, "other": 1}, grids) == []  # one-value grids, no grid: no edge


def _rec(method: str, k: int, seed: int, edge: list[str] | None) -> dict:
    m = {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.5, "auc": 0.5}
    selected = {} if edge is None else {"edge": edge}
    return {"dataset": "d", "method": method, "k": k, "seed": seed, "metrics": m, "selected": selected}


def test_edge_counts_in_summary_and_table() -> None:
    recs = [_rec("zeroshot", 0, 0, None)]
    recs += [_rec("tip_adapter", 2, s, e) for s, e in enumerate([["beta"], [], ["beta", "alpha"]])]
    recs += [_rec("clap", 2, s, []) for s in range(3)]
    rows = {r["method"]: r for r in summarize(recs)}
    assert "edge_picks" not in rows["zeroshot"]
    assert rows["tip_adapter"]["edge_picks"] == {"n": 2, "of": 3, "by_setting": {"beta": 2, "alpha": 1}}
    assert edge_counts(recs[:1]) is None
    md = edge_table(recs, ["zeroshot", "tip_adapter", "clap"])
    assert "| tip_adapter | 2 of 3 (67%) | beta 2, alpha 1 | ⚠ > 5% |" in md
    assert "| clap | 0 of 3 (0%) | – |  |" in md and "zeroshot" not in md
    assert edge_table(recs[:1]) == ""  # runs without edges: results.md unchanged


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        ({"views": 0}, "views must be >= 1, got 0"),
        ({"views": -2}, "views must be >= 1"),
        ({"betas": []}, "betas must be a non-empty list"),
        ({"alphas": []}, "alphas must be a non-empty list"),
        ({"betas": [1, 3, 2]}, "betas must be in strictly ascending order"),
        ({"alphas": [1, 1]}, "alphas must be in strictly ascending order"),
        ({"beta_max": 0}, "beta_max must be > 0.1, got 0"),
        ({"alpha_max": -5}, "alpha_max must be > 0.1, got -5"),
        ({"beta_steps": 0}, "beta_steps must be >= 1"),
        ({"alpha_steps": 0}, "alpha_steps must be >= 1"),
    ],
)
@pytest.mark.parametrize("method", ["tip_adapter", "tip_adapter_f"])
def test_bad_settings_are_refused(method: str, args: dict, expect: str) -> None:
    with pytest.raises(HicaError) as err:
        method_registry()[method](**args)
    assert str(err.value).startswith(f"method {method}: ") and expect in str(err.value)
    with pytest.raises(HicaError, match=expect.split(",")[0].replace("[", r"\[")):
        check_method_args(method, args)
