"""Full fine-tuning of the image encoder with cross-entropy (the standard supervised few-shot baseline).

A copy of the image tower plus a cosine classifier head initialised from the support prototypes
(LP-FT, Kumar et al., ICLR 2022) is trained end to end with AdamW. BatchNorm statistics stay frozen (a few
images per batch cannot estimate them). Light, anatomy-safe augmentation: random resized crop (scale
0.75–1, near-square) and small rotations; no flips. The checkpoint (step) with the best validation
accuracy (ties: lower validation loss, then earlier) is kept; test data are never seen.

Without validation images (the realistic protocol) the declared ``fixed_step`` is kept: ``"last"`` (the
default: the model after ``steps`` steps), with no evaluation during training; ``fixed_step: null``
refuses such episodes.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2 as T

from hica.methods.base import ImageFewShotData, ImageMethod, register_method
from hica.methods.settings import MethodSettings, NonNegativeFloat, PositiveFloat, PositiveInt
from hica.model.freeze import freeze_bn
from hica.runtime import autocast, reproducible


@register_method("finetune")
class FineTune(ImageMethod):
    """End-to-end fine-tuning (steps, batch_size, lr, head_lr, weight_decay, eval_every, temperature;
    fixed_step without validation images)."""

    class Settings(MethodSettings):
        steps: PositiveInt = 24
        batch_size: PositiveInt = 16
        lr: PositiveFloat = 1e-4
        head_lr: PositiveFloat = 1e-3
        weight_decay: NonNegativeFloat = 1e-4
        eval_every: PositiveInt = 6
        temperature: PositiveFloat = 0.05
        fixed_step: Literal["last"] | None = "last"

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.model: nn.Module | None = None

    def _logits(self, encoder: nn.Module, head: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        f = F.normalize(encoder.encode_image(x).global_.float(), dim=-1)
        return f @ F.normalize(head, dim=-1).T / self.hparams["temperature"]

    @torch.no_grad()
    def _eval(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        logits = self._batched_logits(x)
        return (logits.argmax(1) == y).float().mean().item(), F.cross_entropy(logits, y).item()

    @torch.no_grad()
    def _batched_logits(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(x), batch_size):
            with autocast(self._device, self._precision):
                out.append(
                    self._logits(self.encoder, self.head, x[i : i + batch_size].to(self._device)).float()
                )
        return torch.cat(out).cpu()

    @reproducible
    def fit(self, encoder, data: ImageFewShotData, device: torch.device, precision: str) -> FineTune:
        hp = self.hparams
        self._device, self._precision = device, precision
        gen = torch.Generator().manual_seed(1000 + data.seed)
        torch.manual_seed(1000 + data.seed)
        self.encoder = copy.deepcopy(encoder).to(device)
        # Head: normalised support prototypes (a prototype classifier before any step).
        self.encoder.eval()
        with torch.no_grad(), autocast(device, precision):
            feats = []
            for i in range(0, len(data.support), 64):
                feats.append(self.encoder.encode_image(data.support[i : i + 64].to(device)).global_.float())
        feats = F.normalize(torch.cat(feats), dim=-1)
        proto = torch.stack(
            [feats[data.support_labels.to(device) == c].mean(0) for c in range(data.num_classes)]
        )
        self.head = nn.Parameter(F.normalize(proto, dim=-1).clone())
        params = [p for p in self.encoder.image_parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            [{"params": params, "lr": hp["lr"]}, {"params": [self.head], "lr": hp["head_lr"]}],
            weight_decay=hp["weight_decay"],
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / hp["steps"]))
        )
        size = data.support.shape[-1]
        aug = T.Compose(
            [
                T.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(0.9, 1.1), antialias=True),
                T.RandomRotation(10),
            ]
        )
        fixed = self.fixed_value(len(data.val_labels), "fixed_step", "the step") is not None
        best = (0.0, 0.0, hp["steps"]) if fixed else (*self._eval(data.val, data.val_labels), 0)
        best_state = None
        n = len(data.support)
        for step in range(1, hp["steps"] + 1):
            self.encoder.train()
            freeze_bn(self.encoder)
            idx = torch.randperm(n, generator=gen)[: hp["batch_size"]]
            x = torch.stack([aug(data.support[i]) for i in idx.tolist()]).to(device)
            y = data.support_labels[idx].to(device)
            with autocast(device, precision):
                loss = F.cross_entropy(self._logits(self.encoder, self.head, x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if not fixed and (step % hp["eval_every"] == 0 or step == hp["steps"]):
                self.encoder.eval()
                acc, vloss = self._eval(data.val, data.val_labels)
                if (acc, -vloss) > (best[0], -best[1]):
                    best = (acc, vloss, step)
                    best_state = {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}
                    best_head = self.head.detach().clone()
        if best_state is not None:  # never set when ``fixed``: the last step's model stays
            self.encoder.load_state_dict(best_state)
            self.head.data.copy_(best_head)
        elif not fixed:  # step 0 (the prototype head) was best; restore it
            self.encoder = copy.deepcopy(encoder).to(device)
            self.head.data.copy_(F.normalize(proto, dim=-1))
        self.encoder.eval()
        self.selected = (
            {"best_step": best[2], "fixed": ["fixed_step"]}
            if fixed
            else {"best_step": best[2], "val_accuracy": best[0], "val_loss": round(best[1], 4)}
        )
        return self

    def predict_proba(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        return self._batched_logits(images, batch_size).softmax(-1)
