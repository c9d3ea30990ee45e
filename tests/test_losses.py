"""HiCA's losses (``hica.losses``) and ROI helpers (``hica.model.roi``) on small synthetic tensors with known
answers. Every loss takes a model output (``HiCAOutput``) and the labels and returns named terms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hica.errors import HicaError
from hica.losses import (
    CrossCategoryMarginLoss,
    GlobalContrastiveLoss,
    HierarchicalLoss,
    LocalAlignmentLoss,
    positives_from_bank,
)
from hica.model.hica_model import HiCAOutput
from hica.model.roi import mask_to_token_weights, masks_to_token_weights, proposal_roi

D = 8


def _leaf(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_(True)


def _nonzero_grad(t: torch.Tensor) -> bool:
    return t.grad is not None and bool(t.grad.abs().sum() > 0)


def _basis(i: int, d: int = D) -> torch.Tensor:
    return F.one_hot(torch.tensor(i), d).float()


def _out(**given: torch.Tensor | None) -> HiCAOutput:
    """A model output holding the ``given`` tensors; the fields a test does not read are empty stand-ins."""
    ref = given["image_global"] if "image_global" in given else given["local"][:, 0]
    b, d = ref.shape
    fields = {
        "image_global": torch.zeros(b, d),
        "local": torch.zeros(b, 1, d),
        "text_global": torch.zeros(b, d),
        "text_protos": torch.zeros(0, d),
        "bank": torch.zeros(0, d),
        "bank_labels": torch.zeros(0, dtype=torch.long),
    }
    return HiCAOutput(**{**fields, **given})


def _global(crit: GlobalContrastiveLoss, img: torch.Tensor, txt: torch.Tensor, labels=None) -> torch.Tensor:
    return crit(_out(image_global=img, text_global=txt), labels)["global"]


def _local(crit: LocalAlignmentLoss, local, roi, pos, mask, bank, bank_labels, labels):
    """``(L_local, diagnostics by name)`` of ``crit`` on these inputs."""
    out = _out(local=local, roi=roi, positives=pos, positive_mask=mask, bank=bank, bank_labels=bank_labels)
    terms = crit(out, labels)
    return terms["local"], {k.removeprefix("local/"): v for k, v in terms.items() if k != "local"}


def _cross(crit: CrossCategoryMarginLoss, img, labels, protos, attr, attr_labels):
    """``(L_cross, components by name)`` of ``crit`` on these inputs."""
    terms = crit(_out(image_global=img, text_protos=protos, bank=attr, bank_labels=attr_labels), labels)
    return terms["cross"], {k.removeprefix("cross/"): v for k, v in terms.items() if k != "cross"}


# ---------------------------------------------------------------- global


def test_global_scalar_finite_and_gradients() -> None:
    img, txt = _leaf(6, D, seed=1), _leaf(6, D, seed=2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = _global(GlobalContrastiveLoss(), img, txt, labels)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert _nonzero_grad(img) and _nonzero_grad(txt)


def test_global_learnable_temperature_gets_gradient() -> None:
    crit = GlobalContrastiveLoss(temperature=0.1, learnable=True)
    assert crit.logit_scale.item() == pytest.approx(10.0)
    _global(crit, _leaf(4, D, seed=1), _leaf(4, D, seed=2), torch.tensor([0, 1, 2, 3])).backward()
    assert _nonzero_grad(crit.log_logit_scale)


def test_global_aligned_lower_than_shuffled() -> None:
    txt = F.normalize(torch.randn(6, D, generator=torch.Generator().manual_seed(3)), dim=-1)
    labels = torch.arange(6)
    img = txt + 0.05 * torch.randn(6, D, generator=torch.Generator().manual_seed(4))
    crit = GlobalContrastiveLoss()
    assert _global(crit, img, txt, labels) < _global(crit, img, txt[torch.tensor([1, 2, 3, 4, 5, 0])], labels)


def test_global_hand_value_same_class_is_not_a_negative() -> None:
    # Two classes on orthogonal axes, two images per class, every embedding exactly on its class axis.
    # Row i: two positives at 1/τ, two negatives at 0 → −log(e^{1/τ} / (2e^{1/τ} + 2)) in both directions.
    tau = 0.5
    e0, e1 = _basis(0), _basis(1)
    emb = torch.stack([e0, e0, e1, e1])
    labels = torch.tensor([0, 0, 1, 1])
    expected = math.log(2 + 2 * math.exp(-1 / tau))
    assert _global(GlobalContrastiveLoss(tau), emb, emb, labels).item() == pytest.approx(expected, rel=1e-6)


def test_global_same_class_descriptions_are_interchangeable() -> None:
    # Same-class texts are all positives: swapping descriptions within a class leaves the loss unchanged
    # (plain CLIP would change), swapping across classes raises it.
    img, txt = _leaf(4, D, seed=8).detach(), _leaf(4, D, seed=9).detach()
    img = txt + 0.3 * img
    labels = torch.tensor([0, 0, 1, 1])
    crit = GlobalContrastiveLoss()
    base = _global(crit, img, txt, labels).item()
    within = txt[torch.tensor([1, 0, 3, 2])]
    assert _global(crit, img, within, labels).item() == pytest.approx(base, rel=1e-6)
    assert _global(crit, img, within).item() != pytest.approx(_global(crit, img, txt).item(), rel=1e-3)
    assert _global(crit, img, txt[torch.tensor([2, 3, 0, 1])], labels).item() > base


def test_global_equals_clip_when_labels_distinct() -> None:
    img, txt = _leaf(5, D, seed=10).detach(), _leaf(5, D, seed=11).detach()
    crit = GlobalContrastiveLoss()
    logits = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T / 0.07
    clip = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    assert _global(crit, img, txt, torch.arange(5)).item() == pytest.approx(clip.item(), rel=1e-5)
    assert _global(crit, img, txt).item() == pytest.approx(clip.item(), rel=1e-5)


# ---------------------------------------------------------------- local


def _bank() -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 phrases on axes 0, 1; class 1 phrases on axes 2, 3 (slightly tilted so none coincide)."""
    bank = torch.stack([_basis(0) + 0.1 * _basis(1), _basis(1) + 0.1 * _basis(0), _basis(2), _basis(3)])
    return bank, torch.tensor([0, 0, 1, 1])


def _tokens(signal_cells: list[int], cls_axes: tuple[int, int], n: int = 16, seed: int = 0) -> torch.Tensor:
    """(N, D) tokens: ``signal_cells`` point along the class axes, the rest along axis 6 (background)."""
    g = torch.Generator().manual_seed(seed)
    tok = _basis(6).repeat(n, 1) + 0.05 * torch.randn(n, D, generator=g)
    tok[signal_cells] = (
        _basis(cls_axes[0]) + _basis(cls_axes[1]) + 0.05 * torch.randn(len(signal_cells), D, generator=g)
    )
    return tok


def _roi(cells: list[int], n: int = 16) -> torch.Tensor:
    w = torch.zeros(n)
    w[cells] = 1.0
    return w


def test_positives_from_bank() -> None:
    bank, bank_labels = _bank()
    pos, valid = positives_from_bank(bank, bank_labels, torch.tensor([1, 0, 1]))
    assert pos.shape == (3, 2, D) and valid.all()
    assert torch.equal(pos[0], bank[2:]) and torch.equal(pos[1], bank[:2])


def test_local_scalar_finite_gradients_and_diagnostics() -> None:
    bank0, bank_labels = _bank()
    bank = bank0.clone().requires_grad_(True)
    local = torch.stack([_tokens([0, 1], (0, 1)), _tokens([5, 6], (2, 3), seed=1)]).requires_grad_(True)
    roi = torch.stack([_roi([0, 1]), _roi([5, 6])])
    labels = torch.tensor([0, 1])
    pos0, mask = positives_from_bank(bank0, bank_labels, labels)
    pos = pos0.clone().requires_grad_(True)
    loss, diag = _local(LocalAlignmentLoss(), local, roi, pos, mask, bank, bank_labels, labels)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert _nonzero_grad(local) and _nonzero_grad(pos) and _nonzero_grad(bank)
    assert diag["n_images"] == 2 and diag["n_background"] == 2 and diag["n_whole_roi"] == 0
    assert diag["roi_pos_sim"] > 0.5 > diag["bg_pos_sim"]
    assert not diag["contrast"].requires_grad


def test_local_lower_when_roi_covers_signal() -> None:
    bank, bank_labels = _bank()
    local = torch.stack([_tokens([0, 1, 4, 5], (0, 1)), _tokens([10, 11, 14, 15], (2, 3), seed=1)])
    labels = torch.tensor([0, 1])
    pos, mask = positives_from_bank(bank, bank_labels, labels)
    on_signal = torch.stack([_roi([0, 1, 4, 5]), _roi([10, 11, 14, 15])])
    on_background = torch.stack([_roi([10, 11, 14, 15]), _roi([0, 1, 4, 5])])
    crit = LocalAlignmentLoss()
    good, dg = _local(crit, local, on_signal, pos, mask, bank, bank_labels, labels)
    bad, db = _local(crit, local, on_background, pos, mask, bank, bank_labels, labels)
    assert good < bad
    assert dg["background"] < db["background"] and dg["contrast"] < db["contrast"]


def test_local_empty_roi_whole_image_or_skipped() -> None:
    bank, bank_labels = _bank()
    # image 0: lesion class with a mask; image 1: "normal" class, no lesion, tissue signal everywhere
    local = torch.stack([_tokens([0, 1], (0, 1)), _tokens(list(range(16)), (2, 3), seed=1)])
    labels = torch.tensor([0, 1])
    pos, mask = positives_from_bank(bank, bank_labels, labels)
    roi = torch.stack([_roi([0, 1]), torch.zeros(16)])
    loss, diag = _local(
        LocalAlignmentLoss(empty_roi="whole"), local, roi, pos, mask, bank, bank_labels, labels
    )
    assert torch.isfinite(loss) and diag["n_images"] == 2 and diag["n_whole_roi"] == 1
    assert diag["n_background"] == 1  # the whole-image ROI has no background term
    full = torch.stack([_roi([0, 1]), torch.ones(16)])
    same, _ = _local(LocalAlignmentLoss(), local, full, pos, mask, bank, bank_labels, labels)
    assert loss.item() == pytest.approx(same.item(), rel=1e-6)

    skip, ds = _local(LocalAlignmentLoss(empty_roi="skip"), local, roi, pos, mask, bank, bank_labels, labels)
    only0, _ = _local(
        LocalAlignmentLoss(), local[:1], roi[:1], pos[:1], mask[:1], bank, bank_labels, labels[:1]
    )
    assert ds["n_images"] == 1 and skip.item() == pytest.approx(only0.item(), rel=1e-6)


def test_local_bad_arguments() -> None:
    with pytest.raises(HicaError, match="background_weight"):
        LocalAlignmentLoss(background_weight=-1)
    with pytest.raises(HicaError, match="empty_roi"):
        LocalAlignmentLoss(empty_roi="ignore")  # type: ignore[arg-type]
    with pytest.raises(HicaError, match="temperature"):
        LocalAlignmentLoss(temperature=0)


# ---------------------------------------------------------------- cross


def test_cross_zero_when_separated_beyond_margin() -> None:
    t = torch.stack([_basis(0, 2), _basis(1, 2)])
    loss, parts = _cross(
        CrossCategoryMarginLoss(0.2, scale="cosine"),
        t.clone(),
        torch.tensor([0, 1]),
        t,
        t.clone(),
        torch.tensor([0, 1]),
    )
    assert loss.item() == 0.0 and all(v.item() == 0.0 for v in parts.values())


def test_cross_hand_computed_two_classes_2d() -> None:
    # t0 = (1, 0), t1 = (0.96, 0.28): ⟨t0, t1⟩ = 0.96 → L_text = 0.96 − (1 − 0.2) = 0.16
    # class-0 images (0.6, 0.8) and (3, 4) (same direction): μ0 = (0.6, 0.8), ⟨μ0,t0⟩ = 0.6, ⟨μ0,t1⟩ = 0.8
    #   → [0.2 − 0.6 + 0.8]_+ = 0.4; class-1 image (0, 1): ⟨·,t1⟩ = 0.28, ⟨·,t0⟩ = 0 → [0.2 − 0.28]_+ = 0
    #   → L_img = (0.4 + 0) / 2 = 0.2
    # attributes (1, 0) of class 0: [0.2 − 1 + 0.96]_+ = 0.16; (0, 1) of class 1: [0.2 − 0.28 + 0]_+ = 0
    #   → L_attr = 0.08;  L_cross = 0.2 + 0.08 + 0.16 = 0.44
    t = torch.tensor([[1.0, 0.0], [0.96, 0.28]]).requires_grad_(True)
    img = torch.tensor([[0.6, 0.8], [3.0, 4.0], [0.0, 1.0]]).requires_grad_(True)
    attr = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).requires_grad_(True)
    loss, parts = _cross(
        CrossCategoryMarginLoss(0.2, scale="cosine"),
        img,
        torch.tensor([0, 0, 1]),
        t,
        attr,
        torch.tensor([0, 1]),
    )
    assert loss.shape == ()
    assert parts["img"].item() == pytest.approx(0.2, abs=1e-6)
    assert parts["attr"].item() == pytest.approx(0.08, abs=1e-6)
    assert parts["text"].item() == pytest.approx(0.16, abs=1e-6)
    assert loss.item() == pytest.approx(0.44, abs=1e-6)
    loss.backward()
    assert _nonzero_grad(img) and _nonzero_grad(t) and _nonzero_grad(attr)
    assert img.grad[2].abs().sum() == 0  # class 1 satisfies its margin: no gradient


def test_cross_bad_margin() -> None:
    with pytest.raises(HicaError, match="margin"):
        CrossCategoryMarginLoss(margin=-0.1)


# ---------------------------------------------------------------- combined


def _batch() -> dict[str, torch.Tensor]:
    bank, bank_labels = _bank()
    labels = torch.tensor([0, 1, 0])
    return {
        "image_global": _leaf(3, D, seed=5),
        "labels": labels,
        "text_global": _leaf(3, D, seed=6),
        "local": torch.stack(
            [_tokens([0], (0, 1)), _tokens([3], (2, 3), seed=1), _tokens([7], (0, 1), seed=2)]
        ),
        "roi": torch.stack([_roi([0]), _roi([3]), torch.zeros(16)]),
        "bank": bank,
        "bank_labels": bank_labels,
        "text_protos": _leaf(2, D, seed=7),
    }


def _output(batch: dict[str, torch.Tensor]) -> HiCAOutput:
    return HiCAOutput(**{k: v for k, v in batch.items() if k != "labels"})


def test_hierarchical_total_and_gradients() -> None:
    batch = _batch()
    batch["local"].requires_grad_(True)
    crit = HierarchicalLoss(lambda_local=0.5, lambda_cross=2.0)
    parts = crit(_output(batch), batch["labels"])
    total = parts["total"]
    assert total.shape == () and torch.isfinite(total)
    expected = parts["global"] + 0.5 * parts["local"] + 2.0 * parts["cross"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert {"local/contrast", "local/background", "cross/img", "cross/attr", "cross/text"} <= set(parts)
    total.backward()
    for name in ("image_global", "text_global", "local", "text_protos"):
        assert _nonzero_grad(batch[name]), name


@pytest.mark.parametrize(
    ("switches", "present"),
    [
        ({"use_local": False, "use_cross": False}, {"global"}),
        ({"use_local": False}, {"global", "cross"}),
        ({"use_cross": False}, {"global", "local"}),
        ({}, {"global", "local", "cross"}),
    ],
)
def test_hierarchical_switches_remove_components(switches: dict[str, bool], present: set[str]) -> None:
    batch = _batch()
    parts = HierarchicalLoss(**switches)(_output(batch), batch["labels"])
    total = parts["total"]
    assert {k for k in ("global", "local", "cross") if k in parts} == present
    assert not any(k.startswith(tuple(f"{c}/" for c in {"local", "cross"} - present)) for k in parts)
    assert total.item() == pytest.approx(sum(parts[k].item() for k in present), rel=1e-6)


def test_hierarchical_validation() -> None:
    for arg in ("lambda_local", "lambda_cross"):
        with pytest.raises(HicaError, match=arg):
            HierarchicalLoss(**{arg: -0.1})
    with pytest.raises(HicaError, match="nothing to train"):
        HierarchicalLoss(use_global=False, use_local=False, use_cross=False)
    batch = _batch()
    del batch["text_protos"]
    with pytest.raises(TypeError, match="text_protos"):  # the model output always carries every level
        _output(batch)
    batch = _batch()
    batch["roi"] = None
    with pytest.raises(ValueError, match="roi.*use_local=False"):
        HierarchicalLoss()(_output(batch), batch["labels"])


# ---------------------------------------------------------------- ROI


def test_mask_to_token_weights_left_half() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[:, :4] = True
    w = mask_to_token_weights(mask, (2, 2))
    assert w.dtype == torch.float32 and w.tolist() == [1.0, 0.0, 1.0, 0.0]
    quarter = np.zeros((8, 8), dtype=bool)
    quarter[:2, :2] = True  # a quarter of the top-left cell
    assert mask_to_token_weights(quarter, (2, 2)).tolist() == [0.25, 0.0, 0.0, 0.0]
    batched = masks_to_token_weights([mask, np.zeros((6, 10), dtype=bool)], (2, 2))
    assert batched.shape == (2, 4) and batched[1].sum() == 0
    with pytest.raises(HicaError, match="2-D"):
        mask_to_token_weights(np.zeros((2, 8, 8), dtype=bool), (2, 2))


def test_proposal_roi_keeps_top_fraction_of_matching_tokens() -> None:
    local = torch.stack([_tokens([0, 1, 2], (0, 1)), _tokens([13, 14, 15], (0, 1), seed=1)]).requires_grad_(
        True
    )
    query = _basis(0) + _basis(1)
    w = proposal_roi(local, query, (4, 4), top_fraction=0.2)  # k = ceil(3.2) = 4
    assert w.shape == (2, 16) and not w.requires_grad
    assert ((w > 0).sum(-1) <= 4).all() and (w >= 0).all() and (w <= 1).all()
    assert set(w[0].topk(3).indices.tolist()) == {0, 1, 2}
    assert set(w[1].topk(3).indices.tolist()) == {13, 14, 15}
    assert w.max(-1).values.tolist() == [1.0, 1.0]
    per_image = proposal_roi(local, torch.stack([query, _basis(6)]), (4, 4), smooth=3)
    assert per_image[1, [13, 14, 15]].sum() == 0  # the background query picks background tokens
    with pytest.raises(HicaError, match="top_fraction"):
        proposal_roi(local, query, (4, 4), top_fraction=0)
