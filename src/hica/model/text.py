"""Text-tower helpers: mean-pooled sentence embeddings from an encoder's text transformer."""

from __future__ import annotations

import torch
from torch import nn


def pooled_sentences(encoder: nn.Module, texts: list[str]) -> torch.Tensor:
    """Mean-pooled text-transformer embeddings (before ``text_proj``) of ``texts``."""
    from hica.encoders._common import encode_sentences

    return encode_sentences(encoder.tokenizer, encoder.text_model, texts, encoder.max_text_length)


def pooled_sentences_batched(encoder: nn.Module, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """:func:`pooled_sentences` of ``texts`` in batches of ``batch_size``, as one float32 tensor."""
    return torch.cat(
        [
            pooled_sentences(encoder, texts[i : i + batch_size]).float()
            for i in range(0, len(texts), batch_size)
        ]
    )
