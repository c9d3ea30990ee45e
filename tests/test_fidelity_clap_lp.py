"""CLAP, the linear probe and LP++ against their official code, on hand-made features.

Each reference below is written from the official source, independently of hica's code: CLAP from
jusiro/CLAP (``trainers/adapters.py``: ``forward_lp``, ``zero_shot_constraint``,
``init_lagrangian_multipliers``, ``run_epoch``), the linear probe's search from KaiyangZhou/CoOp
(``lpclip/linear_probe.py``), LP++ from FereshteShakeri/FewShot-CLIP-Strong-Baseline
(``methods/linear_probe_p2.py``: ``calculate_lr_w``, ``calculate_lr_alpha``, ``calculate_init_alpha``, the
training loop).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import eigh

from hica.config import validate_config
from hica.errors import HicaError
from hica.methods import ClassText, FewShotData, method_registry
from hica.methods.linear_probe import C_GRID, C_GRID_WIDE, lpclip_search
from hica.methods.lp_plus_plus import init_params, step_sizes

pytestmark = pytest.mark.usefixtures("one_thread")
C, D, N_PER, V = 3, 8, 2, 4


def _toy(seed: int = 0, views: int = V, scale: float = 10.0) -> tuple[FewShotData, torch.Tensor]:
    """3 classes × 2 shots in 8-d, ``views`` augmented views per shot, text near the class means."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(C, D, generator=g), dim=-1)
    y = torch.arange(C).repeat_interleave(N_PER)
    sx = F.normalize(means[y] + 0.4 * torch.randn(len(y), D, generator=g), dim=-1)
    sv = F.normalize(sx[:, None] + 0.3 * torch.randn(len(y), views, D, generator=g), dim=-1)
    vx = F.normalize(means[y] + 0.4 * torch.randn(len(y), D, generator=g), dim=-1)
    tx = F.normalize(torch.randn(20, D, generator=g), dim=-1)
    t = F.normalize(means + 0.6 * torch.randn(C, D, generator=g), dim=-1)
    text = ClassText(class_emb=t, prompt_emb=[t[i : i + 1] for i in range(C)], logit_scale=scale)
    return FewShotData(sx, y, vx, y.clone(), C, text=text, seed=seed, support_views=sv), tx


# ------------------------------------------------------------------------------------------------ CLAP


def _clap_official(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, s: float, epochs: int, lr: float):
    """jusiro/CLAP, full batch: λ from the zero-shot model on the samples, then SGD (momentum 0.9) on
    CE(s·x̂·ŵᵀ) + mean_c λ_c‖w_c − t_c‖², constant warm-up epoch at 1e-5 then cosine (Dassl)."""
    onehot = F.one_hot(y, C).float()
    zs = s * F.normalize(x, dim=-1) @ F.normalize(t, dim=-1).T  # forward_lp with prototypes = base text
    lam = torch.diag(torch.softmax(zs, -1).T @ onehot) / onehot.sum(0)  # init_lagrangian_multipliers
    w, buf = t.clone().requires_grad_(True), None
    for e in range(epochs):
        step_lr = 1e-5 if e == 0 else 0.5 * lr * (1 + math.cos(math.pi * (e - 1) / epochs))
        logits = F.normalize(x, dim=-1) @ (w / w.norm(dim=-1, keepdim=True)).T * s
        loss = F.cross_entropy(logits, y) + torch.mean(lam * (w - t).pow(2).sum(-1))
        (g,) = torch.autograd.grad(loss, w)
        buf = g if buf is None else 0.9 * buf + g
        w = (w - step_lr * buf).detach().requires_grad_(True)
    return lam, w.detach()


def test_clap_lambda_and_training_follow_the_official_code() -> None:
    data, tx = _toy()
    clap = method_registry()["clap"](epochs=4, lr=0.5, views=V).fit(data)
    x, y = data.support_views.reshape(-1, D), data.support_labels.repeat_interleave(V)
    lam, w = _clap_official(x, y, data.text.class_emb, 10.0, epochs=4, lr=0.5)
    assert clap.selected["samples"] == f"views:{V}"
    assert np.allclose(clap.selected["lambda"], lam.tolist(), atol=1e-4)
    assert torch.allclose(clap.w, w, atol=1e-5)
    want = (10.0 * tx @ F.normalize(w, dim=-1).T).softmax(-1)  # logits = scale · f·ŵᵀ
    assert torch.allclose(clap.predict_proba(tx), want, atol=1e-5)
    # λ is read from the views, not the plain support features
    plain = FewShotData(data.support, data.support_labels, data.val, data.val_labels, C, data.text)
    lam_plain, _ = _clap_official(data.support, data.support_labels, data.text.class_emb, 10.0, 1, 0.5)
    got_plain = method_registry()["clap"](epochs=1).fit(plain).selected
    assert got_plain["samples"] == "plain" and np.allclose(got_plain["lambda"], lam_plain.tolist(), atol=1e-4)
    assert not np.allclose(lam_plain.tolist(), lam.tolist(), atol=1e-3)


def test_clap_takes_the_first_views_and_raw_prototypes_when_known() -> None:
    data, _ = _toy()
    data.text.class_norm = torch.tensor([2.0, 5.0, 9.0])  # raw ‖t_c‖ of an encoder, if the text carries them
    raw = data.text.class_emb * data.text.class_norm[:, None]
    clap = method_registry()["clap"](epochs=3, lr=0.5, views=2).fit(data)
    x, y = data.support_views[:, :2].reshape(-1, D), data.support_labels.repeat_interleave(2)
    lam, w = _clap_official(x, y, raw, 10.0, epochs=3, lr=0.5)
    assert clap.selected["samples"] == "views:2" and torch.allclose(clap.w, w, atol=1e-5)
    assert np.allclose(clap.selected["lambda"], lam.tolist(), atol=1e-4)  # λ ignores the norms (cosine)
    assert np.allclose(clap.selected["prototype_shift"], (w - raw).norm(dim=-1).tolist(), atol=1e-4)


def test_clap_epoch_takes_len_train_loader_batches() -> None:
    """``run_epoch``: shuffle all N·V samples, then take ``len(train_loader_x)`` = max(1, N // bs) batches."""
    data, _ = _toy(seed=2)
    bs, epochs = 4, 3  # N = 6 images → one batch of 4 of the 24 samples per epoch
    clap = method_registry()["clap"](epochs=epochs, lr=0.5, batch_size=bs, views=V).fit(data)
    x, y, t = data.support_views.reshape(-1, D), data.support_labels.repeat_interleave(V), data.text.class_emb
    lam, _ = _clap_official(x, y, t, 10.0, 1, 0.5)
    gen = torch.Generator().manual_seed(data.seed)
    w, buf = t.clone().requires_grad_(True), None
    for e in range(epochs):
        step_lr = 1e-5 if e == 0 else 0.5 * 0.5 * (1 + math.cos(math.pi * (e - 1) / epochs))
        perm = torch.randperm(len(x), generator=gen)
        for b in range(max(1, len(data.support) // bs)):
            idx = perm[b * bs : (b + 1) * bs]
            logits = 10.0 * x[idx] @ F.normalize(w, dim=-1).T
            loss = F.cross_entropy(logits, y[idx]) + torch.mean(lam * (w - t).pow(2).sum(-1))
            (g,) = torch.autograd.grad(loss, w)
            buf = g if buf is None else 0.9 * buf + g
            w = (w - step_lr * buf).detach().requires_grad_(True)
    assert torch.allclose(clap.w, w.detach(), atol=1e-5)


def test_clap_refuses_malformed_views() -> None:
    data, _ = _toy()
    with pytest.raises(HicaError, match="views = 5 but only 4"):
        method_registry()["clap"](views=5).fit(data)
    data.support_views = data.support_views[:3]
    with pytest.raises(HicaError, match=r"support_views must be \(N, V, D\)"):
        method_registry()["clap"](views=2).fit(data)
    assert method_registry()["clap"].views_needed({"views": 7}) == 7


# ------------------------------------------------------------------------------------------------ LP++


def _lpp_official(f, y, t, epochs: int, accumulate: bool):
    """linear_probe_p2.py's loop on (N, D) features and (C, D) text (bias from 0 instead of random)."""
    n, shots = len(f), N_PER
    ff = (f.T @ f).numpy()
    lr_w = 4 * n / max(eigh(ff)[0])  # calculate_lr_w
    lr_a = n / (torch.sum((f @ t.T) ** 2, dim=0).max().item() * 4)  # calculate_lr_alpha
    onehot = F.one_hot(y, C).float()
    alpha_tilde = (onehot.T @ (f @ t.T)) / onehot.sum(0)[:, None]  # compute_centroids_alpha
    alpha0 = torch.mean(250 / shots * (alpha_tilde.double() * shots)).item()  # calculate_init_alpha
    clf = torch.nn.Linear(D, C)
    clf.weight.data, clf.bias.data = onehot.T @ f, torch.zeros(C)  # compute_centroids: the class sum
    alpha = (alpha0 * torch.ones(1, C)).requires_grad_(True)
    opt = torch.optim.SGD(clf.parameters(), lr_w, momentum=0.9)
    for epoch in range(epochs):
        if not accumulate:
            alpha.grad = None
        logits = clf(f) + torch.ones(n, 1) @ alpha * (f @ t.T)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (epoch + 1) % 10 == 0:
            alpha.data -= lr_a * alpha.grad.data
    return lr_w, lr_a, alpha0, clf, alpha.detach()[0]


@pytest.mark.parametrize("mode", ["current", "accumulated"])
def test_lp_plus_plus_follows_the_official_loop(mode: str) -> None:
    data, tx = _toy(seed=3)
    f, y, t = data.support, data.support_labels, data.text.class_emb
    m = method_registry()["lp_plus_plus"](epochs=30, alpha_grad=mode).fit(data)
    lr_w, lr_a, alpha0, clf, alpha = _lpp_official(f, y, t, 30, accumulate=mode == "accumulated")
    assert math.isclose(m.selected["lr_w"], lr_w, abs_tol=1e-5) and math.isclose(
        step_sizes(f, t)[0], lr_w, rel_tol=1e-5
    )
    assert math.isclose(step_sizes(f, t)[1], lr_a, rel_tol=1e-5)
    w0, a0 = init_params(f, y, t, C)
    assert torch.allclose(w0, F.one_hot(y, C).float().T @ f) and math.isclose(a0, alpha0, rel_tol=1e-6)
    assert torch.allclose(m.w, clf.weight.detach(), atol=1e-4) and torch.allclose(
        m.b, clf.bias.detach(), atol=1e-4
    )
    assert torch.allclose(m.alpha, alpha, atol=1e-4) and not torch.allclose(alpha, torch.full((C,), alpha0))
    blend = tx @ clf.weight.detach().T + clf.bias.detach() + alpha * (tx @ t.T)  # f·Wᵀ + b + α ⊙ f·Tᵀ
    assert torch.allclose(m.predict_proba(tx), blend.softmax(-1), atol=1e-4)


def test_lp_plus_plus_alpha_modes_differ() -> None:
    data, _ = _toy(seed=4)
    cur = method_registry()["lp_plus_plus"](epochs=20, alpha_grad="current").fit(data).selected["alpha"]
    acc = method_registry()["lp_plus_plus"](epochs=20, alpha_grad="accumulated").fit(data).selected["alpha"]
    assert cur != acc


# ---------------------------------------------------------------------------------------- linear probe


def _lpclip_official(acc, num_step: int = 8) -> tuple[float, list[float]]:
    """lpclip/linear_probe.py's search with ``acc(C)`` as the validation accuracy: (c_final, Cs tried)."""
    tried: list[float] = []

    def score(c: float) -> float:
        tried.append(c)
        return acc(c)

    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = [score(c) for c in search_list]
    c_peak = search_list[int(np.argmax(acc_list))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    c_final = c_peak
    for _ in range(num_step):
        acc_left, acc_right = score(c_left), score(c_right)
        if acc_left < acc_right:
            c_final = c_right
            c_left, c_right = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_right)
        else:
            c_final = c_left
            c_right, c_left = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final, tried


@pytest.mark.parametrize("best", [-5.3, -0.4, 2.71, 3.2, 6.8])
def test_lpclip_search_matches_the_official_loop(best: float) -> None:
    def acc(c: float) -> float:
        return -((math.log10(c) - best) ** 2)

    want, tried = _lpclip_official(acc)
    c, s, peak, searched = lpclip_search(lambda c: (acc(c), 0.0, 0.0), C_GRID, 8)
    assert math.isclose(c, want, rel_tol=1e-9) and s[0] == acc(c)
    assert searched[:7] == list(C_GRID) and peak in C_GRID and abs(math.log10(peak) - best) <= 1
    assert sorted(searched) == pytest.approx(sorted(set(tried)), rel=1e-9)  # same Cs, each fitted once
    assert all(peak / 10 * (1 - 1e-12) <= x <= peak * 10 * (1 + 1e-12) for x in searched[7:])


def test_lpclip_search_ties_go_to_the_centre_of_the_plateau() -> None:
    c, _, peak, searched = lpclip_search(lambda c: (1.0, 1.0, 0.0), C_GRID, 3)
    assert peak == 1.0 and math.isclose(c, 0.1) and len(searched) == 7 + 2 + 0 + 1  # refinement: left wins
    assert lpclip_search(lambda c: (1.0, 1.0, 0.0), [1.0, 2.0], 0)[:3] == (1.0, (1.0, 1.0, 0.0), 1.0)
    # accuracy flat from 1e2 up, the log-loss best at the top: the plateau's centre (1e4), not its end
    flat = lpclip_search(lambda c: (float(c >= 1e2), 1.0, math.log10(c)), C_GRID, 0)
    assert flat[2] == 1e4
    # a unique best at an end stays there (a real edge pick)
    assert lpclip_search(lambda c: (float(c == 1e6), 1.0, 0.0), C_GRID, 0)[2] == 1e6


def test_linear_probe_records_the_search_and_edge_picks() -> None:
    data, _ = _toy(seed=5)
    lp = method_registry()["linear_probe"]
    sel = lp().fit(data).selected
    assert (1e-8, *C_GRID, 1e8) == C_GRID_WIDE  # lpclip's list, one step wider at each end
    assert sel["C_searched"][:9] == list(C_GRID_WIDE) and sel["C"] in sel["C_searched"]
    assert abs(math.log10(sel["C"] / sel["C_coarse"])) <= 1 and len(sel["C_searched"]) <= 9 + 2 + 7
    assert sel["edge"] == (["C"] if sel["C_coarse"] in (C_GRID_WIDE[0], C_GRID_WIDE[-1]) else [])
    top = lp(c_grid=[1e-6, 1e-4], refine_steps=0).fit(data).selected  # the larger C fits the val better
    assert top["C"] == top["C_coarse"] == 1e-4 and top["C_searched"] == [1e-6, 1e-4] and top["edge"] == ["C"]
    assert lp(c_grid=[1.0], refine_steps=0).fit(data).selected["edge"] == []


# ----------------------------------------------------------------------------------------- bad settings

BAD = [
    ("clap", {"views": 0}, "views must be >= 1, got 0"),
    ("clap", {"views": -3}, "views must be >= 1, got -3"),
    ("linear_probe", {"c_grid": []}, "c_grid must be a non-empty list"),
    ("linear_probe", {"c_grid": [1e6, 1e-6]}, "c_grid must be in strictly ascending order"),
    ("linear_probe", {"c_grid": [1.0, 1.0]}, "c_grid must be in strictly ascending order"),
    ("linear_probe", {"refine_steps": -1}, "refine_steps must be >= 0, got -1"),
    ("lp_plus_plus", {"epochs": 0}, "epochs must be >= 1, got 0"),
    ("lp_plus_plus", {"alpha_every": 0}, "alpha_every must be >= 1, got 0"),
    ("lp_plus_plus", {"alpha_grad": "sum"}, "alpha_grad must be 'current' or 'accumulated'"),
]


@pytest.mark.parametrize(("method", "args", "expect"), BAD)
def test_bad_settings_are_refused(method: str, args: dict, expect: str) -> None:
    with pytest.raises(HicaError) as err:
        method_registry()[method](**args)
    assert str(err.value).startswith(f"method {method}: ") and expect in str(err.value)
    with pytest.raises(HicaError, match=f"method {method}: .*{re.escape(expect)}"):
        validate_config({"datasets": ["busi"], "methods": [method], "method_args": {method: args}})
