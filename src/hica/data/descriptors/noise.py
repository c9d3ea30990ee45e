"""Seeded corruption of descriptor text, for robustness to noisy class descriptions.

:func:`corrupt_descriptors` replaces a fraction ``p`` of a descriptor file's phrases (class-level
``description`` sentences and ``attributes`` phrases; never names, synonyms or templates) by one of:

``swap``
    a phrase of the same level (description or attribute) taken from another class: the adversarial case;
``random_words``
    as many words as the phrase, drawn from :data:`MEDICAL_WORDS`;
``typos``
    character noise (swap adjacent letters, drop, duplicate or substitute a letter) on ~15% of characters;
``truncate``
    only the first 30-60% of the words (at least one).

The result is validated by the same pydantic models as a loaded file, so it keeps the loader's rule that
no attribute phrase may belong to two classes. Every corrupted phrase is therefore kept distinct
(case-insensitively) from every other phrase of its level in the result: a swap can only take a phrase
whose own slot is corrupted too, and a kind that cannot produce a distinct phrase (no free phrase to swap,
a one-word phrase to truncate, every truncation colliding) falls back to ``random_words``.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from hica.data.descriptors import DescriptorFile, Descriptors
from hica.errors import HicaError

__all__ = ["KINDS", "MEDICAL_WORDS", "corrupt_descriptors", "phrase_slots"]

KINDS = ("swap", "random_words", "typos", "truncate")

TYPO_RATE = 0.15  # edits per character
TRUNCATE_KEEP = (0.3, 0.6)  # fraction of the words kept

# Generic radiology words, none naming a specific diagnosis, for the ``random_words`` kind.
# fmt: off
MEDICAL_WORDS: tuple[str, ...] = (
    "opacity", "margin", "echogenic", "lobe", "density", "lesion", "contour", "region", "shadow", "tissue",
    "border", "signal", "pattern", "focal", "diffuse", "bilateral", "lateral", "medial", "anterior",
    "posterior", "superior", "inferior", "proximal", "distal", "peripheral", "central", "homogeneous",
    "heterogeneous", "hypoechoic", "hyperechoic", "isoechoic", "anechoic", "lucency", "attenuation",
    "enhancement", "artifact", "contrast", "view", "projection", "plane", "segment", "layer", "wall",
    "cavity", "nodule", "structure", "vessel", "duct", "interface", "echo", "texture", "calcification",
    "fluid", "septation", "field", "zone", "axis", "surface", "fat", "parenchyma", "interstitial", "subtle",
    "mild", "prominent", "scattered", "linear", "round",
)
# fmt: on


@dataclass(frozen=True)
class _Slot:
    cls: str
    group: str | None  # None: a class-level description sentence
    index: int  # position in the description list or the attribute group
    text: str

    @property
    def level(self) -> str:
        return "description" if self.group is None else "attribute"


def _slots(desc: Descriptors) -> list[_Slot]:
    out: list[_Slot] = []
    for k, c in desc.spec.classes.items():
        out += [_Slot(k, None, i, t) for i, t in enumerate(c.description)]
        out += [_Slot(k, g, i, t) for g, ps in c.attributes.items() for i, t in enumerate(ps)]
    return out


def phrase_slots(desc: Descriptors) -> list[tuple[str, str | None, str]]:
    """(class, group, phrase) for every phrase :func:`corrupt_descriptors` may change, in file order.

    ``group`` is ``None`` for a class-level description sentence, else the attribute group.
    """
    return [(s.cls, s.group, s.text) for s in _slots(desc)]


def _check_args(p: float, kinds: Sequence[str]) -> tuple[str, ...]:
    if isinstance(p, bool) or not isinstance(p, int | float | np.floating | np.integer) or not 0 <= p <= 1:
        raise HicaError(f"descriptor noise fraction p must be a number in [0, 1], got {p!r}")
    ks = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in ks if k not in KINDS]
    if unknown or not ks:
        what = f"unknown descriptor noise kind(s) {unknown}" if unknown else "no descriptor noise kind given"
        raise HicaError(f"{what}; use one or more of {', '.join(KINDS)}")
    return ks


# --- the kinds: each returns the new text, or None when it cannot make a distinct one ---------------------


def _style_like(words: list[str], original: str) -> str:
    """Join ``words``, capitalised and ending in a full stop when ``original`` reads as a sentence."""
    text = " ".join(words)
    if original[:1].isupper():
        text = text[:1].upper() + text[1:]
    return text + "." if original.rstrip().endswith(".") else text


def _random_words(original: str, rng: np.random.Generator, taken: set[str]) -> str:
    n = max(1, len(original.split()))
    for attempt in range(200):
        size = n + attempt // 50  # a longer string if (absurdly) every draw collides
        words = [MEDICAL_WORDS[i] for i in rng.integers(len(MEDICAL_WORDS), size=size)]
        text = _style_like(words, original)
        if text.casefold() not in taken and text.casefold() != original.casefold():
            return text
    raise AssertionError("unreachable: could not draw a distinct random-word phrase")


def _typo_once(text: str, rng: np.random.Generator) -> str:
    chars = list(text)
    for _ in range(max(1, round(TYPO_RATE * len(text)))):
        pos = [i for i, c in enumerate(chars) if c.isalpha()] or [
            i for i, c in enumerate(chars) if not c.isspace()
        ]
        i = pos[int(rng.integers(len(pos)))]
        op = int(rng.integers(4))
        nxt = i + 1 < len(chars) and chars[i + 1].isalpha() and chars[i + 1].lower() != chars[i].lower()
        if op == 0 and nxt:  # swap with the next letter
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif op == 1 and len(pos) > 1:  # drop
            del chars[i]
        elif op == 2:  # duplicate
            chars.insert(i, chars[i])
        else:  # substitute (also the fallback of an impossible swap or drop)
            letters = [c for c in string.ascii_lowercase if c != chars[i].lower()]
            c = letters[int(rng.integers(len(letters)))]
            chars[i] = c.upper() if chars[i].isupper() else c
    return " ".join("".join(chars).split())


def _typos(original: str, rng: np.random.Generator, taken: set[str]) -> str | None:
    plain = " ".join(original.split()).casefold()
    for _ in range(50):
        text = _typo_once(original, rng)
        if text and text.casefold() != plain and text.casefold() not in taken:
            return text
    return None


def _truncate(original: str, rng: np.random.Generator, taken: set[str]) -> str | None:
    words = original.split()
    n = len(words)
    lo, hi = max(1, math.ceil(TRUNCATE_KEEP[0] * n)), max(1, math.floor(TRUNCATE_KEEP[1] * n))
    for k in rng.permutation(np.arange(lo, min(hi, n - 1) + 1)):
        text = " ".join(words[: int(k)]).rstrip(",;:-")
        if text and text.casefold() != original.casefold() and text.casefold() not in taken:
            return text
    return None


def _swap(
    slot: _Slot, slots: list[_Slot], rng: np.random.Generator, taken: set[str]
) -> tuple[str, str] | None:
    """A phrase of ``slot``'s level from another class that is free in the result, and its class."""
    options = {
        s.text.casefold(): s
        for s in slots
        if s.cls != slot.cls and s.level == slot.level and s.text.casefold() not in taken
    }
    options.pop(slot.text.casefold(), None)
    if not options:
        return None
    pick = list(options.values())[int(rng.integers(len(options)))]
    return pick.text, pick.cls


# --- the public function ----------------------------------------------------------------------------------


def corrupt_descriptors(
    desc: Descriptors,
    p: float,
    seed: int = 0,
    kinds: tuple[str, ...] = KINDS,
    log: list[dict[str, Any]] | None = None,
) -> Descriptors:
    """A new :class:`Descriptors` with exactly ``round(p * N)`` of its N phrases corrupted.

    The phrases (see :func:`phrase_slots`) and, for each, a kind from ``kinds`` are drawn with ``seed``;
    ``round`` is Python's (half to even). Names, synonyms, templates and the file structure (classes,
    groups, number of phrases per list) are unchanged, and every corrupted phrase differs from its original.
    If ``log`` is a list, one dict per corrupted phrase is appended, in file order: ``class``, ``group``
    (``None`` for a description sentence), ``level`` (``"description"`` or ``"attribute"``), ``index``,
    ``before``, ``after``, ``kind`` (the kind applied), ``requested`` (the kind drawn; differs after a
    fallback to ``random_words``) and ``source`` (the class a swapped phrase came from, else ``None``).
    Raises HicaError for ``p`` outside [0, 1] or an unknown kind.
    """
    ks = _check_args(p, kinds)
    slots = _slots(desc)
    n_corrupt = round(p * len(slots))
    rng = np.random.default_rng(seed)
    chosen = sorted(int(i) for i in rng.choice(len(slots), size=n_corrupt, replace=False))
    requested = {i: ks[int(rng.integers(len(ks)))] for i in chosen}

    # Texts the result holds, per level (casefolded): the kept phrases, then each new one as it is made.
    chosen_set = set(chosen)
    taken: dict[str, set[str]] = {"description": set(), "attribute": set()}
    for i, s in enumerate(slots):
        if i not in chosen_set:
            taken[s.level].add(s.text.casefold())

    data = desc.spec.model_dump()
    entries: list[dict[str, Any]] = []
    for i in chosen:
        slot, kind = slots[i], requested[i]
        used = taken[slot.level]
        new: str | None = None
        source: str | None = None
        if kind == "swap" and (hit := _swap(slot, slots, rng, used)):
            new, source = hit
        elif kind == "typos":
            new = _typos(slot.text, rng, used)
        elif kind == "truncate":
            new = _truncate(slot.text, rng, used)
        applied = kind if new is not None else "random_words"
        if new is None:
            new = _random_words(slot.text, rng, used)
        used.add(new.casefold())
        target = data["classes"][slot.cls]
        (target["description"] if slot.group is None else target["attributes"][slot.group])[slot.index] = new
        entries.append(
            {
                "class": slot.cls,
                "group": slot.group,
                "level": slot.level,
                "index": slot.index,
                "before": slot.text,
                "after": new,
                "kind": applied,
                "requested": kind,
                "source": source,
            }
        )

    try:
        spec = DescriptorFile.model_validate(data)
    except ValidationError as e:  # a bug here, not the user's: the rules above keep the file valid
        raise HicaError(f"corrupted descriptors of {desc.source} are invalid: {e}") from e
    if log is not None:
        log.extend(entries)
    return Descriptors(spec, f"{desc.source} [noise p={p}, seed={seed}, kinds={','.join(ks)}]")
