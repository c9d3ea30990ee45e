"""Few-shot methods on synthetic features where the right answer is known."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from hica.errors import HicaError
from hica.methods import ClassText, FewShotData, method_registry
from hica.methods.selection import val_score

FEATURE_METHODS = [
    "zeroshot",
    "prototype",
    "knn",
    "linear_probe",
    "tip_adapter",
    "tip_adapter_f",
    "clap",
    "lp_plus_plus",
]
TEXT_METHODS = ["zeroshot", "tip_adapter", "tip_adapter_f", "clap", "lp_plus_plus"]
D, C = 64, 3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The tests' own reference computations are tiny: keep them single-threaded like the methods."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(n)


def _episode(k: int, seed: int = 0, text: str = "aligned", spread: float = 0.15, n_test: int = 300):
    """Class-conditional Gaussians on the sphere; text prototypes near (or away from) the class means."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(C, D, generator=g), dim=-1)

    def draw(n_per: int):
        y = torch.arange(C).repeat_interleave(n_per)
        x = F.normalize(means[y] + spread * torch.randn(len(y), D, generator=g), dim=-1)
        return x, y

    sx, sy = draw(k)
    vx, vy = draw(min(k, 4))
    tx, ty = draw(n_test // C)
    if text == "aligned":
        t = F.normalize(means + 0.2 * torch.randn(C, D, generator=g), dim=-1)
    elif text == "shuffled":
        t = F.normalize(means[[1, 2, 0]], dim=-1)
    else:
        t = F.normalize(torch.randn(C, D, generator=g), dim=-1)
    ct = ClassText(class_emb=t, prompt_emb=[t[i : i + 1] for i in range(C)], logit_scale=50.0)
    return FewShotData(sx, sy, vx, vy, C, text=ct, seed=seed), tx, ty


def _with_val_labels(data: FewShotData, val_labels: torch.Tensor) -> FewShotData:
    return FewShotData(data.support, data.support_labels, data.val, val_labels, C, data.text, data.seed)


def _acc(m, x, y) -> float:
    return (m.predict_proba(x).argmax(1) == y).float().mean().item()


def test_registry_lists_all_methods() -> None:
    reg = method_registry()
    assert set(FEATURE_METHODS) <= set(reg)
    assert {n for n in FEATURE_METHODS if reg[n].uses_text} == set(TEXT_METHODS)
    assert [n for n in FEATURE_METHODS if reg[n].zero_shot] == ["zeroshot"]


@pytest.mark.parametrize("name", FEATURE_METHODS)
@pytest.mark.parametrize("k", [1, 4, 16])
def test_valid_probabilities_and_determinism(name: str, k: int) -> None:
    data, tx, _ = _episode(k)
    cls = method_registry()[name]
    p1 = cls().fit(data).predict_proba(tx)
    p2 = cls().fit(data).predict_proba(tx)
    assert p1.shape == (len(tx), C) and p1.dtype == torch.float32
    assert torch.all(p1 >= 0) and torch.allclose(p1.sum(1), torch.ones(len(tx)), atol=1e-5)
    assert torch.equal(p1, p2)


@pytest.mark.parametrize("name", [m for m in FEATURE_METHODS if m != "zeroshot"])
def test_few_shot_methods_learn_from_images(name: str) -> None:
    """With uninformative text, 16 shots of separable data must give high accuracy; 1 shot beats chance."""
    cls = method_registry()[name]
    data, tx, ty = _episode(16, text="random")
    assert _acc(cls().fit(data), tx, ty) > 0.85
    data, tx, ty = _episode(1, seed=3, text="random")
    assert _acc(cls().fit(data), tx, ty) > 0.6


def test_zeroshot_follows_text() -> None:
    zs = method_registry()["zeroshot"]
    data, tx, ty = _episode(4, text="aligned")
    assert _acc(zs().fit(data), tx, ty) > 0.9
    data, tx, ty = _episode(4, text="shuffled")
    assert _acc(zs().fit(data), tx, ty) < 0.1


@pytest.mark.parametrize("name", TEXT_METHODS)
def test_text_methods_need_text(name: str) -> None:
    data, _, _ = _episode(2)
    data.text = None
    with pytest.raises(HicaError, match="text"):
        method_registry()[name]().fit(data)
    data, _, _ = _episode(2)
    data.text = ClassText(data.text.class_emb[:2], data.text.prompt_emb[:2])
    with pytest.raises(HicaError, match="2 class embeddings"):
        method_registry()[name]().fit(data)


@pytest.mark.parametrize("name", [m for m in FEATURE_METHODS if m != "zeroshot"])
def test_few_shot_methods_need_shots(name: str) -> None:
    data, _, _ = _episode(2)
    empty = FewShotData(
        torch.empty(0, D), torch.empty(0, dtype=torch.long), data.val, data.val_labels, C, data.text
    )
    with pytest.raises(HicaError, match="support"):
        method_registry()[name]().fit(empty)


def test_tip_adapter_alpha_zero_is_zero_shot() -> None:
    data, tx, _ = _episode(4)
    tip = method_registry()["tip_adapter"](alphas=(0.0,)).fit(data)
    zs = method_registry()["zeroshot"]().fit(data)
    assert torch.allclose(tip.predict_proba(tx), zs.predict_proba(tx), atol=1e-6)


def test_tip_adapter_cache_fixes_wrong_text() -> None:
    """With shuffled text, the cache must take over: large α chosen on validation, high test accuracy."""
    data, tx, ty = _episode(8, text="shuffled")
    tip = method_registry()["tip_adapter"]().fit(data)
    assert tip.selected["alpha"] >= 10 and _acc(tip, tx, ty) > 0.9


def test_tip_adapter_f_trains_the_keys() -> None:
    data, _, _ = _episode(8, text="random", spread=0.8)
    tip = method_registry()["tip_adapter"]().fit(data)
    tipf = method_registry()["tip_adapter_f"]().fit(data)
    assert torch.equal(tip.keys, data.support)
    shift = (tipf.keys - data.support).norm(dim=-1)
    assert shift.min() > 1e-3 and shift.max() < 1.0  # moved, but stayed near the support features


def test_linear_probe_selection_reads_validation() -> None:
    """lpclip's search on the validation shots (tests/test_fidelity_clap_lp.py checks it step by step): the
    coarse pick is the validation argmax over the coarse grid, recomputed here; the refinement stays within a
    decade of it; other validation labels change the pick."""
    data, _, _ = _episode(8, text="random", spread=0.3)
    lp = method_registry()["linear_probe"]
    x, y = data.support.double().numpy(), data.support_labels.numpy()
    grid = lp().hparams["c_grid"]

    def coarse_c(val_labels: torch.Tensor) -> float:
        scores = {}
        for c in grid:
            p = LogisticRegression(C=c, max_iter=1000).fit(x, y).predict_proba(data.val.double().numpy())
            scores[c] = val_score(torch.from_numpy(p).float(), val_labels)
        top = max(s[:2] for s in scores.values())
        tied = [grid.index(c) for c in grid if scores[c][:2] == top]  # the plateau: its centre, then log-loss
        centre = float(np.mean(tied))
        return grid[min(tied, key=lambda i: (round(abs(i - centre), 9), -scores[grid[i]][2], i))]

    permuted = (data.val_labels + 1) % C
    good, bad = lp().fit(data).selected, lp().fit(_with_val_labels(data, permuted)).selected
    for sel, labels in ((good, data.val_labels), (bad, permuted)):
        assert sel["C_coarse"] == coarse_c(labels) and sel["C_searched"][: len(grid)] == grid
        assert sel["C"] in sel["C_searched"] and abs(np.log10(sel["C"] / sel["C_coarse"])) <= 1
    assert good["C"] != bad["C"] and good["val_accuracy"] > bad["val_accuracy"]


@pytest.mark.parametrize("name", ["tip_adapter", "tip_adapter_f", "prototype", "knn"])
def test_selection_reads_validation(name: str) -> None:
    """Permuting the validation labels changes what is selected (the test set is never passed to fit)."""
    data, _, _ = _episode(8, text="random", spread=0.3)
    permuted = _with_val_labels(data, (data.val_labels + 1) % C)
    cls = method_registry()[name]
    good, bad = cls().fit(data).selected, cls().fit(permuted).selected
    assert good != bad and good["val_accuracy"] > bad["val_accuracy"]


def test_tip_adapter_search_matches_brute_force() -> None:
    data, _, _ = _episode(4, spread=0.8)
    tip = method_registry()["tip_adapter"]().fit(data)
    zs = 50.0 * data.val @ data.text.class_emb.T
    onehot = F.one_hot(data.support_labels, C).float()

    def score(b: float, a: float):
        aff = torch.exp(-b * (1 - data.val @ data.support.T)) @ onehot
        return val_score((zs + a * aff).softmax(-1), data.val_labels)

    grid = list(itertools.product(*tip.grids()))
    best = max(score(b, a)[:2] for b, a in grid)  # the plateau's accuracies (its centre is picked)
    assert score(tip.selected["beta"], tip.selected["alpha"])[:2] == best
    assert tip.selected["val_accuracy"] == best[0]


def test_clap_lambda_tracks_text_quality() -> None:
    """λ_c is the mean zero-shot probability of class c on its support shots: high for right text, and
    the class whose prototype is wrong is free to move further from it."""
    data, tx, ty = _episode(8, seed=1, text="aligned")
    t = data.text.class_emb.clone()
    t[2] = -t[2]  # class 2's prototype now points away from its images
    data.text = ClassText(class_emb=t, prompt_emb=data.text.prompt_emb, logit_scale=50.0)
    zs = method_registry()["zeroshot"]().fit(data)
    clap = method_registry()["clap"]().fit(data)
    lam, shift = clap.selected["lambda"], clap.selected["prototype_shift"]
    assert lam[0] > 0.5 and lam[1] > 0.5 and lam[2] < 0.1
    assert shift[2] > 2 * max(shift[0], shift[1])
    assert _acc(zs, tx, ty) < 0.7 < 0.9 < _acc(clap, tx, ty)


def test_clap_lambda_is_mean_true_class_probability() -> None:
    data, _, _ = _episode(4, text="random")
    p = (data.text.logit_scale * data.support @ data.text.class_emb.T).softmax(-1)
    want = [p[data.support_labels == c, c].mean().item() for c in range(C)]
    got = method_registry()["clap"]().fit(data).selected["lambda"]
    assert np.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("k", [1, 4, 16])
def test_knn_k_never_exceeds_support_per_class(k: int) -> None:
    data, _, _ = _episode(k)
    assert method_registry()["knn"]().fit(data).selected["k"] <= k


def test_methods_restore_the_callers_thread_count() -> None:
    data, tx, _ = _episode(4)
    torch.set_num_threads(2)
    m = method_registry()["clap"]().fit(data)
    m.predict_proba(tx)
    assert torch.get_num_threads() == 2


def test_select_central_takes_the_middle_of_a_plateau_and_keeps_a_unique_best() -> None:
    from hica.methods.selection import select_central

    line = [(i,) for i in range(7)]
    flat = [(0.5, 0.5, -1.0)] * 2 + [
        (0.9, 0.9, -float(i)) for i in range(5)
    ]  # plateau 2..6, log-loss best at 2
    assert select_central(line, flat) == (4, 5)
    even = [(0.9, 0.9, -1.0), (0.9, 0.9, -0.5), (0.1, 0.1, 0.0)]  # two centres equally near: the log-loss
    assert select_central(line[:3], even) == (1, 2)
    unique = [(0.5, 0.5, 0.0)] * 6 + [(0.6, 0.6, -9.0)]
    assert select_central(line, unique) == (6, 1)  # a strict best at the end stays there
    grid = [(i, j) for i in range(3) for j in range(3)]
    scores = [(1.0, 1.0, 0.0) if i == 2 or j == 0 else (0.0, 0.0, 0.0) for i, j in grid]  # an L-shape
    i, n = select_central(grid, scores)
    assert n == 5 and grid[i] == (1, 0)  # nearest the centroid (1.4, 0.6), tied with (2, 1): the earlier
    with pytest.raises(HicaError, match="empty"):
        select_central([], [])
