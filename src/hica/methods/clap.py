"""CLAP: CLass-Adaptive linear Probing (Silva-Rodríguez et al., "A Closer Look at the Few-Shot Adaptation of
Large Vision-Language Models", CVPR 2024), following the official code (github.com/jusiro/CLAP:
``trainers/adapters.py``, ``configs/trainers/SGD_lr1e-1_B256_ep300.yaml``, ``scripts/adapt.sh`` with
``INIT ZS``, ``CONSTRAINT l2``).

A linear probe whose class prototypes W start at the zero-shot text prototypes T (``forward_lp``): logits
``s · f·(w_c/‖w_c‖)ᵀ`` with unit-norm features f and the encoder's logit scale s (CLIP's
``logit_scale.exp()``). The loss (``forward_backward``, ``zero_shot_constraint``) is

    CE(W) + (1/C) Σ_c λ_c ‖w_c − t_c‖²

with λ_c set once from the zero-shot model (``init_lagrangian_multipliers``): the mean zero-shot softmax
probability of class c over the training samples of class c. Classes the text already recognises are held
near their prototype; classes it gets wrong move freely. λ is not updated during training (CLAP, not the
"adaptative" ALM variant), and nothing is tuned on validation. λ_c comes from whatever text head the
episode provides (``FewShotData.text``: today the default encoder's text head; a trained head is issue 13).

**Samples.** As the official ``extract_features(reps=20, transforms=True)``: ``views`` (20) augmented views
of every support image, each one a training sample (``FewShotData.support_views``; λ is computed on them
too). Without views (a hand-built ``FewShotData``) the plain support features are the samples;
``selected["samples"]`` says which ("views:20" / "plain").

**Prototypes.** The official T is the raw (unnormalised) mean of the prompts' text embeddings. As logits use
w/‖w‖, training w from t_c = r_c·t̂_c (r_c = ‖t_c‖) is, in unit-norm terms, a penalty r_c² times stronger
and a cross-entropy step r_c² times smaller — so scaling the penalty alone by r² is not the official
problem. ``build_class_text`` keeps r_c as ``ClassText.class_norm`` (the length of the class's mean raw prompt
embedding), so the prototypes are r_c·t̂_c and the training is the official one; a hand-built ``ClassText``
without ``class_norm`` gives r_c = 1.

**Optimisation** as the official config: SGD (momentum 0.9, no weight decay), lr 0.1, batch 256,
``epochs`` = 300 with one constant warm-up epoch at lr 1e-5 then cosine decay stepped per epoch (Dassl).
An epoch is as the official ``run_epoch``: the samples are shuffled (``data.seed``) and the first
``len(train_loader_x)`` batches taken, i.e. max(1, ⌊N/256⌋) batches for N support images (Dassl drops the
last partial batch when N ≥ 256).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from hica.errors import HicaError
from hica.methods.base import ClassText, FewShotData, Method, register_method
from hica.methods.checks import need_shots, need_text
from hica.methods.selection import single_threaded
from hica.methods.settings import MethodSettings, PositiveFloat, PositiveInt
from hica.methods.zeroshot import text_logits

WARMUP_LR = 1e-5  # WARMUP_CONS_LR, one WARMUP_EPOCH of type "constant"


def class_adaptive_multipliers(
    zs_probs: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """λ_c = mean over the samples of class c of their zero-shot probability of class c (1.0 with none)."""
    onehot = F.one_hot(labels, num_classes).float()
    counts = onehot.sum(0)
    lam = (zs_probs * onehot).sum(0) / counts.clamp_min(1)
    return torch.where(counts > 0, lam, torch.ones_like(lam))


def prototypes(text: ClassText) -> torch.Tensor:
    """The official raw class prototypes r_c·t̂_c when ``text`` carries ``class_norm``, else t̂_c."""
    norm = getattr(text, "class_norm", None)
    t = text.class_emb.clone()
    return t if norm is None else t * torch.as_tensor(norm, dtype=t.dtype).reshape(-1, 1)


def constraint(w: torch.Tensor, t: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The official ``l2`` constraint: mean over classes of λ_c ‖w_c − t_c‖²."""
    return (lam * (w - t).pow(2).sum(-1)).mean()


def lr_at(epoch: int, epochs: int, lr: float) -> float:
    """Dassl's cosine schedule after one constant warm-up epoch (the scheduler steps once per epoch)."""
    return WARMUP_LR if epoch == 0 else 0.5 * lr * (1 + math.cos(math.pi * (epoch - 1) / epochs))


def training_samples(data: FewShotData, views: int, method: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(samples, labels, source): the first ``views`` augmented views of each support image, each one a
    sample, else (no views given) the plain support features."""
    sv, n, d = data.support_views, len(data.support), data.support.shape[1]
    if sv is None:
        return data.support, data.support_labels, "plain"
    if sv.dim() != 3 or sv.shape[0] != n or sv.shape[2] != d:
        raise HicaError(f"{method}: support_views must be (N, V, D) = ({n}, V, {d}), got {tuple(sv.shape)}")
    if sv.shape[1] < views:
        raise HicaError(f"{method}: views = {views} but only {sv.shape[1]} augmented view(s) given")
    x = sv[:, :views].reshape(n * views, d)
    return x, data.support_labels.repeat_interleave(views), f"views:{views}"


@register_method("clap")
class CLAP(Method):
    """Zero-shot-initialised, class-adaptively constrained linear probe; hparams: ``epochs``, ``lr``,
    ``batch_size``, ``views``."""

    uses_text = True

    class Settings(MethodSettings):
        epochs: PositiveInt = 300
        lr: PositiveFloat = 0.1
        batch_size: PositiveInt = 256
        views: PositiveInt = 20

    @classmethod
    def views_needed(cls, hparams: Mapping[str, Any]) -> int:
        """Augmented views per support image, each one a training sample (setting ``views``)."""
        return int(hparams["views"])

    def _logits(self, f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.s * f @ F.normalize(w, dim=-1).T

    @single_threaded
    def fit(self, data: FewShotData) -> CLAP:
        text = need_text(data, self.name)
        need_shots(data, self.name)
        h = self.hparams
        x, y, source = training_samples(data, h["views"], self.name)
        t, self.s = prototypes(text), text.logit_scale
        zs = text_logits(x, F.normalize(t, dim=-1), self.s)  # the zero-shot model on the training samples
        lam = class_adaptive_multipliers(zs.softmax(-1), y, data.num_classes)

        epochs, bs = h["epochs"], h["batch_size"]
        n_batches = max(1, len(data.support) // bs)  # len(train_loader_x) over the support images
        gen = torch.Generator().manual_seed(data.seed)
        w = torch.nn.Parameter(t.clone())
        opt = torch.optim.SGD([w], lr=WARMUP_LR, momentum=0.9)
        with torch.enable_grad():
            for epoch in range(epochs):
                for group in opt.param_groups:
                    group["lr"] = lr_at(epoch, epochs, h["lr"])
                perm = torch.randperm(len(x), generator=gen) if len(x) > bs else torch.arange(len(x))
                for i in range(n_batches):
                    idx = perm[i * bs : (i + 1) * bs]
                    loss = F.cross_entropy(self._logits(x[idx], w), y[idx]) + constraint(w, t, lam)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        self.w = w.detach()
        drift = (self.w - t).norm(dim=-1)
        self.selected = {
            "lambda": [round(v, 4) for v in lam.tolist()],
            "prototype_shift": [round(v, 4) for v in drift.tolist()],
            "samples": source,
        }
        return self

    @torch.no_grad()
    @single_threaded
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        return self._logits(features, self.w).softmax(-1)
