"""Zero-shot classification from class text (CLIP, Radford et al., ICML 2021): prompt/descriptor ensemble."""

from __future__ import annotations

import torch

from hica.errors import HicaError
from hica.methods.base import FewShotData, Method, register_method


def text_logits(features: torch.Tensor, class_emb: torch.Tensor, scale: float) -> torch.Tensor:
    """CLIP logits: ``scale · f · tᵀ`` on normalised features."""
    return scale * features @ class_emb.T


@register_method("zeroshot")
class ZeroShot(Method):
    """Cosine similarity to each class's ensembled text embedding, softmax at the encoder's logit scale."""

    uses_text = True
    zero_shot = True

    def fit(self, data: FewShotData) -> ZeroShot:
        if data.text is None:
            raise HicaError("zeroshot needs class text: give the dataset a descriptors YAML")
        self.text = data.text
        return self

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return text_logits(features, self.text.class_emb, self.text.logit_scale).softmax(-1)
