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
Each term is exactly 0 once its constraints hold with margin to spare.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hica.errors import HicaError
from hica.model.hica_model import HiCAOutput


def _margin_hinge(
    anchor: torch.Tensor, protos: torch.Tensor, own: torch.Tensor, margin: float
) -> torch.Tensor:
    """mean over rows r and classes c' ≠ own[r] of [m − ⟨x_r, t_own⟩ + ⟨x_r, t_c'⟩]_+ (normalised inputs)."""
    c = protos.shape[0]
    if anchor.shape[0] == 0 or c < 2:
        return anchor.sum() * 0.0 + protos.sum() * 0.0
    sim = anchor @ protos.T  # (R, C)
    pos = sim.gather(1, own[:, None])
    neg = torch.ones_like(sim, dtype=torch.bool).scatter_(1, own[:, None], False)
    hinge = F.relu(margin - pos + sim)
    return (hinge * neg).sum() / neg.sum()


class CrossCategoryMarginLoss(nn.Module):
    """Prototype margin loss over image prototypes, text prototypes and attribute phrases (module docstring).

    ``margin``: m in cosine units, in [0, 2]; ``attribute_weight`` / ``text_weight``: weights of L_attr /
    L_text (0 turns a term off)."""

    def __init__(self, margin: float = 0.2, attribute_weight: float = 1.0, text_weight: float = 1.0) -> None:
        super().__init__()
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
        onehot = F.one_hot(labels, c).to(f.dtype)  # (B, C)
        counts = onehot.sum(0)
        present = counts > 0
        mu = F.normalize((onehot.T @ f)[present], dim=-1)  # (K, D)
        classes = torch.arange(c, device=labels.device)[present]
        l_img = _margin_hinge(mu, t, classes, self.margin)

        if self.attribute_weight > 0:
            if attribute_labels.shape != attributes.shape[:1]:
                raise ValueError("the bank needs bank_labels (A,) giving each phrase's class")
            l_attr = _margin_hinge(F.normalize(attributes, dim=-1), t, attribute_labels, self.margin)
        else:
            l_attr = t.sum() * 0.0

        if c >= 2:
            iu = torch.triu_indices(c, c, offset=1, device=t.device)
            gram = t @ t.T
            l_text = F.relu(gram[iu[0], iu[1]] - (1 - self.margin)).mean()
        else:
            l_text = t.sum() * 0.0

        total = l_img + self.attribute_weight * l_attr + self.text_weight * l_text
        return {
            "cross": total,
            "cross/img": l_img.detach(),
            "cross/attr": l_attr.detach(),
            "cross/text": l_text.detach(),
        }
