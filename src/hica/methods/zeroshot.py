"""Zero-shot classification from class text (CLIP, Radford et al., ICML 2021).

``p(c | f) = softmax_c(s · f·t_cᵀ)`` with normalised image feature f, the class's ensembled text embedding
t_c (mean over its prompts / descriptors, renormalised) and the encoder's logit scale s (CLIP: 100).
"""

from __future__ import annotations

import torch

from hica.methods.base import ClassText, FewShotData, Method, register_method
from hica.methods.checks import need_text
from hica.methods.selection import single_threaded


def text_logits(features: torch.Tensor, class_emb: torch.Tensor, scale: float) -> torch.Tensor:
    """CLIP logits: ``scale · f · tᵀ`` on normalised features."""
    return scale * features @ class_emb.T


@register_method("zeroshot")
class ZeroShot(Method):
    """Cosine similarity to each class's text embedding, softmax at the encoder's logit scale."""

    uses_text = True
    zero_shot = True

    @single_threaded
    def fit(self, data: FewShotData) -> ZeroShot:
        self.text: ClassText = need_text(data, self.name)
        return self

    @single_threaded
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return text_logits(features, self.text.class_emb, self.text.logit_scale).softmax(-1)
