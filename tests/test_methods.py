"""Few-shot methods on synthetic features where the right answer is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hica.errors import HicaError
from hica.methods import ClassText, FewShotData, method_registry

FEATURE_METHODS = ["zeroshot", "prototype", "knn", "linear_probe", "tip_adapter", "tip_adapter_f", "clap"]
D, C = 64, 3


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


def _acc(m, x, y) -> float:
    return (m.predict_proba(x).argmax(1) == y).float().mean().item()


def test_registry_lists_all_methods() -> None:
    assert set(FEATURE_METHODS) | {"finetune"} <= set(method_registry())


@pytest.mark.parametrize("name", FEATURE_METHODS)
@pytest.mark.parametrize("k", [1, 4, 16])
def test_valid_probabilities_and_determinism(name: str, k: int) -> None:
    data, tx, _ = _episode(k)
    cls = method_registry()[name]
    p1 = cls().fit(data).predict_proba(tx)
    p2 = cls().fit(data).predict_proba(tx)
    assert p1.shape == (len(tx), C)
    assert torch.all(p1 >= 0) and torch.allclose(p1.sum(1), torch.ones(len(tx)), atol=1e-5)
    assert torch.equal(p1, p2)


@pytest.mark.parametrize("name", [m for m in FEATURE_METHODS if m != "zeroshot"])
def test_few_shot_methods_learn_from_images(name: str) -> None:
    """With uninformative text, 16 shots of separable data must still give high accuracy."""
    data, tx, ty = _episode(16, text="random")
    assert _acc(method_registry()[name]().fit(data), tx, ty) > 0.85


def test_zeroshot_follows_text() -> None:
    zs = method_registry()["zeroshot"]
    data, tx, ty = _episode(4, text="aligned")
    assert _acc(zs().fit(data), tx, ty) > 0.9
    data, tx, ty = _episode(4, text="shuffled")
    assert _acc(zs().fit(data), tx, ty) < 0.1


def test_text_methods_need_text() -> None:
    data, _, _ = _episode(2)
    data.text = None
    for name in ("zeroshot", "tip_adapter", "clap"):
        with pytest.raises(HicaError, match="text"):
            method_registry()[name]().fit(data)


def test_tip_adapter_alpha_zero_is_zero_shot() -> None:
    data, tx, _ = _episode(4)
    tip = method_registry()["tip_adapter"](alphas=(0.0,)).fit(data)
    zs = method_registry()["zeroshot"]().fit(data)
    assert torch.allclose(tip.predict_proba(tx), zs.predict_proba(tx), atol=1e-6)


def test_selection_reads_validation_only() -> None:
    """Permuting the validation labels changes what is selected; the test set is never passed to fit."""
    data, tx, ty = _episode(8, text="random", spread=0.8)
    lp = method_registry()["linear_probe"]
    good = lp().fit(data).selected
    bad_data = FewShotData(
        data.support, data.support_labels, data.val, (data.val_labels + 1) % C, C, data.text
    )
    bad = lp().fit(bad_data).selected
    assert good["val_accuracy"] > bad["val_accuracy"]
    tip = method_registry()["tip_adapter"]
    assert tip().fit(data).selected != tip().fit(bad_data).selected


def test_clap_lambda_tracks_text_quality() -> None:
    """λ_c is the mean zero-shot probability of class c on its support images: high for right text."""
    data, _, _ = _episode(8, text="aligned", spread=0.05)
    t = data.text.class_emb.clone()
    t[2] = -t[2]  # class 2's prototype now points away from its images
    data.text = ClassText(class_emb=t, prompt_emb=data.text.prompt_emb, logit_scale=50.0)
    lam = method_registry()["clap"]().fit(data).selected["lambda"]
    assert lam[0] > 0.5 and lam[1] > 0.5 and lam[2] < 0.1


def test_knn_k_never_exceeds_support() -> None:
    data, _, _ = _episode(1)
    assert method_registry()["knn"]().fit(data).selected["k"] <= 3
