"""CLAP (Silva-Rodríguez et al., "A Closer Look at the Few-Shot Adaptation of Large Vision-Language
Models", CVPR 2024): a zero-shot-initialised linear probe with a class-adaptive constraint.

Class weights W start at the text prototypes T; the loss is cross-entropy on ``s · f·Wᵀ`` plus
``Σ_c λ_c ‖w_c − t_c‖²``. Each λ_c is set once from the zero-shot model on the support set: the mean
zero-shot probability of class c over the support samples of class c (the paper's class-adaptive
initialisation), so classes the text already recognises are held close to their prototype and the others
may move. Full-batch SGD (momentum 0.9), ``steps`` iterations; no hyperparameter is tuned on validation
(model selection-free, the point of the paper). Simplification: no feature augmentation (features are
cached) and the λ are not updated further.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hica.errors import HicaError
from hica.methods.base import FewShotData, Method, register_method
from hica.methods.zeroshot import text_logits


@register_method("clap")
class CLAP(Method):
    """Zero-shot-initialised, class-adaptively constrained linear probe; hparams: ``steps``, ``lr``."""

    uses_text = True

    def __init__(self, steps: int = 300, lr: float = 0.1) -> None:
        super().__init__(steps=steps, lr=lr)

    def fit(self, data: FewShotData) -> CLAP:
        if data.text is None:
            raise HicaError("clap needs class text: give the dataset a descriptors YAML")
        t = data.text.class_emb.clone()
        s = data.text.logit_scale
        x, y = data.support, data.support_labels
        with torch.no_grad():
            zs = text_logits(x, t, s).softmax(-1)
            lam = torch.stack(
                [
                    zs[y == c, c].mean() if (y == c).any() else zs.new_tensor(0.0)
                    for c in range(data.num_classes)
                ]
            )
        w = torch.nn.Parameter(t.clone())
        opt = torch.optim.SGD([w], lr=self.hparams["lr"], momentum=0.9)
        for _ in range(self.hparams["steps"]):
            loss = F.cross_entropy(s * x @ w.T, y) + (lam * ((w - t) ** 2).sum(-1)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.w, self.s = w.detach(), s
        self.selected = {"lambda": [round(v, 4) for v in lam.tolist()]}
        return self

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return (self.s * features @ self.w.T).softmax(-1)
