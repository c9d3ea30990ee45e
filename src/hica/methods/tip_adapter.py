"""Tip-Adapter and Tip-Adapter-F (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022), following the official code (gaopengcuhk/Tip-Adapter).

``tip_logits = s · f·Wᵀ + α · exp(−β (1 − f·Kᵀ)) · L`` with class text embeddings W, cache keys K (the
normalised support features), one-hot cache values L and the encoder's logit scale s. The official code
hard-codes s = 100 (CLIP's scale); using the encoder's own scale keeps α = 0 identical to ``zeroshot``.

α and β are grid-searched on the validation shots only (never on test): accuracy, then balanced accuracy,
then log-loss; exact ties → the earlier grid point (smaller β, then smaller α). The official per-dataset
search ranges reach β ≤ 13, α ≤ 13; ``ALPHAS`` goes up to 50 so the cache can outweigh poorly aligned
(e.g. medical) text. Differences from the official code: keys come from one view per image (the official
cache averages 10 augmented views), and the search grid is coarser (8 × 9 instead of 200 × 20 points).

Tip-Adapter-F turns the keys into a trainable linear layer initialised from K and trains it on the support
features with cross-entropy on the tip logits at α = ``init_alpha``, β = ``init_beta`` (official: 1, 1–2):
AdamW (lr 1e-3, eps 1e-4), batch 256, cosine schedule over ``epochs`` (official: 20 for most datasets)
× batches, data order seeded by ``data.seed``. The official code keeps the epoch with the best *test*
accuracy; here the last epoch is kept. α, β are then searched again with the trained keys.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from hica.methods.base import FewShotData, Method, register_method
from hica.methods.checks import need_shots, need_text
from hica.methods.selection import select, single_threaded, val_score
from hica.methods.settings import (
    MethodSettings,
    NonNegativeFloat,
    NonNegativeGrid,
    PositiveFloat,
    PositiveGrid,
    PositiveInt,
)
from hica.methods.zeroshot import text_logits

BETAS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 13.0)
ALPHAS = (0.1, 0.3, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)


def tip_logits(
    f: torch.Tensor,
    text_logits_: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """Zero-shot logits plus α × the cache logits ``exp(−β (1 − f·Kᵀ)) · L``."""
    cache = torch.exp(-beta * (1 - f @ keys.T)) @ values
    return text_logits_ + alpha * cache


@register_method("tip_adapter")
class TipAdapter(Method):
    """Training-free cache model on top of zero-shot logits; hparams: ``alphas``, ``betas``."""

    uses_text = True

    class Settings(MethodSettings):
        alphas: NonNegativeGrid = ALPHAS
        betas: PositiveGrid = BETAS

    def _init(self, data: FewShotData) -> None:
        self.text = need_text(data, self.name)
        need_shots(data, self.name)
        self.keys = data.support.clone()
        self.values = F.one_hot(data.support_labels, data.num_classes).float()

    def _logits(self, f: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
        zs = text_logits(f, self.text.class_emb, self.text.logit_scale)
        return tip_logits(f, zs, self.keys, self.values, alpha, beta)

    @torch.no_grad()
    def _search(self, data: FewShotData) -> None:
        zs = text_logits(data.val, self.text.class_emb, self.text.logit_scale)
        grid = list(itertools.product(self.hparams["betas"], self.hparams["alphas"]))
        (b, a), s = select(
            grid,
            lambda ba: val_score(
                tip_logits(data.val, zs, self.keys, self.values, ba[1], ba[0]).softmax(-1), data.val_labels
            ),
        )
        self.alpha, self.beta = a, b
        self.selected = {"alpha": a, "beta": b, "val_accuracy": s[0]}

    @single_threaded
    def fit(self, data: FewShotData) -> TipAdapter:
        self._init(data)
        self._search(data)
        return self

    @torch.no_grad()
    @single_threaded
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self._logits(features, self.alpha, self.beta).softmax(-1)


@register_method("tip_adapter_f")
class TipAdapterF(TipAdapter):
    """Tip-Adapter with the cache keys fine-tuned on the support set; hparams as Tip-Adapter plus
    ``epochs``, ``lr``, ``batch_size``, ``init_alpha``, ``init_beta``."""

    class Settings(TipAdapter.Settings):
        epochs: PositiveInt = 20
        lr: PositiveFloat = 1e-3
        batch_size: PositiveInt = 256
        init_alpha: NonNegativeFloat = 1.0
        init_beta: PositiveFloat = 1.0

    @single_threaded
    def fit(self, data: FewShotData) -> TipAdapterF:
        self._init(data)
        h = self.hparams
        gen = torch.Generator().manual_seed(data.seed)
        x, y = data.support, data.support_labels
        zs = text_logits(x, self.text.class_emb, self.text.logit_scale)
        keys = torch.nn.Parameter(self.keys.clone())
        opt = torch.optim.AdamW([keys], lr=h["lr"], eps=1e-4)  # AdamW's default weight decay, as official
        n, bs = len(x), h["batch_size"]
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, h["epochs"] * -(-n // bs)))
        with torch.enable_grad():
            for _ in range(h["epochs"]):
                perm = torch.randperm(n, generator=gen)
                for i in range(0, n, bs):
                    idx = perm[i : i + bs]
                    logits = tip_logits(x[idx], zs[idx], keys, self.values, h["init_alpha"], h["init_beta"])
                    loss = F.cross_entropy(logits, y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
        self.keys = keys.detach()
        self._search(data)
        return self
