"""Text-tower helpers: mean-pooled sentence embeddings from an encoder's text transformer."""

from __future__ import annotations

import torch
from torch import nn


def pooled_sentences(encoder: nn.Module, texts: list[str]) -> torch.Tensor:
    """Mean-pooled text-transformer embeddings (before ``text_proj``) of ``texts``."""
    from hica.encoders._common import encode_sentences

    return encode_sentences(encoder.tokenizer, encoder.text_model, texts, encoder.max_text_length)
