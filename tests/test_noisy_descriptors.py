"""Descriptor noise (hica.data.descriptors.noise) on the bundled busi and chest_xray descriptors."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml

from hica.data.descriptors import Descriptors, load_descriptors, parse_descriptors
from hica.data.descriptors.noise import KINDS, MEDICAL_WORDS, corrupt_descriptors, phrase_slots
from hica.errors import HicaError

DATASETS = ["busi", "chest_xray"]


@pytest.fixture(scope="module", params=DATASETS)
def desc(request: pytest.FixtureRequest) -> Descriptors:
    return load_descriptors(request.param)


def texts(d: Descriptors) -> list[str]:
    return [t for _, _, t in phrase_slots(d)]


def n_changed(a: Descriptors, b: Descriptors) -> int:
    return sum(x != y for x, y in zip(texts(a), texts(b), strict=True))


def run(d: Descriptors, p: float, seed: int = 0, **kw: Any) -> tuple[Descriptors, list[dict[str, Any]]]:
    log: list[dict[str, Any]] = []
    return corrupt_descriptors(d, p, seed=seed, log=log, **kw), log


def test_phrase_slots_count(desc: Descriptors) -> None:
    n = sum(len(desc.spec.classes[c].description) for c in desc.classes) + len(desc.all_attribute_phrases())
    assert len(phrase_slots(desc)) == n
    assert n > 20


def test_p0_identical(desc: Descriptors) -> None:
    out, log = run(desc, 0.0, seed=5)
    assert out is not desc
    assert out.spec.model_dump() == desc.spec.model_dump()
    assert log == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_p1_changes_every_phrase(desc: Descriptors, seed: int) -> None:
    out, log = run(desc, 1.0, seed=seed)
    n = len(phrase_slots(desc))
    assert n_changed(desc, out) == n == len(log)


@pytest.mark.parametrize("p", [0.5, 0.1, 0.25, 0.9])
def test_exact_fraction(desc: Descriptors, p: float) -> None:
    n = len(phrase_slots(desc))
    for seed in (0, 1):
        out, log = run(desc, p, seed=seed)
        assert n_changed(desc, out) == round(p * n) == len(log)
        changed = {(e["class"], e["group"], e["index"]) for e in log}
        assert len(changed) == len(log)


def test_deterministic_per_seed(desc: Descriptors) -> None:
    a, log_a = run(desc, 0.5, seed=7)
    b, log_b = run(desc, 0.5, seed=7)
    c, _ = run(desc, 0.5, seed=8)
    assert texts(a) == texts(b) and log_a == log_b
    assert texts(a) != texts(c)


def test_original_untouched(desc: Descriptors) -> None:
    before = desc.spec.model_dump()
    run(desc, 1.0, seed=0)
    assert desc.spec.model_dump() == before


def test_names_templates_structure_untouched(desc: Descriptors) -> None:
    out, _ = run(desc, 1.0, seed=3)
    a, b = desc.spec, out.spec
    assert (b.dataset, b.modality, b.templates, b.attribute_template, b.references) == (
        a.dataset,
        a.modality,
        a.templates,
        a.attribute_template,
        a.references,
    )
    assert out.classes == desc.classes
    for cls in desc.classes:
        ca, cb = a.classes[cls], b.classes[cls]
        assert (cb.name, cb.synonyms) == (ca.name, ca.synonyms)
        assert len(cb.description) == len(ca.description)
        assert {g: len(p) for g, p in cb.attributes.items()} == {g: len(p) for g, p in ca.attributes.items()}
        assert out.class_prompts(cls, "names") == desc.class_prompts(cls, "names")


@pytest.mark.parametrize("p", [0.3, 1.0])
def test_result_is_a_valid_descriptor_file(desc: Descriptors, p: float) -> None:
    out, _ = run(desc, p, seed=11)
    for cls in out.classes:
        ens = out.class_prompts(cls, "ensemble")
        attrs = out.attribute_prompts(cls)
        n_attr = sum(len(ps) for ps in out.attributes(cls).values())
        assert len(attrs) == n_attr  # no phrase collapsed into a duplicate
        assert set(attrs) <= set(ens) and set(out.class_prompts(cls, "descriptions")) <= set(ens)
        assert all(isinstance(t, str) and t.strip() == t and t for t in ens)
    # the same text goes through the loader (which rejects a phrase shared by two classes)
    again = parse_descriptors(yaml.safe_dump(out.spec.model_dump(), allow_unicode=True), "corrupted.yaml")
    assert again.spec == out.spec
    all_attr = [p.casefold() for _, _, p in out.all_attribute_phrases()]
    assert len(all_attr) == len(set(all_attr))


def test_swaps_come_from_other_classes(desc: Descriptors) -> None:
    original = {(c, g is None): set() for c, g, _ in phrase_slots(desc)}
    for c, g, t in phrase_slots(desc):
        original[c, g is None].add(t)
    n_swaps = 0
    for kinds in [("swap",), KINDS]:
        for seed in (0, 1):
            _, log = run(desc, 1.0, seed=seed, kinds=kinds)
            for e in log:
                if e["kind"] != "swap":
                    continue
                n_swaps += 1
                is_desc = e["group"] is None
                assert e["source"] != e["class"]
                assert e["after"] in original[e["source"], is_desc]  # same level, other class
                assert e["after"] not in original[e["class"], is_desc]
    assert n_swaps > 20


def test_swap_only_at_low_p_falls_back_when_no_free_phrase(desc: Descriptors) -> None:
    # a swapped-in attribute phrase must be free: its own slot corrupted too; otherwise random_words
    for seed in range(5):
        out, log = run(desc, 0.2, seed=seed, kinds=("swap",))
        assert {e["kind"] for e in log} <= {"swap", "random_words"}
        assert all(e["requested"] == "swap" for e in log)
        corrupted = {(e["class"], e["before"]) for e in log}
        for e in log:
            if e["kind"] == "swap":  # the phrase left its own class: that slot was corrupted as well
                assert (e["source"], e["after"]) in corrupted
        assert n_changed(desc, out) == len(log)


def words(text: str) -> list[str]:
    return text.rstrip(".").split()


@pytest.mark.parametrize("kind", KINDS)
def test_single_kind(desc: Descriptors, kind: str) -> None:
    out, log = run(desc, 1.0, seed=4, kinds=(kind,))
    assert n_changed(desc, out) == len(phrase_slots(desc)) == len(log)
    vocab = set(MEDICAL_WORDS)
    for e in log:
        assert e["requested"] == kind and e["kind"] in (kind, "random_words")
        before, after = e["before"], e["after"]
        if e["kind"] == "random_words":
            assert all(w.lower() in vocab for w in words(after))
            assert len(words(after)) == len(before.split())
        elif kind == "truncate":
            bw, aw = before.split(), after.split()
            assert max(1, math.ceil(0.3 * len(bw))) <= len(aw) <= max(1, math.floor(0.6 * len(bw)))
            assert len(aw) < len(bw)
            assert before.startswith(after)
        elif kind == "typos":
            n_edits = max(1, round(0.15 * len(before)))
            assert abs(len(after) - len(before)) <= n_edits
            assert after.casefold() != before.casefold()
    if kind in ("typos", "random_words"):  # these never need a fallback
        assert all(e["kind"] == kind for e in log)


def test_log_entries(desc: Descriptors) -> None:
    out, log = run(desc, 0.5, seed=2)
    keys = {"class", "group", "level", "index", "before", "after", "kind", "requested", "source"}
    for e in log:
        assert set(e) == keys
        assert e["kind"] in KINDS and e["before"] != e["after"]
        assert e["level"] == ("description" if e["group"] is None else "attribute")
        spec = out.spec.classes[e["class"]]
        where = spec.description if e["group"] is None else spec.attributes[e["group"]]
        assert where[e["index"]] == e["after"]
        assert (e["source"] is not None) == (e["kind"] == "swap")
    order = [(c, g, t) for c, g, t in phrase_slots(desc)]
    positions = [order.index((e["class"], e["group"], e["before"])) for e in log]
    assert positions == sorted(positions)  # file order


def test_kinds_as_a_single_string(desc: Descriptors) -> None:
    _, log = run(desc, 0.2, kinds="typos")  # type: ignore[arg-type]
    assert log and {e["kind"] for e in log} == {"typos"}


@pytest.mark.parametrize("p", [-0.1, 1.01, float("nan"), "0.5", None, True])
def test_bad_p(p: object) -> None:
    d = load_descriptors("busi")
    with pytest.raises(HicaError, match="fraction p"):
        corrupt_descriptors(d, p)  # type: ignore[arg-type]


@pytest.mark.parametrize("kinds", [("swap", "bogus"), ("Typos",), (), "bogus"])
def test_bad_kinds(kinds: Any) -> None:
    d = load_descriptors("busi")
    with pytest.raises(HicaError, match="kind") as e:
        corrupt_descriptors(d, 0.5, kinds=kinds)
    assert all(k in str(e.value) for k in KINDS)
