"""What a test does when the real data it needs is missing: skip on a developer's machine, fail under
``CI=true`` (a CI run without the shared data must not be green and hollow)."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing_data(message: str) -> None:
    """Skip the test with ``message``, or fail it when ``CI=true`` (CI sets HICA_DATA to the shared data)."""
    if in_ci():
        pytest.fail(f"CI=true and the real data is missing: {message}", pytrace=False)
    pytest.skip(message)
