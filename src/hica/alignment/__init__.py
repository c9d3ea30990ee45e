"""HiCA's hierarchical alignment (stage 2): the global / local / cross-category losses and ROI helpers."""

from hica.alignment.losses import (
    CrossCategoryMarginLoss,
    GlobalContrastiveLoss,
    HierarchicalLoss,
    LocalAlignmentLoss,
    positives_from_bank,
)
from hica.alignment.roi import mask_to_token_weights, masks_to_token_weights, proposal_roi

__all__ = [
    "CrossCategoryMarginLoss",
    "GlobalContrastiveLoss",
    "HierarchicalLoss",
    "LocalAlignmentLoss",
    "mask_to_token_weights",
    "masks_to_token_weights",
    "positives_from_bank",
    "proposal_roi",
]
