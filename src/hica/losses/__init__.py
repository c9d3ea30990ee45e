"""HiCA's losses, one module per level of the hierarchy, and their combination.

``global_alignment`` (L_global, category level: image vs class description), ``local_alignment`` (L_local,
attribute level: ROI-pooled tokens vs attribute phrases), ``cross_category`` (L_cross: margins between class
prototypes) and ``hierarchical`` (L = L_global + λ1·L_local + λ2·L_cross). Each takes the model's output
(:class:`hica.model.hica_model.HiCAOutput`) and the labels, and returns a dict of named terms.
"""

from hica.losses.cross_category import CrossCategoryMarginLoss
from hica.losses.global_alignment import GlobalContrastiveLoss, multi_positive_nce
from hica.losses.hierarchical import HierarchicalLoss
from hica.losses.local_alignment import LocalAlignmentLoss, pool_tokens, positives_from_bank

__all__ = [
    "CrossCategoryMarginLoss",
    "GlobalContrastiveLoss",
    "HierarchicalLoss",
    "LocalAlignmentLoss",
    "multi_positive_nce",
    "pool_tokens",
    "positives_from_bank",
]
