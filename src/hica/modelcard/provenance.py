"""Provenance recorded in a model card: the hica version that made the model and a short id of the encoder
it started from (the git state comes from :func:`hica.environment.git_state`, as in run directories)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def fingerprint_hash(fingerprint: Any) -> str | None:
    """A short stable id (16 hex) of an encoder fingerprint (``DualEncoder.fingerprint()``)."""
    if fingerprint is None:
        return None
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def hica_version() -> str:
    """The installed hica version."""
    from hica import __version__

    return __version__
