"""Global (category-level) image-text contrast: label-aware symmetric InfoNCE.

CLIP's loss (Radford et al., 2021) takes the diagonal of the (B, B) image-text similarity matrix as the only
positives. In a classification batch several images share a class, and their class descriptions describe
all of them, so the plain diagonal target would push an image away from a correct description of its own
class. Following UniCL (Yang et al., "Unified Contrastive Learning in Image-Text-Label Space", CVPR 2022;
the same multi-positive target as SupCon, Khosla et al., NeurIPS 2020), every pair with the same label is a
positive, and the target of a row is uniform over its positives:

    s_ij = cos(f_i, t_j) / τ,     P(i) = {j : y_j = y_i}
    L_i→t = −(1/B) Σ_i (1/|P(i)|) Σ_{j∈P(i)} log softmax_j(s_i·)
    L_t→i = −(1/B) Σ_j (1/|P(j)|) Σ_{i∈P(j)} log softmax_i(s_·j)
    L_global = (L_i→t + L_t→i) / 2

With all labels distinct (or ``labels=None``) this is exactly CLIP's symmetric InfoNCE.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hica.errors import HicaError
from hica.model.hica_model import HiCAOutput

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on the learned 1/τ


def check_temperature(temperature: float, name: str = "temperature") -> float:
    """``temperature`` as a float; HicaError naming ``name`` unless it is finite and > 0."""
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise HicaError(f"{name} must be a positive number, got {temperature!r}")
    return t


def multi_positive_nce(
    logits: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-row multi-positive InfoNCE: −mean_{j∈pos(i)} log softmax_{j∈cand(i)}(logits_i).

    ``logits`` (R, K); ``positives`` (R, K) bool, every row with at least one positive; ``candidates``
    (R, K) bool (the softmax support, default all; positives must be candidates). Returns (R,).
    """
    if candidates is not None:
        logits = logits.masked_fill(~candidates, float("-inf"))
    logp = torch.log_softmax(logits, dim=-1)
    logp = torch.where(positives, logp, torch.zeros_like(logp))
    return -logp.sum(-1) / positives.sum(-1).clamp_min(1)


class GlobalContrastiveLoss(nn.Module):
    """Label-aware symmetric InfoNCE between image embeddings and class-description embeddings (UniCL).

    ``temperature``: τ; with ``learnable=True`` log(1/τ) is a parameter (read as ``logit_scale``), clamped
    at 1/τ ≤ 100 as in CLIP.
    """

    def __init__(self, temperature: float = 0.07, learnable: bool = False) -> None:
        super().__init__()
        t = check_temperature(temperature)
        init = torch.tensor(math.log(1.0 / t))
        self.learnable = learnable
        if learnable:
            self.log_logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_logit_scale", init)

    @property
    def logit_scale(self) -> torch.Tensor:
        """1/τ (clamped at 100)."""
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, out: HiCAOutput, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"global": L_global}`` between ``out.image_global`` (B, D) and ``out.text_global`` (B, D) (row i
        embeds one description of image i's class); ``labels`` (B,) class ids (None: all distinct, plain
        CLIP)."""
        return {"global": self.contrast(out.image_global, out.text_global, labels)}

    def contrast(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """L_global between image embeddings (B, D) and one text embedding per image (B, D); ``labels`` as in
        :meth:`forward` (also used on cached features, without a model output: ``methods.text_head``)."""
        if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
            raise ValueError(
                f"image_global and text_global must both be (B, D), got {tuple(image_emb.shape)} and "
                f"{tuple(text_emb.shape)}"
            )
        b = image_emb.shape[0]
        if labels is None:
            pos = torch.eye(b, dtype=torch.bool, device=image_emb.device)
        else:
            if labels.shape != (b,):
                raise ValueError(f"labels must be ({b},), got {tuple(labels.shape)}")
            pos = labels[:, None] == labels[None, :]
        f = F.normalize(image_emb, dim=-1)
        t = F.normalize(text_emb, dim=-1)
        logits = self.logit_scale * f @ t.T
        i2t = multi_positive_nce(logits, pos).mean()
        t2i = multi_positive_nce(logits.T, pos.T).mean()
        return (i2t + t2i) / 2
