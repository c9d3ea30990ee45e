"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022), as in the official code.

``logits = s · f·Wᵀ + α · exp(−β (1 − f·Kᵀ)) · L`` with text weights W, cache keys K (support
features), one-hot values L and the encoder's logit scale s (CLIP: 100). α and β are grid-searched on
the validation shots (accuracy, then log-loss). The official search covers β ≤ 7, α ≤ 3; the α grid is
extended upward so the cache can dominate when the text is poorly aligned. Tip-Adapter-F makes the keys
a trainable linear layer (AdamW, lr 1e-3, eps 1e-4, cosine schedule, ``epochs`` passes over the support
set, α = β = 1 while training), then searches α, β again.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from hica.errors import HicaError
from hica.methods._select import select, val_score
from hica.methods.base import FewShotData, Method, register_method
from hica.methods.zeroshot import text_logits

BETAS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.0)
ALPHAS = (0.1, 0.3, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)


@register_method("tip_adapter")
class TipAdapter(Method):
    """Training-free cache model on top of zero-shot logits; hparams: ``alphas``, ``betas``."""

    uses_text = True

    def __init__(self, alphas: tuple[float, ...] = ALPHAS, betas: tuple[float, ...] = BETAS, **kw) -> None:
        super().__init__(alphas=list(alphas), betas=list(betas), **kw)

    def _logits(self, f: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        affinity = f @ self.keys.T
        cache = torch.exp(-beta * (1 - affinity)) @ self.values
        return text_logits(f, self.text.class_emb, self.text.logit_scale) + alpha * cache

    def _init(self, data: FewShotData) -> None:
        if data.text is None:
            raise HicaError(f"{self.name} needs class text: give the dataset a descriptors YAML")
        self.text = data.text
        self.keys = data.support.clone()
        self.values = F.one_hot(data.support_labels, data.num_classes).float()

    def _search(self, data: FewShotData) -> None:
        grid = list(itertools.product(self.hparams["alphas"], self.hparams["betas"]))
        (a, b), s = select(
            grid, lambda ab: val_score(self._logits(data.val, *ab).softmax(-1), data.val_labels)
        )
        self.alpha, self.beta = a, b
        self.selected = {"alpha": a, "beta": b, "val_accuracy": s[0]}

    def fit(self, data: FewShotData) -> TipAdapter:
        self._init(data)
        with torch.no_grad():
            self._search(data)
        return self

    @torch.no_grad()
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self._logits(features, self.alpha, self.beta).softmax(-1)


@register_method("tip_adapter_f")
class TipAdapterF(TipAdapter):
    """Tip-Adapter with the cache keys fine-tuned on the support set; hparams: ``epochs``, ``lr``."""

    def __init__(self, epochs: int = 20, lr: float = 1e-3, **kw) -> None:
        super().__init__(epochs=epochs, lr=lr, **kw)

    def fit(self, data: FewShotData) -> TipAdapterF:
        self._init(data)
        gen = torch.Generator().manual_seed(data.seed)
        keys = torch.nn.Parameter(self.keys.clone())
        opt = torch.optim.AdamW([keys], lr=self.hparams["lr"], eps=1e-4)
        n, bs = len(data.support), 256
        steps = self.hparams["epochs"] * max(1, -(-n // bs))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(self.hparams["epochs"]):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                self.keys = keys
                loss = F.cross_entropy(self._logits(data.support[idx], 1.0, 1.0), data.support_labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        self.keys = keys.detach()
        with torch.no_grad():
            self._search(data)
        return self
