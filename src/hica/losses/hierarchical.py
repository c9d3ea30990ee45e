"""HiCA's stage-2 objective: L = L_global + λ1·L_local + λ2·L_cross (arXiv 2501.09294).

Each term is its own module (``global_alignment``, ``local_alignment``, ``cross_category``);
``HierarchicalLoss`` combines them, and its ``use_*`` switches give the ablations ("global only", "−local",
"−cross"). Every loss takes the model's output (:class:`hica.model.hica_model.HiCAOutput`) and the labels and
returns a dict of named terms.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import nn

from hica.errors import HicaError
from hica.losses.cross_category import CrossCategoryMarginLoss, Scale
from hica.losses.global_alignment import GlobalContrastiveLoss
from hica.losses.local_alignment import EmptyRoi, LocalAlignmentLoss
from hica.model.hica_model import HiCAOutput


class HierarchicalLoss(nn.Module):
    """``use_global·L_global + use_local·λ1·L_local + use_cross·λ2·L_cross``.

    ``lambda_local`` = λ1, ``lambda_cross`` = λ2 (≥ 0; the defaults 1.0 are placeholders, not values from the
    paper); ``temperature`` is τ of the global and local contrasts (``learnable_temperature`` learns the
    global one), ``margin`` the cosine margin of L_cross and ``cross_scale`` its scale (``logit`` or
    ``cosine``); ``background_weight`` and ``empty_roi`` go to ``LocalAlignmentLoss``. A disabled term is
    not computed and does not appear in the returned dict.
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
        cross_scale: Scale = "cosine",
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
        self.cross_loss = (
            CrossCategoryMarginLoss(margin, scale=cross_scale, temperature=temperature) if use_cross else None
        )

    def forward(self, out: HiCAOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The terms that are on for the model output ``out`` of images with classes ``labels`` (B,).

        Returns ``total`` (the loss to minimise) and, detached, ``global``, ``local``, ``cross`` (the
        unweighted terms) and their diagnostics as ``local/<name>`` and ``cross/<name>``.
        """
        total = out.image_global.sum() * 0.0
        terms: dict[str, torch.Tensor] = {}
        if self.global_loss is not None:
            part = self.global_loss(out, labels)
            total = total + part["global"]
            terms.update(_detached(part))
        if self.local_loss is not None:
            part = self.local_loss(out, labels)
            total = total + self.lambda_local * part["local"]
            terms.update(_detached(part))
        if self.cross_loss is not None:
            part = self.cross_loss(out, labels)
            total = total + self.lambda_cross * part["cross"]
            terms.update(_detached(part))
        terms["total"] = total
        return terms


def _detached(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in terms.items()}
