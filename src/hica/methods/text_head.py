"""A text head trained on an episode's support set: the text the feature baselines would have in practice.

The embedded default encoder's text head (``text_proj``) is a seeded projection that was never trained, so
text-using baselines (Tip-Adapter(-F), CLAP, LP++) scored with it read class text in coordinates unrelated
to the image features, while HiCA trains its own head. For an equal footing (issue 13 §1) a benchmark can
give them a head trained the way HiCA's first phase trains its own (``HiCA._align_text_head``): a copy of
``text_proj`` on the frozen sentence embeddings of the class prompts, trained with Adam on the episode's
support features against the category-level loss ``L_global`` (``hica.losses.global_alignment``: label-aware
symmetric InfoNCE between each support image and one description of its class, drawn per step). Only the
global level applies: cached features have no local tokens, so ``L_local`` and ``L_cross`` are not used.

Defaults are HiCA's head phase (100 steps, lr 1e-2, τ 0.07; ``TextHeadConfig``). Only the support set's
features and labels are read: never the validation shots or the test split. The resulting
:class:`~hica.model.class_text.ClassText` has the prompts of the benchmark's ``text_mode`` embedded by the
trained head, and the encoder's own logit scale.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from hica.data.descriptors import Descriptors
from hica.errors import HicaError
from hica.losses.global_alignment import GlobalContrastiveLoss
from hica.model.class_text import ClassText, class_text_from_raw
from hica.model.text import pooled_sentences_batched
from hica.runtime import deterministic


class SupportTextHead:
    """The class prompts of one dataset, embedded once by the frozen text transformer; :meth:`fit` trains a
    fresh copy of the encoder's ``text_proj`` on one episode's support features.

    ``steps``, ``lr``, ``temperature``: the head phase's Adam steps, learning rate and τ of ``L_global``.
    """

    def __init__(
        self,
        encoder: Any,
        descriptors: Descriptors,
        classes: Sequence[str],
        mode: str = "ensemble",
        steps: int = 100,
        lr: float = 1e-2,
        temperature: float = 0.07,
    ) -> None:
        if not hasattr(encoder, "text_proj") or not hasattr(encoder, "text_model"):
            raise HicaError(
                f"text_head source 'support' needs an encoder with a separate text transformer and text_proj "
                f"head (like 'default'); {getattr(encoder, 'name', '?')!r} has none: use text_head source "
                "'encoder'"
            )
        if steps < 1 or lr <= 0:
            raise HicaError(f"text_head: steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
        prompts = [descriptors.class_prompts(c, mode) for c in classes]
        flat = [p for ps in prompts for p in ps]
        with torch.no_grad():
            self.pooled = pooled_sentences_batched(encoder, flat).cpu()
        self.sizes = [len(ps) for ps in prompts]
        self.labels = torch.tensor([c for c, n in enumerate(self.sizes) for _ in range(n)])
        self.proj = copy.deepcopy(encoder.text_proj).float().cpu()
        with torch.no_grad():  # each prompt's raw length under the encoder's head (see ``fit``)
            self.lengths = self.proj(self.pooled).norm(dim=-1, keepdim=True)
        self.logit_scale = float(getattr(encoder, "logit_scale", 100.0))
        self.steps, self.lr = steps, lr
        self.loss = GlobalContrastiveLoss(temperature)

    def fit(self, support: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[ClassText, list[float]]:
        """(class text from a head trained on ``support`` (N, D) of classes ``labels`` (N,), the loss per
        step). Deterministic for a given ``seed`` (descriptions drawn from a generator seeded by it).

        Training sets directions only: ``L_global`` reads normalised embeddings, so the trained head's raw
        output length is an accident of the optimiser (it grows about tenfold). Each prompt keeps the raw
        length it has under the encoder's head, so ``class_norm`` (CLAP's prototype length) is the
        encoder's, and only the directions are trained."""
        if len(support) == 0 or support.shape[0] != labels.shape[0]:
            raise HicaError(
                f"text_head source 'support': need support features and one label each, got "
                f"{tuple(support.shape)} features and {tuple(labels.shape)} labels"
            )
        with deterministic(1), torch.enable_grad():
            proj = copy.deepcopy(self.proj)
            for p in proj.parameters():
                p.requires_grad_(True)
            opt = torch.optim.Adam(proj.parameters(), lr=self.lr)
            gen = torch.Generator().manual_seed(seed)
            x = F.normalize(support.float().cpu(), dim=-1)
            y = labels.cpu()
            members = [torch.nonzero(self.labels == c, as_tuple=True)[0] for c in range(len(self.sizes))]
            losses = []
            for _ in range(self.steps):
                text = proj(self.pooled)
                pick = torch.stack(
                    [members[c][torch.randint(len(members[c]), (1,), generator=gen)][0] for c in y.tolist()]
                )
                loss = self.loss.contrast(x, text[pick], y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            with torch.no_grad():
                raw = F.normalize(proj(self.pooled), dim=-1) * self.lengths
        return class_text_from_raw(raw, self.sizes, self.logit_scale), losses


class EpisodeText:
    """The class text a text-using feature method gets for an episode, per a benchmark's ``text_head``
    config (``hica.config.TextHeadConfig`` as a dict): the encoder's (``source: encoder``), or one trained on
    the episode's support set (``source: support``; one :class:`SupportTextHead` per dataset)."""

    def __init__(self, config: dict[str, Any], mode: str = "ensemble") -> None:
        self.config, self.mode = config, mode
        self.heads: dict[str, SupportTextHead] = {}
        self._last: tuple[Any, ClassText] | None = None  # the episode's head, shared by its text methods

    def text(
        self,
        encoder: Any,
        dataset: Any,
        descriptors: Descriptors | None,
        encoder_text: ClassText | None,
        support: torch.Tensor,
        labels: torch.Tensor,
        seed: int,
    ) -> ClassText | None:
        """``encoder_text`` (source ``encoder``), or the class text of a head trained on ``support`` /
        ``labels`` (source ``support``) for ``dataset`` (a ``Dataset``: its name and classes)."""
        c = self.config
        if c["source"] == "encoder":
            return encoder_text
        if descriptors is None:
            raise HicaError(f"text_head source 'support': dataset {dataset.name} has no class descriptors")
        if dataset.name not in self.heads:
            self.heads[dataset.name] = SupportTextHead(
                encoder, descriptors, dataset.classes, self.mode, c["steps"], c["lr"], c["temperature"]
            )
        x = support.detach().float().cpu().contiguous()
        key = (dataset.name, tuple(dataset.classes), seed, labels.tolist(), x.numpy().tobytes())
        if self._last is None or self._last[0] != key:  # same episode, same head: train it once
            self._last = (key, self.heads[dataset.name].fit(x, labels, seed)[0])
        return self._last[1]
