"""HiCA's per-image attribute level: vocabulary and targets, the per-image L_local with hard negatives,
L_cross in logit space with the class-profile consistency, and the composition of a class from its profile.
(HiCA fitted with measured attributes on a tiny real BUSI episode: tests/test_hica_method.py.)"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hica.data.attributes import LesionAttributes, image_values, no_lesion_classes
from hica.data.descriptors import load_descriptors, parse_descriptors
from hica.errors import HicaError
from hica.losses import CrossCategoryMarginLoss, LocalAlignmentLoss
from hica.losses.cross_category import profile_consistency
from hica.model.attributes import AttributeVocab, compose_classes, value_posteriors
from hica.model.hica_model import HiCAOutput

CLASSES = ["benign", "malignant", "normal"]


@pytest.fixture(scope="module")
def busi():
    return load_descriptors("busi")


# ------------------------------------------------------------------------------- vocabulary and targets


def test_vocab_of_busi(busi) -> None:
    v = AttributeVocab.of(busi, CLASSES)
    assert v.groups[0] == "presence" and v.presence_group == 0
    assert ("margin", "not circumscribed") in v.values and len(v.value_group) == len(v.values)
    assert len(v.phrases) == len(v.phrase_value) and all(p.endswith(".") for p in v.phrases)
    mal = {v.values[i] for i in torch.nonzero(v.class_values[1]).flatten().tolist()}
    assert ("shape", "irregular") in mal and ("presence", "mass") in mal and ("shape", "oval") not in mal
    assert v.class_any == [False, True, False]
    normal = {v.values[i] for i in torch.nonzero(v.class_values[2]).flatten().tolist()}
    assert normal == {("presence", "no mass")}


def test_targets_unknown_and_missing_values(busi) -> None:
    v = AttributeVocab.of(busi, CLASSES)
    t = v.targets(
        [
            {"presence": "mass", "shape": "irregular", "margin": "unknown", "size": "large"},
            {"presence": "no mass", "shape": "no mass"},
        ]
    )
    g = v.groups.index
    assert t.shape == (2, len(v.groups))
    assert v.values[t[0, g("shape")]] == ("shape", "irregular")
    assert t[0, g("margin")] == -1 and t[0, g("orientation")] == -1  # unknown / not measured
    assert v.values[t[1, g("presence")]] == ("presence", "no mass") and t[1, g("shape")] == -1
    with pytest.raises(HicaError, match="attribute_values.shape has no value 'lobulated'"):
        v.targets([{"shape": "lobulated"}])


def test_descriptor_profile_must_name_known_values() -> None:
    text = """
dataset: x
modality: ultrasound
templates: ["{}."]
classes:
  a: {name: a, description: [a.], attributes: {g: [p]}, profile: {shape: [star]}}
  b: {name: b, description: [b.], attributes: {g: [q]}}
attribute_values:
  shape: {oval: [an oval mass], round: [a round mass]}
"""
    with pytest.raises(HicaError, match=r"classes.a.profile.shape: values \['star'\]"):
        parse_descriptors(text, "x.yaml")
    with pytest.raises(HicaError, match="no attribute_values group 'margin'"):
        parse_descriptors(text.replace("shape: [star]", "margin: [oval]"), "x.yaml")


def test_image_values_presence(busi) -> None:
    lesion = LesionAttributes({"shape": "oval", "margin": "circumscribed"}, n_lesions=1)
    assert image_values(lesion)["presence"] == "mass"
    assert image_values(LesionAttributes({"shape": "no mass", "margin": "no mass"}))["presence"] == "no mass"
    assert image_values(LesionAttributes({"shape": "unknown", "margin": "unknown"}))["presence"] == "unknown"
    assert no_lesion_classes(busi, CLASSES) == ("normal",)


# ------------------------------------------------------------------------------------------ composition


def test_compose_all_and_any_on_complementary_values() -> None:
    # groups: 0 presence {mass, no mass}, 1 margin {circ, not circ}, 2 shape {oval, irregular}
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    cv = torch.tensor(
        [
            [1, 0, 1, 0, 1, 0],  # benign: mass, circumscribed AND oval
            [1, 0, 0, 1, 0, 1],  # malignant: mass, not circumscribed OR irregular
            [0, 1, 0, 0, 0, 0],  # normal: no mass
        ],
        dtype=torch.bool,
    )
    post = torch.tensor([[0.9, 0.1, 0.7, 0.3, 0.6, 0.4]])
    p = compose_classes(post, cv, groups, [False, True, False], presence_group=0)
    benign = 0.9 * 0.7 * 0.6
    malignant = 0.9 * (1 - (1 - 0.3) * (1 - 0.4))
    assert benign + malignant + 0.1 == pytest.approx(1.0)  # complementary profiles: already a distribution
    assert p[0].tolist() == pytest.approx([benign, malignant, 0.1], abs=1e-6)
    with pytest.raises(HicaError, match="no attribute profile"):
        compose_classes(post, torch.zeros(1, 6, dtype=torch.bool), groups, [False])


def test_value_posteriors_softmax_within_groups() -> None:
    values = torch.eye(4)
    groups = torch.tensor([0, 0, 1, 1])
    post = value_posteriors(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), values, groups, tau=0.1)
    c = 1 / math.sqrt(2)
    assert post[0, :2].sum() == pytest.approx(1.0) and post[0, 2:].sum() == pytest.approx(1.0)
    assert post[0, 0].item() == pytest.approx(1 / (1 + math.exp(-c / 0.1)), rel=1e-5)
    assert post[0, 3].item() == pytest.approx(post[0, 0].item(), rel=1e-6)


# --------------------------------------------------------------------------------------------- losses


def _output(local, roi, values, groups, targets, presence=0, c=2) -> HiCAOutput:
    d = local.shape[-1]
    return HiCAOutput(
        image_global=local.mean(1),
        local=local,
        text_global=torch.zeros(local.shape[0], d),
        text_protos=torch.eye(c, d),
        bank=torch.zeros(0, d),
        bank_labels=torch.zeros(0, dtype=torch.long),
        roi=roi,
        values=values,
        value_groups=groups,
        attr_targets=targets,
        class_values=torch.zeros(c, values.shape[0], dtype=torch.bool),
        presence_group=presence,
    )


def test_local_per_image_hand_computed_and_hard_negatives() -> None:
    # 4 tokens in 4-d; ROI = token 0 (direction e2), background tokens e0; whole image mean.
    # values: presence {mass e0, no mass e1}, margin {circ e2, not circ e3}
    local = torch.stack([torch.eye(4)[2], torch.eye(4)[0], torch.eye(4)[0], torch.eye(4)[0]])[None]
    local.requires_grad_(True)
    roi = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    values = torch.eye(4)
    groups = torch.tensor([0, 0, 1, 1])
    tau = 0.5
    crit = LocalAlignmentLoss(temperature=tau, background_weight=1.0)
    out = _output(local, roi, values, groups, torch.tensor([[0, 2]]))
    terms = crit(out, torch.tensor([0]))
    whole = F.normalize(torch.tensor([3.0, 0, 1, 0]), dim=0)
    ce_presence = -F.log_softmax(torch.stack([whole[0], whole[1]]) / tau, 0)[0]
    ce_margin = -F.log_softmax(torch.tensor([1.0, 0.0]) / tau, 0)[0]  # ROI = e2 vs {e2, e3} only
    bg = F.softplus(torch.tensor((0.0 - 1.0) / tau))  # cos(b, e2) = 0, cos(r, e2) = 1
    assert terms["local/attribute"].item() == pytest.approx(((ce_presence + ce_margin) / 2).item(), rel=1e-5)
    assert terms["local/background"].item() == pytest.approx(bg.item(), rel=1e-5)
    assert terms["local"].item() == pytest.approx(((ce_presence + ce_margin) / 2 + bg).item(), rel=1e-5)
    assert terms["local/attr_acc"].item() == 1.0 and terms["local/n_targets"].item() == 2
    terms["local"].backward()
    assert local.grad.abs().sum() > 0
    # the wrong value of the same group costs more; a value of another group is not a negative
    wrong = crit(_output(local.detach(), roi, values, groups, torch.tensor([[0, 3]])), torch.tensor([0]))
    assert wrong["local/attribute"] > terms["local/attribute"]
    assert wrong["local/attr_acc"].item() == 0.5


def test_local_per_image_skips_unknown_and_normal_only_presence() -> None:
    local = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0))
    roi = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    out = _output(local, roi, torch.eye(4), torch.tensor([0, 0, 1, 1]), torch.tensor([[0, -1], [1, -1]]))
    terms = LocalAlignmentLoss()(out, torch.tensor([0, 1]))
    assert terms["local/n_targets"].item() == 2 and torch.isfinite(terms["local"])
    none = _output(local, roi, torch.eye(4), torch.tensor([0, 0, 1, 1]), torch.full((2, 2), -1))
    assert LocalAlignmentLoss()(none, torch.tensor([0, 1]))["local"].item() == 0.0


def test_cross_logit_scale_hand_computed() -> None:
    # per image: softplus((m − ⟨f, t_y⟩ + ⟨f, t_other⟩) / τ); text: softplus((⟨t0, t1⟩ − (1 − m)) / τ)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]], requires_grad=True)
    m, tau = 0.2, 0.1
    crit = CrossCategoryMarginLoss(m, attribute_weight=0.0, scale="logit", temperature=tau)
    out = HiCAOutput(img, img[:, None], img, t, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    parts = crit(out, torch.tensor([0, 1]))
    sp = F.softplus
    l_img = (sp(torch.tensor((m - 1 + 0) / tau)) + sp(torch.tensor((m - 0.8 + 0.6) / tau))) / 2
    l_text = sp(torch.tensor((0 - (1 - m)) / tau))
    assert parts["cross/img"].item() == pytest.approx(l_img.item(), rel=1e-5)
    assert parts["cross/text"].item() == pytest.approx(l_text.item(), rel=1e-5)
    parts["cross"].backward()
    assert img.grad[0].abs().sum() > 0  # a satisfied margin still has a (small) gradient in logit space
    with pytest.raises(HicaError, match="scale"):
        CrossCategoryMarginLoss(scale="log")


def test_profile_consistency_hand_computed() -> None:
    # one class; group {v0, v1}; profile allows v0: softplus((m − ⟨t, e0⟩ + ⟨t, e1⟩) / τ)
    t = F.normalize(torch.tensor([[0.8, 0.6]]), dim=-1)
    values = torch.eye(2)
    got = profile_consistency(t, values, torch.tensor([0, 0]), torch.tensor([[True, False]]), 0.2, 0.1)
    assert got.item() == pytest.approx(F.softplus(torch.tensor((0.2 - 0.8 + 0.6) / 0.1)).item(), rel=1e-5)
    none = profile_consistency(t, values, torch.tensor([0, 0]), torch.zeros(1, 2, dtype=torch.bool), 0.2, 0.1)
    assert none.item() == 0.0
