"""HiCA's model: the image tower plus a trainable text head, and its typed output for the losses.

``HiCAModel.forward(images, labels, masks)`` encodes a batch and returns a :class:`HiCAOutput`: the image's
global embedding and local tokens (the image side), one class description sampled per image, the class-text
prototypes and the attribute-phrase bank (the text side, category and attribute level), and the ROI token
weights that ``L_local`` pools (from lesion masks, else proposed from token–text similarity).
``HiCAModel.align`` does the same for images already encoded (HiCA's text-head phase reuses cached features).
The losses (``hica.losses``) read only this output and the labels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hica.errors import HicaError
from hica.model.attributes import AttributeVocab
from hica.model.freeze import freeze_bn
from hica.model.roi import masks_to_token_weights, proposal_roi
from hica.model.text import pooled_sentences_batched

ROI_SMOOTH = 3  # the proposal's smoothing window on the token grid


class TextHead(nn.Module):
    """Frozen sentence embeddings of the class prompts and attribute phrases + the trainable text head.

    The text transformer stays frozen, so its mean-pooled sentence embeddings are computed once; only
    ``proj`` (a copy of the encoder's ``text_proj``) trains. Buffers: ``prompt_pooled`` / ``prompt_labels``
    (each class's descriptions, the category level), ``attr_pooled`` / ``attr_labels`` (attribute phrases).
    """

    def __init__(self, encoder: Any, descriptors: Any, classes: list[str]) -> None:
        super().__init__()
        if not hasattr(encoder, "text_proj") or not hasattr(encoder, "text_model"):
            raise HicaError(
                f"HiCA stage 2 needs an encoder with a separate text transformer and text_proj head "
                f"(like 'default'); {getattr(encoder, 'name', '?')!r} has none"
            )
        prompts = [descriptors.class_prompts(c, "ensemble") for c in classes]
        attrs = [descriptors.attribute_prompts(c) for c in classes]
        self.vocab = AttributeVocab.of(descriptors, classes)
        flat = [p for ps in prompts for p in ps] + [a for as_ in attrs for a in as_] + self.vocab.phrases
        with torch.no_grad():
            pooled = pooled_sentences_batched(encoder, flat).cpu()
        n_p = sum(len(p) for p in prompts)
        n_a = n_p + sum(len(a) for a in attrs)
        self.register_buffer("prompt_pooled", pooled[:n_p])
        self.register_buffer("prompt_labels", torch.tensor([c for c, ps in enumerate(prompts) for _ in ps]))
        self.register_buffer("attr_pooled", pooled[n_p:n_a])
        self.register_buffer("attr_labels", torch.tensor([c for c, as_ in enumerate(attrs) for _ in as_]))
        self.register_buffer("value_pooled", pooled[n_a:])
        self.register_buffer("value_of_phrase", torch.tensor(self.vocab.phrase_value, dtype=torch.long))
        self.register_buffer("value_groups", torch.tensor(self.vocab.value_group, dtype=torch.long))
        self.register_buffer("class_values", self.vocab.class_values)
        self.proj = copy.deepcopy(encoder.text_proj)
        self.num_classes = len(classes)
        self.attr_texts = [a for as_ in attrs for a in as_]

    def prompts(self) -> torch.Tensor:
        """(P, D) normalised embeddings of every class description."""
        return F.normalize(self.proj(self.prompt_pooled), dim=-1)

    def bank(self) -> torch.Tensor:
        """(A, D) normalised embeddings of every attribute phrase."""
        return F.normalize(self.proj(self.attr_pooled), dim=-1)

    def values(self) -> torch.Tensor:
        """(V, D) normalised embedding of every per-image attribute value (mean of its phrases); (0, D)
        when the descriptor file has no ``attribute_values``."""
        if self.value_pooled.shape[0] == 0:
            return self.prompt_pooled.new_zeros(0, self.proj(self.prompt_pooled[:1]).shape[-1])
        p = F.normalize(self.proj(self.value_pooled), dim=-1)
        sums = torch.zeros(len(self.vocab.values), p.shape[1], device=p.device, dtype=p.dtype)
        sums.index_add_(0, self.value_of_phrase, p)
        return F.normalize(sums, dim=-1)

    def class_protos(self, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """(C, D) class-text prototypes: the normalised sum of each class's description embeddings."""
        p = self.prompts() if prompts is None else prompts
        sums = torch.zeros(self.num_classes, p.shape[1], device=p.device, dtype=p.dtype)
        sums.index_add_(0, self.prompt_labels, p)
        return F.normalize(sums, dim=-1)


@dataclass(frozen=True)
class HiCAOutput:
    """What HiCA's losses read, for a batch of B images (C classes, A attribute phrases, N local tokens).

    ``image_global`` (B, D) and ``local`` (B, N, D): the image tower's global embedding and local tokens
    (float32). ``text_global`` (B, D): one description of each image's class. ``text_protos`` (C, D): the
    class-text prototypes. ``bank`` (A, D) with ``bank_labels`` (A,): the attribute phrases and their class.
    ``roi`` (B, N): token weights in [0, 1] (None when no term needs one). ``positives`` (B, P, D) with
    ``positive_mask`` (B, P): each image's positive phrases for ``L_local`` (None: every bank phrase of the
    image's class). The per-image attribute level (:class:`hica.model.attributes.AttributeVocab`): ``values``
    (V, D) value embeddings with ``value_groups`` (V,), ``attr_targets`` (B, G) each image's measured value
    per group (-1: unknown or not measured; None: no per-image attributes), ``class_values`` (C, V) the
    values each class's profile allows, ``presence_group`` the index of the lesion-presence group (-1: none),
    ``value_log_prior`` (V,) log frequency of each value within its group on the support set (None: no
    logit adjustment).
    """

    image_global: torch.Tensor
    local: torch.Tensor
    text_global: torch.Tensor
    text_protos: torch.Tensor
    bank: torch.Tensor
    bank_labels: torch.Tensor
    roi: torch.Tensor | None = None
    positives: torch.Tensor | None = None
    positive_mask: torch.Tensor | None = None
    values: torch.Tensor | None = None
    value_groups: torch.Tensor | None = None
    attr_targets: torch.Tensor | None = None
    class_values: torch.Tensor | None = None
    presence_group: int = -1
    value_log_prior: torch.Tensor | None = None


class HiCAModel(nn.Module):
    """HiCA's image tower (``encoder``) and text head (``text``).

    ``propose_roi``: where no mask gives an ROI, propose one from token–text similarity (query: the mean
    attribute phrase of the image's class; the top ``roi_top_fraction`` of the tokens); off when no loss
    term reads ROIs. In training mode the encoder's BatchNorm statistics stay frozen.
    """

    def __init__(
        self, encoder: Any, text: TextHead, propose_roi: bool = True, roi_top_fraction: float = 0.2
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.text = text
        self.propose_roi = propose_roi
        self.roi_top_fraction = roi_top_fraction
        self.value_log_prior: torch.Tensor | None = None  # set by the method for logit-adjusted attributes

    def train(self, mode: bool = True) -> HiCAModel:
        """Train mode with the encoder's BatchNorm statistics frozen (a few images cannot estimate them)."""
        super().train(mode)
        if mode:
            freeze_bn(self.encoder)
        return self

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        attr_targets: torch.Tensor | None = None,
    ) -> HiCAOutput:
        """Encode ``images`` (B, 3, H, W) of classes ``labels`` (B,); ``masks`` (B, H, W) lesion masks in the
        images' geometry (None: ROIs are proposed). ``generator`` draws the sampled descriptions (None:
        torch's global generator); ``attr_targets`` (B, G): the images' measured attribute values."""
        f = self.encoder.encode_image(images)
        roi = masks_to_token_weights(masks, f.grid).to(f.local.device) if masks is not None else None
        return self.align(f.global_, f.local, f.grid, labels, roi, generator, attr_targets)

    def align(
        self,
        image_global: torch.Tensor,
        local: torch.Tensor,
        grid: tuple[int, int],
        labels: torch.Tensor,
        roi: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        attr_targets: torch.Tensor | None = None,
    ) -> HiCAOutput:
        """The output for images already encoded: global embeddings (B, D), local tokens (B, N, D) on
        ``grid``, ROI token weights (B, N) or None (proposed when ``propose_roi``), measured attribute
        values ``attr_targets`` (B, G) or None."""
        text = self.text
        prompts = text.prompts()
        # One class description per image, drawn from its class's prompts (the hierarchy's category level).
        choice = []
        for y in labels.tolist():
            idx = torch.nonzero(text.prompt_labels == y, as_tuple=True)[0]
            choice.append(idx[torch.randint(len(idx), (1,), generator=generator).item()])
        text_global = prompts[torch.stack(choice)]
        protos = text.class_protos(prompts)
        bank = text.bank()
        if self.propose_roi and roi is None:
            query = torch.stack([bank[text.attr_labels == y].mean(0) for y in labels.tolist()])
            roi = proposal_roi(
                local.detach().float(), query.detach(), grid, self.roi_top_fraction, ROI_SMOOTH
            )
        return HiCAOutput(
            image_global=image_global.float(),
            local=local.float(),
            text_global=text_global,
            text_protos=protos,
            bank=bank,
            bank_labels=text.attr_labels,
            roi=roi,
            values=text.values(),
            value_groups=text.value_groups,
            attr_targets=attr_targets,
            class_values=text.class_values,
            presence_group=text.vocab.presence_group,
            value_log_prior=self.value_log_prior,
        )
