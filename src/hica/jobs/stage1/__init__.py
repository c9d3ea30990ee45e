"""HiCA stage 1: domain-specific pretraining of both towers, without reading a single label.

Image tower (:mod:`~hica.jobs.stage1.image`): DeepCluster-v2 on pseudo-labels from clustering the encoder's
own features. Text tower (:mod:`~hica.jobs.stage1.text`): SimCSE on a domain corpus. The job
(:mod:`~hica.jobs.stage1.runner`) runs both and writes the adapted encoder, its summary and model card.
"""

from hica.jobs.stage1.image import ClusterHead, kmeans_assign, train_image_tower
from hica.jobs.stage1.runner import run_stage1
from hica.jobs.stage1.text import TextCorpus, adapt_text_tower, build_corpus

__all__ = [
    "ClusterHead",
    "TextCorpus",
    "adapt_text_tower",
    "build_corpus",
    "kmeans_assign",
    "run_stage1",
    "train_image_tower",
]
