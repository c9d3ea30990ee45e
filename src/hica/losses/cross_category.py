"""Cross-category margin: separate class prototypes along the category → attribute hierarchy.

With L2-normalised vectors, cosine ⟨·,·⟩, text prototypes t_c (c = 1..C), image prototypes
μ_c = norm(mean_{i: y_i = c} norm(f_i)) for the K classes present in the batch, attribute-phrase embeddings
a_k with parent class c_k, and margin m, three hinge terms (triplet / large-margin hinges as in
Weinberger & Saul's LMNN and FaceNet, applied to prototypes):

    L_img  = 1/(K(C−1)) Σ_{c present} Σ_{c'≠c} [m − ⟨μ_c, t_c⟩ + ⟨μ_c, t_c'⟩]_+
             each class's image prototype is closer to its own text prototype than to any other by m
    L_attr = 1/(A(C−1)) Σ_k Σ_{c'≠c_k} [m − ⟨a_k, t_{c_k}⟩ + ⟨a_k, t_c'⟩]_+
             each attribute phrase stays nearer its parent category than any other category by m
    L_text = 1/(C(C−1)/2) Σ_{c<c'} [⟨t_c, t_c'⟩ − (1 − m)]_+
             text prototypes of different classes keep cosine below 1 − m

    L_cross = L_img + attribute_weight · L_attr + text_weight · L_text

L_attr is what ties the attribute level to the category level: attributes may move (local alignment pulls
them towards ROI features) but not across their category's boundary (``attribute_weight`` 0 turns it off).
With ``scale="cosine"`` (default; the first round's loss, and what validation kept: results/tuning/README.md)
each term is exactly 0 once its constraints hold with margin
to spare; the text head alone satisfies them before the image tower trains, so they carry no gradient then.

``scale="logit"`` puts the margins in logit space, like the contrastive terms: every hinge
[x]_+ becomes softplus(x / τ), whose gradient σ(x/τ)/τ is of the contrastive terms' order and fades
smoothly rather than stopping at the margin, and L_img is taken per image rather than per batch prototype
(each image's own embedding must clear the margin), so the term stays active while the image tower trains.

With per-image attributes (``out.attr_targets`` given) L_attr becomes the category → attribute consistency of
the class profiles (``hica.model.attributes``): each class's text prototype is nearer the values its
profile allows than the other values of the same group, by m

    L_attr = mean_{c, g ∈ profile(c), v ∈ profile_c(g), v' ∈ g \\ profile_c(g)}
             softplus((m − ⟨t_c, e_v⟩ + ⟨t_c, e_v'⟩) / τ)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hica.errors import HicaError
from hica.model.hica_model import HiCAOutput

Scale = Literal["logit", "cosine"]


def _hinge(x: torch.Tensor, tau: float | None) -> torch.Tensor:
    """[x]_+ (``tau`` None, cosine scale) or softplus(x / τ) (logit scale)."""
    return F.relu(x) if tau is None else F.softplus(x / tau)


def _margin_hinge(
    anchor: torch.Tensor, protos: torch.Tensor, own: torch.Tensor, margin: float, tau: float | None = None
) -> torch.Tensor:
    """mean over rows r and classes c' ≠ own[r] of hinge(m − ⟨x_r, t_own⟩ + ⟨x_r, t_c'⟩) (normalised)."""
    c = protos.shape[0]
    if anchor.shape[0] == 0 or c < 2:
        return anchor.sum() * 0.0 + protos.sum() * 0.0
    sim = anchor @ protos.T  # (R, C)
    pos = sim.gather(1, own[:, None])
    neg = torch.ones_like(sim, dtype=torch.bool).scatter_(1, own[:, None], False)
    hinge = _hinge(margin - pos + sim, tau)
    return (hinge * neg).sum() / neg.sum()


def profile_consistency(
    t: torch.Tensor,
    values: torch.Tensor,
    value_groups: torch.Tensor,
    class_values: torch.Tensor,
    margin: float,
    tau: float | None,
) -> torch.Tensor:
    """Mean hinge(m − ⟨t_c, e_v⟩ + ⟨t_c, e_v'⟩) over classes c, profile values v and the other values v' of
    v's group (normalised ``t`` (C, D), ``values`` (V, D)); 0 without profiles."""
    sim = t @ F.normalize(values, dim=-1).T  # (C, V)
    same = value_groups[:, None] == value_groups[None, :]  # (V, V)
    allowed = class_values.to(t.device)
    pair = allowed[:, :, None] & ~allowed[:, None, :] & same[None]  # (C, v, v')
    if not pair.any():
        return t.sum() * 0.0
    gap = margin - sim[:, :, None] + sim[:, None, :]
    return _hinge(gap[pair], tau).mean()


class CrossCategoryMarginLoss(nn.Module):
    """Prototype margin loss over image prototypes, text prototypes and attribute phrases (module docstring).

    ``margin``: m in cosine units, in [0, 2]; ``attribute_weight`` / ``text_weight``: weights of L_attr /
    L_text (0 turns a term off); ``scale``: ``cosine`` (plain hinges on batch prototypes, the first round's
    loss) or ``logit`` (softplus(·/τ), per-image L_img); ``temperature``: τ of the logit scale."""

    def __init__(
        self,
        margin: float = 0.2,
        attribute_weight: float = 1.0,
        text_weight: float = 1.0,
        scale: Scale = "cosine",
        temperature: float = 0.07,
    ) -> None:
        super().__init__()
        if scale not in ("logit", "cosine"):
            raise HicaError(f"scale must be 'logit' or 'cosine', got {scale!r}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise HicaError(f"temperature must be > 0, got {temperature!r}")
        self.scale = scale
        self.tau: float | None = float(temperature) if scale == "logit" else None
        m = float(margin)
        if not (math.isfinite(m) and 0 <= m <= 2):
            raise HicaError(f"margin must be a cosine margin in [0, 2], got {margin!r}")
        for name, v in (("attribute_weight", attribute_weight), ("text_weight", text_weight)):
            if not v >= 0:
                raise HicaError(f"{name} must be >= 0, got {v!r}")
        self.margin = m
        self.attribute_weight = float(attribute_weight)
        self.text_weight = float(text_weight)

    def forward(self, out: HiCAOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``L_cross`` of ``out.image_global`` (B, D) with ``labels`` (B,) in [0, C), ``out.text_protos``
        (C, D) and the attribute phrases ``out.bank`` (A, D) with parent classes ``out.bank_labels`` (A,).
        Returns ``{"cross": L_cross, "cross/img", "cross/attr", "cross/text"}``, the components detached."""
        image_emb, text_protos = out.image_global, out.text_protos
        attributes, attribute_labels = out.bank, out.bank_labels
        c, d = text_protos.shape
        if image_emb.ndim != 2 or image_emb.shape[1] != d or labels.shape != image_emb.shape[:1]:
            raise ValueError(
                f"image_global must be (B, {d}) with labels (B,), got {tuple(image_emb.shape)}, "
                f"{tuple(labels.shape)}"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(f"labels must be in [0, {c}) (one text prototype per class)")
        t = F.normalize(text_protos, dim=-1)

        f = F.normalize(image_emb, dim=-1)
        if self.tau is None:  # the first round's loss: one hinge per batch class prototype
            onehot = F.one_hot(labels, c).to(f.dtype)  # (B, C)
            present = onehot.sum(0) > 0
            mu = F.normalize((onehot.T @ f)[present], dim=-1)  # (K, D)
            classes = torch.arange(c, device=labels.device)[present]
            l_img = _margin_hinge(mu, t, classes, self.margin)
        else:
            l_img = _margin_hinge(f, t, labels, self.margin, self.tau)

        per_image = out.attr_targets is not None and out.values is not None and out.values.shape[0] > 0
        if self.attribute_weight <= 0:
            l_attr = t.sum() * 0.0
        elif per_image:
            assert out.values is not None and out.value_groups is not None and out.class_values is not None
            l_attr = profile_consistency(
                t, out.values, out.value_groups, out.class_values, self.margin, self.tau
            )
        else:
            if attribute_labels.shape != attributes.shape[:1]:
                raise ValueError("the bank needs bank_labels (A,) giving each phrase's class")
            l_attr = _margin_hinge(
                F.normalize(attributes, dim=-1), t, attribute_labels, self.margin, self.tau
            )

        if c >= 2:
            iu = torch.triu_indices(c, c, offset=1, device=t.device)
            gram = t @ t.T
            l_text = _hinge(gram[iu[0], iu[1]] - (1 - self.margin), self.tau).mean()
        else:
            l_text = t.sum() * 0.0

        total = l_img + self.attribute_weight * l_attr + self.text_weight * l_text
        return {
            "cross": total,
            "cross/img": l_img.detach(),
            "cross/attr": l_attr.detach(),
            "cross/text": l_text.detach(),
        }
