"""An episode's class text: each class's prompt embeddings and their mean, from an encoder's text tower."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hica.data.descriptors import Descriptors
from hica.errors import HicaError


@dataclass
class ClassText:
    """Text side of an episode, embedded by the episode's encoder and L2-normalised.

    ``class_emb``: (C, D) one embedding per class (normalised mean over its prompts).
    ``prompt_emb``: per class, (P_c, D) the individual prompt / descriptor embeddings.
    ``logit_scale``: the encoder's learned temperature (CLIP: 100); 1/τ for zero-shot logits.
    ``class_norm``: (C,) length of each class's mean *raw* (unnormalised) prompt embedding, for methods whose
    official code uses raw text embeddings (CLAP's prototypes); None when not measured.
    """

    class_emb: torch.Tensor
    prompt_emb: list[torch.Tensor]
    logit_scale: float = 100.0
    class_norm: torch.Tensor | None = None


def build_class_text(
    encoder: Any,
    descriptors: Descriptors,
    classes: Sequence[str],
    mode: str = "ensemble",
    batch_size: int = 64,
) -> ClassText:
    """Encode every class's prompts (``descriptors.class_prompts(cls, mode)``) into a ``ClassText``.

    Prompt embeddings are L2-normalised; a class embedding is the normalised mean of its prompts; the length
    of the mean raw prompt embedding is kept as ``class_norm``. Rows
    follow ``classes`` (the dataset's label order). All tensors are float32 on CPU. ``logit_scale`` is the
    encoder's ``logit_scale`` attribute (already exponentiated, e.g. CLIP's 100), else 100.
    """
    if batch_size < 1:
        raise HicaError(f"batch_size must be >= 1, got {batch_size}")
    if not classes:
        raise HicaError("build_class_text: no classes given")
    missing = [c for c in classes if c not in descriptors.classes]
    if missing:
        raise HicaError(
            f"classes {missing} have no entry in descriptor file {descriptors.source} "
            f"(its classes: {descriptors.classes}); add them or use descriptors written for this dataset"
        )
    prompts = [descriptors.class_prompts(c, mode) for c in classes]
    flat = [p for ps in prompts for p in ps]
    chunks = []
    with torch.no_grad():
        for i in range(0, len(flat), batch_size):
            batch = flat[i : i + batch_size]
            emb = encoder.encode_text(batch)
            if emb.ndim != 2 or emb.shape[0] != len(batch):
                raise ValueError(f"encode_text returned shape {tuple(emb.shape)} for {len(batch)} texts")
            chunks.append(emb.detach().to("cpu", torch.float32))
    scale = getattr(encoder, "logit_scale", 100.0)
    scale = float(scale.item() if isinstance(scale, torch.Tensor) else scale)
    return class_text_from_raw(torch.cat(chunks), [len(ps) for ps in prompts], scale)


def class_text_from_raw(raw: torch.Tensor, sizes: Sequence[int], logit_scale: float) -> ClassText:
    """A ``ClassText`` from the raw (unnormalised) embeddings ``raw`` (P, D) of every prompt, class by class
    (``sizes``: prompts per class, in order): normalised prompts, their normalised mean per class, and the
    length of each class's mean raw embedding (``class_norm``)."""
    raw = raw.detach().to("cpu", torch.float32)
    if raw.ndim != 2 or raw.shape[0] != sum(sizes) or not sizes or min(sizes) < 1:
        raise ValueError(f"raw prompt embeddings {tuple(raw.shape)} do not match prompts per class {sizes}")
    class_norm = torch.stack([r.mean(0).norm() for r in torch.split(raw, list(sizes))])
    all_emb = F.normalize(raw, dim=-1)
    prompt_emb = list(torch.split(all_emb, list(sizes)))
    class_emb = F.normalize(torch.stack([e.mean(0) for e in prompt_emb]), dim=-1)
    return ClassText(
        class_emb=class_emb,
        prompt_emb=[e.clone() for e in prompt_emb],
        logit_scale=float(logit_scale),
        class_norm=class_norm,
    )
