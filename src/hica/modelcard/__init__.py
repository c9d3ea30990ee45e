"""Model cards: what a trained model folder is, in JSON (``model_card.json``) and Markdown
(``MODEL_CARD.md``).

``hica finetune`` (→ ``OUT/model``) and ``hica pretrain`` (→ ``OUT/encoder``) write a card after the weights:
classes, training data with the episode's file list, K, seed, the encoder and its lineage (base encoder →
stage 1 → this model, with fingerprints and weight hashes), validation / test metrics where measured, ROI
source, hyperparameters, intended use, known limits (measured ones cite the committed result file) and the
SHA-256 of every weights file. Loading a model checks those hashes: a card that does not match its weights
is refused; a folder without a card (made before cards existed) still loads, with a warning from the CLI.
See ``docs/model-cards.md``.

Building (:mod:`~hica.modelcard.build`), limits and intended use (:mod:`~hica.modelcard.limits`), text
(:mod:`~hica.modelcard.render`), provenance (:mod:`~hica.modelcard.provenance`: hica version, encoder
fingerprint ids; the git state is :func:`hica.environment.git_state`). Reading a card and checking the
weights against it is :mod:`hica.integrity`, which encoders use without importing this package.
"""

from __future__ import annotations

from hica.integrity import (
    CARD_JSON,
    WEIGHTS_SUFFIX,
    read_model_card,
    sha256_file,
    verify_model_card,
    weight_hashes,
)
from hica.modelcard.build import (
    CARD_MD,
    SCHEMA_VERSION,
    build_model_card,
    encoder_lineage,
    training_data,
    write_model_card,
)
from hica.modelcard.limits import MEASURED_LIMITS, RESEARCH_ONLY, intended_use, known_limits
from hica.modelcard.provenance import fingerprint_hash
from hica.modelcard.render import card_summary, lineage_text, missing_card_warning, render_markdown

__all__ = [
    "CARD_JSON",
    "CARD_MD",
    "MEASURED_LIMITS",
    "RESEARCH_ONLY",
    "SCHEMA_VERSION",
    "WEIGHTS_SUFFIX",
    "build_model_card",
    "card_summary",
    "encoder_lineage",
    "fingerprint_hash",
    "intended_use",
    "known_limits",
    "lineage_text",
    "missing_card_warning",
    "read_model_card",
    "render_markdown",
    "sha256_file",
    "training_data",
    "verify_model_card",
    "weight_hashes",
    "write_model_card",
]
