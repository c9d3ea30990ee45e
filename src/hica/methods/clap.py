"""CLAP: CLass-Adaptive linear Probing (Silva-Rodríguez et al., "A Closer Look at the Few-Shot Adaptation of
Large Vision-Language Models", CVPR 2024), following the official code (jusiro/CLAP, constraint "l2").

A linear probe whose class prototypes W start at the zero-shot text prototypes T; logits are
``s · f·(w_c/‖w_c‖)ᵀ`` with the encoder's logit scale s (temperature of the zero-shot model). The loss is

    CE(W) + (1/C) Σ_c λ_c ‖w_c − t_c‖²

where the penalty multipliers are set once from the zero-shot model on the support set (the paper's
class-adaptive initialisation of the augmented-Lagrangian multipliers): λ_c is the mean zero-shot softmax
probability of class c over the support shots of class c. Classes the text already recognises are held
near their prototype; classes it gets wrong may move freely. The multipliers are not updated during
training (the paper's CLAP, not its "adaptative" ALM variant), and nothing is tuned on validation: model
selection-free adaptation is the point of the method.

Optimisation as the official config: SGD (momentum 0.9, no weight decay), lr 0.1, batch 256, ``epochs`` =
300 with one constant warm-up epoch at lr 1e-5 then cosine decay (per epoch); with ≤ 256 support shots
every epoch is one full-batch step. Simplifications: the official code trains and computes λ on 20
augmented views per support image (features here are cached, one view per image), and its prototypes are
the raw (unnormalised) mean prompt embeddings, here the L2-normalised class embeddings (the only ones the
encoders hand over). As logits use w/‖w‖, the penalty's weight relative to the cross-entropy grows with
‖t‖²: with unit-norm t the constraint is looser than the official one for encoders whose raw text
embeddings are longer than 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hica.methods.base import FewShotData, Method, register_method
from hica.methods.checks import need_shots, need_text
from hica.methods.selection import single_threaded
from hica.methods.settings import MethodSettings, PositiveFloat, PositiveInt
from hica.methods.zeroshot import text_logits


def class_adaptive_multipliers(
    zs_probs: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """λ_c = mean over the shots of class c of the zero-shot probability of class c (1.0 with no shot)."""
    onehot = F.one_hot(labels, num_classes).float()
    counts = onehot.sum(0)
    lam = (zs_probs * onehot).sum(0) / counts.clamp_min(1)
    return torch.where(counts > 0, lam, torch.ones_like(lam))


@register_method("clap")
class CLAP(Method):
    """Zero-shot-initialised, class-adaptively constrained linear probe; hparams: ``epochs``, ``lr``,
    ``batch_size``."""

    uses_text = True

    class Settings(MethodSettings):
        epochs: PositiveInt = 300
        lr: PositiveFloat = 0.1
        batch_size: PositiveInt = 256

    def _logits(self, f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.s * f @ F.normalize(w, dim=-1).T

    @single_threaded
    def fit(self, data: FewShotData) -> CLAP:
        text = need_text(data, self.name)
        need_shots(data, self.name)
        h = self.hparams
        t, self.s = text.class_emb.clone(), text.logit_scale
        x, y = data.support, data.support_labels
        lam = class_adaptive_multipliers(text_logits(x, t, self.s).softmax(-1), y, data.num_classes)

        epochs, n, bs = h["epochs"], len(x), h["batch_size"]

        def lr_at(epoch: int) -> float:  # constant warm-up epoch, then cosine over the epochs (Dassl)
            return 1e-5 if epoch == 0 else 0.5 * h["lr"] * (1 + math.cos(math.pi * (epoch - 1) / epochs))

        gen = torch.Generator().manual_seed(data.seed)
        w = torch.nn.Parameter(t.clone())
        opt = torch.optim.SGD([w], lr=lr_at(0), momentum=0.9)
        with torch.enable_grad():
            for epoch in range(epochs):
                for group in opt.param_groups:
                    group["lr"] = lr_at(epoch)
                perm = torch.randperm(n, generator=gen) if n > bs else torch.arange(n)
                for i in range(0, n, bs):
                    idx = perm[i : i + bs]
                    penalty = (lam * ((w - t) ** 2).sum(-1)).mean()
                    loss = F.cross_entropy(self._logits(x[idx], w), y[idx]) + penalty
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        self.w = w.detach()
        drift = (self.w - t).norm(dim=-1)
        self.selected = {
            "lambda": [round(v, 4) for v in lam.tolist()],
            "prototype_shift": [round(v, 4) for v in drift.tolist()],
        }
        return self

    @torch.no_grad()
    @single_threaded
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self._logits(features, self.w).softmax(-1)
