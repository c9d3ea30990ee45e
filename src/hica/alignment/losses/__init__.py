"""HiCA's stage-2 objective: L = L_global + λ1·L_local + λ2·L_cross (arXiv 2501.09294).

Each term is its own module (``global_``, ``local``, ``cross``); ``HierarchicalLoss`` combines them, and its
``use_*`` switches give the ablations ("global only", "−local", "−cross").
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import nn

from hica.alignment.losses.cross import CrossCategoryMarginLoss
from hica.alignment.losses.global_ import GlobalContrastiveLoss, multi_positive_nce
from hica.alignment.losses.local import EmptyRoi, LocalAlignmentLoss, pool_tokens, positives_from_bank
from hica.errors import HicaError

__all__ = [
    "CrossCategoryMarginLoss",
    "GlobalContrastiveLoss",
    "HierarchicalLoss",
    "LocalAlignmentLoss",
    "multi_positive_nce",
    "pool_tokens",
    "positives_from_bank",
]


class HierarchicalLoss(nn.Module):
    """``use_global·L_global + use_local·λ1·L_local + use_cross·λ2·L_cross``.

    ``lambda_local`` = λ1, ``lambda_cross`` = λ2 (≥ 0; the defaults 1.0 are placeholders, not values from the
    paper); ``temperature`` is τ of the global and local contrasts (``learnable_temperature`` learns the
    global one), ``margin`` the cosine margin of L_cross; ``background_weight`` and ``empty_roi`` go to
    ``LocalAlignmentLoss``. A disabled term is not computed and does not appear in the returned dict.
    """

    def __init__(
        self,
        lambda_local: float = 1.0,
        lambda_cross: float = 1.0,
        temperature: float = 0.07,
        margin: float = 0.2,
        use_global: bool = True,
        use_local: bool = True,
        use_cross: bool = True,
        background_weight: float = 1.0,
        empty_roi: EmptyRoi = "whole",
        learnable_temperature: bool = False,
    ) -> None:
        super().__init__()
        for name, v in (("lambda_local", lambda_local), ("lambda_cross", lambda_cross)):
            if not (isinstance(v, Real) and math.isfinite(v) and v >= 0):
                raise HicaError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (use_global or use_local or use_cross):
            raise HicaError("use_global, use_local and use_cross are all off: there is nothing to train")
        self.lambda_local = float(lambda_local)
        self.lambda_cross = float(lambda_cross)
        self.global_loss = (
            GlobalContrastiveLoss(temperature, learnable=learnable_temperature) if use_global else None
        )
        self.local_loss = LocalAlignmentLoss(temperature, background_weight, empty_roi) if use_local else None
        self.cross_loss = CrossCategoryMarginLoss(margin) if use_cross else None

    def forward(
        self,
        *,
        image_global: torch.Tensor,
        labels: torch.Tensor,
        text_global: torch.Tensor | None = None,
        local: torch.Tensor | None = None,
        roi: torch.Tensor | None = None,
        bank: torch.Tensor | None = None,
        bank_labels: torch.Tensor | None = None,
        positives: torch.Tensor | None = None,
        positive_mask: torch.Tensor | None = None,
        text_protos: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Inputs by term. Global: ``image_global`` (B, D), ``text_global`` (B, D) one sampled class
        description per image, ``labels`` (B,). Local: ``local`` (B, N, D), ``roi`` (B, N), the attribute
        phrase ``bank`` (A, D) with ``bank_labels`` (A,), and optionally per-image ``positives`` (B, P, D) /
        ``positive_mask`` (B, P) (default: every bank phrase of the image's class). Cross: ``text_protos``
        (C, D), with ``bank`` / ``bank_labels`` as the attribute level when given.

        Returns ``(total, parts)``: ``parts`` holds detached ``total``, ``global``, ``local``, ``cross`` (the
        unweighted terms that are on) and their diagnostics as ``local/<name>`` and ``cross/<name>``.
        """
        total = image_global.sum() * 0.0
        parts: dict[str, torch.Tensor] = {}
        if self.global_loss is not None:
            _need("global", use="use_global", text_global=text_global)
            lg = self.global_loss(image_global, text_global, labels)
            total = total + lg
            parts["global"] = lg.detach()
        if self.local_loss is not None:
            _need("local", use="use_local", local=local, roi=roi, bank=bank, bank_labels=bank_labels)
            if positives is None:
                positives, positive_mask = positives_from_bank(bank, bank_labels, labels)
            elif positive_mask is None:
                positive_mask = torch.ones(positives.shape[:2], dtype=torch.bool, device=positives.device)
            ll, diag = self.local_loss(local, roi, positives, positive_mask, bank, bank_labels, labels)
            total = total + self.lambda_local * ll
            parts["local"] = ll.detach()
            parts.update({f"local/{k}": v for k, v in diag.items()})
        if self.cross_loss is not None:
            _need("cross", use="use_cross", text_protos=text_protos)
            lc, diag = self.cross_loss(image_global, labels, text_protos, bank, bank_labels)
            total = total + self.lambda_cross * lc
            parts["cross"] = lc.detach()
            parts.update({f"cross/{k}": v for k, v in diag.items()})
        parts["total"] = total.detach()
        return total, parts


def _need(term: str, use: str, **inputs: torch.Tensor | None) -> None:
    missing = [k for k, v in inputs.items() if v is None]
    if missing:
        raise ValueError(f"the {term} term needs {', '.join(missing)}; pass them or set {use}=False")
