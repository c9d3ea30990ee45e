"""What a few-shot method checks in an episode before fitting: class text and labelled shots."""

from __future__ import annotations

from hica.errors import HicaError
from hica.methods.base import ClassText, FewShotData


def need_text(data: FewShotData, method: str) -> ClassText:
    """The episode's class text, checked against the number of classes."""
    if data.text is None:
        raise HicaError(
            f"{method} needs class text: give the dataset a descriptors YAML, or drop the text-using method"
        )
    n = data.text.class_emb.shape[0]
    if n != data.num_classes:
        raise HicaError(
            f"{method}: class text has {n} class embeddings but the episode has {data.num_classes}"
        )
    return data.text


def need_shots(data: FewShotData, method: str) -> None:
    """Few-shot methods need labelled support shots covering every class. Validation shots may be absent
    (the realistic protocol): a method then uses its declared fixed settings (``Configurable.fixed_value``).
    """
    if len(data.support_labels) == 0:
        raise HicaError(f"{method} needs labelled support shots (K >= 1); it cannot run zero-shot")
    missing = sorted(set(range(data.num_classes)) - set(data.support_labels.tolist()))
    if missing:
        raise HicaError(f"{method}: support set has no shot of class(es) {missing}")
