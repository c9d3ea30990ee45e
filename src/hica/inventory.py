"""What this installation offers: the registered encoders and the built-in datasets found under a data root
(``hica encoders`` / ``hica datasets`` print these)."""

from __future__ import annotations

from pathlib import Path

from hica.errors import HicaError


def available_encoders() -> dict[str, str]:
    """Registered encoder names with a one-line description, sorted by name."""
    from hica.encoders import list_encoders

    return list_encoders()


def dataset_inventory(
    data_root: str | Path | None = None,
) -> tuple[Path, dict[str, dict[str, dict[str, int]] | HicaError]]:
    """The resolved data root and, per built-in dataset, its images per class in each split (``{split:
    {class: n}}``), or the HicaError saying why it is not available. A missing data root raises."""
    from hica.data.catalog import BUILTIN_NAMES, load_dataset
    from hica.data.catalog import data_root as resolve_root

    root = resolve_root(data_root)
    found: dict[str, dict[str, dict[str, int]] | HicaError] = {}
    for name in BUILTIN_NAMES:
        try:
            ds = load_dataset(name, root)
        except HicaError as e:
            found[name] = e
            continue
        found[name] = ds.counts()
    return root, found
