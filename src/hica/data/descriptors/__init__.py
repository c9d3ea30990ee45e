"""Class text as data: load and validate descriptor YAML files (bundled or user-written).

A descriptor file gives, per class, a display name and synonyms (filled into prompt ``templates``),
class-level ``description`` sentences (the category level of HiCA's hierarchy) and ``attributes``: named
groups of fine-grained phrases (the attribute level). The schema is documented in ``docs/descriptors.md``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from hica.errors import HicaError

__all__ = [
    "MODES",
    "ClassSpec",
    "DescriptorFile",
    "Descriptors",
    "list_bundled",
    "load_descriptors",
    "parse_descriptors",
]

MODES = ("names", "descriptions", "ensemble")
_PACKAGE = "hica.data.descriptors"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _check_template(t: str) -> str:
    rest = t.replace("{}", "", 1)
    if "{}" not in t or "{" in rest or "}" in rest:
        raise ValueError(f'template {t!r} must contain exactly one "{{}}" placeholder and no other braces')
    return t


def _check_key(k: str) -> str:
    if not _KEY.match(k):
        raise ValueError(
            f"key {k!r} must be letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return k


Template = Annotated[Text, AfterValidator(_check_template)]
Key = Annotated[str, AfterValidator(_check_key)]


class ClassSpec(BaseModel):
    """One class: names for the templates, class-level sentences, attribute groups of phrases."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Text
    synonyms: list[Text] = Field(default_factory=list)
    description: list[Text] = Field(min_length=1)
    attributes: dict[Key, Annotated[list[Text], Field(min_length=1)]] = Field(min_length=1)
    #: The class in terms of per-image attribute values: group -> the values a typical case has
    #: (any of them); groups and values must be in the file's ``attribute_values``.
    profile: dict[Key, Annotated[list[Text], Field(min_length=1)]] = Field(default_factory=dict)
    #: How the profile's groups combine: ``all`` (every group must show one of its values) or ``any``
    #: (one group showing one of its values is enough; e.g. a single suspicious feature of a mass).
    profile_match: Literal["all", "any"] = "all"


Phrases = Annotated[list[Text], Field(min_length=1)]


class DescriptorFile(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    dataset: Text
    modality: Text
    templates: list[Template] = Field(min_length=1)
    attribute_template: Template | None = None
    classes: dict[Key, ClassSpec] = Field(min_length=1)
    #: Per-image attribute vocabulary: group -> value -> phrases (each a noun phrase for
    #: ``attribute_template``); the values a measurement can give an image (``hica.data.attributes``).
    attribute_values: dict[Key, Annotated[dict[Text, Phrases], Field(min_length=2)]] = Field(
        default_factory=dict
    )
    references: list[Text] = Field(default_factory=list)

    @model_validator(mode="after")
    def _profiles(self) -> DescriptorFile:
        for k, c in self.classes.items():
            for group, values in c.profile.items():
                if group not in self.attribute_values:
                    raise ValueError(
                        f"classes.{k}.profile.{group}: no attribute_values group {group!r} "
                        f"(groups: {', '.join(self.attribute_values) or 'none'})"
                    )
                bad = [v for v in values if v not in self.attribute_values[group]]
                if bad:
                    raise ValueError(
                        f"classes.{k}.profile.{group}: values {bad} are not among attribute_values.{group} "
                        f"({', '.join(self.attribute_values[group])})"
                    )
        return self

    @model_validator(mode="after")
    def _shared_phrases(self) -> DescriptorFile:
        owner: dict[str, str] = {}
        for k, c in self.classes.items():
            for group, phrases in c.attributes.items():
                for p in phrases:
                    o = owner.setdefault(p.casefold(), k)
                    if o != k:
                        raise ValueError(
                            f"classes.{k}.attributes.{group}: phrase {p!r} is also listed under class {o!r}; "
                            "a phrase shared by two classes cannot tell them apart"
                        )
        return self


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


class Descriptors:
    """A validated descriptor file with the prompt builders the text bank uses."""

    def __init__(self, spec: DescriptorFile, source: str) -> None:
        self.spec = spec
        self.source = source

    @property
    def dataset(self) -> str:
        return self.spec.dataset

    @property
    def modality(self) -> str:
        return self.spec.modality

    @property
    def classes(self) -> list[str]:
        """Class keys, in file order."""
        return list(self.spec.classes)

    @property
    def templates(self) -> list[str]:
        return list(self.spec.templates)

    @property
    def attribute_template(self) -> str:
        """Template that turns an attribute phrase into a sentence (default: the first template)."""
        return self.spec.attribute_template or self.spec.templates[0]

    @property
    def references(self) -> list[str]:
        return list(self.spec.references)

    def _cls(self, cls: str) -> ClassSpec:
        if cls not in self.spec.classes:
            raise HicaError(f"{self.source}: no class {cls!r}; its classes are {self.classes}")
        return self.spec.classes[cls]

    def name(self, cls: str) -> str:
        """Display name of ``cls``."""
        return self._cls(cls).name

    def attributes(self, cls: str) -> dict[str, list[str]]:
        """Attribute group -> phrases of ``cls`` (a copy)."""
        return {g: list(p) for g, p in self._cls(cls).attributes.items()}

    def render(self, phrase: str) -> str:
        """An attribute phrase as a sentence, through ``attribute_template``."""
        return self.attribute_template.format(phrase)

    def attribute_prompts(self, cls: str) -> list[str]:
        """Every attribute phrase of ``cls`` rendered as a sentence, group by group."""
        return _dedupe(self.render(p) for ps in self._cls(cls).attributes.values() for p in ps)

    def class_prompts(self, cls: str, mode: str = "ensemble") -> list[str]:
        """The prompts for ``cls``, without duplicates.

        ``names``: every template filled with the name and each synonym; ``descriptions``: the class-level
        sentences; ``ensemble``: both, plus every attribute phrase rendered as a sentence.
        """
        if mode not in MODES:
            raise HicaError(f"unknown text mode {mode!r}; use one of {', '.join(MODES)}")
        c = self._cls(cls)
        names = [t.format(n) for n in _dedupe([c.name, *c.synonyms]) for t in self.spec.templates]
        if mode == "names":
            return _dedupe(names)
        if mode == "descriptions":
            return _dedupe(c.description)
        return _dedupe([*names, *c.description, *self.attribute_prompts(cls)])

    @property
    def attribute_values(self) -> dict[str, dict[str, list[str]]]:
        """Per-image attribute vocabulary: group -> value -> phrases (a copy; empty without one)."""
        return {g: {v: list(p) for v, p in vals.items()} for g, vals in self.spec.attribute_values.items()}

    def profile(self, cls: str) -> dict[str, list[str]]:
        """``cls`` as attribute values: group -> the values a typical case has (empty when not given)."""
        return {g: list(v) for g, v in self._cls(cls).profile.items()}

    def profile_match(self, cls: str) -> str:
        """How ``cls``'s profile groups combine: ``all`` or ``any``."""
        return self._cls(cls).profile_match

    def all_attribute_phrases(self) -> list[tuple[str, str, str]]:
        """(class, group, phrase) for every attribute phrase, in file order."""
        return [(k, g, p) for k, c in self.spec.classes.items() for g, ps in c.attributes.items() for p in ps]

    def check_classes(self, dataset_classes: Sequence[str], source: str) -> None:
        """Raise HicaError unless ``dataset_classes`` (from ``source``) are exactly this file's classes."""
        missing = [c for c in dataset_classes if c not in self.spec.classes]
        extra = [c for c in self.spec.classes if c not in dataset_classes]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing from the descriptors: {missing}")
            if extra:
                parts.append(f"not in the dataset: {extra}")
            raise HicaError(
                f"class names of {source} {list(dataset_classes)} do not match descriptor file {self.source} "
                f"{self.classes} ({'; '.join(parts)}); rename the class keys in the descriptor file or give "
                "descriptors written for this dataset"
            )

    def __repr__(self) -> str:
        return f"Descriptors({self.dataset!r}, classes={self.classes}, source={self.source!r})"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (plain PyYAML keeps the last one silently) and aliases
    (``*name``: a small file could otherwise expand to millions of phrases)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in descriptor files", event.start_mark
            )
        return super().compose_node(parent, index)


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, list | dict):
            continue  # unhashable: construct_mapping reports it
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        where = f"{loc}: " if loc else ""
        if e["type"] == "extra_forbidden":
            model = ClassSpec if len(e["loc"]) == 3 and e["loc"][0] == "classes" else DescriptorFile
            lines.append(f"{where}unknown key (allowed: {', '.join(model.model_fields)})")
        elif e["type"] == "missing":
            lines.append(f"{where}required key missing")
        elif e["input"] is None:
            lines.append(f"{where}is empty")
        else:
            lines.append(where + e["msg"].removeprefix("Value error, "))
    return "; ".join(lines)


def parse_descriptors(text: str, source: str) -> Descriptors:
    """Parse and validate YAML ``text``; errors name ``source`` and the offending key."""
    hint = "see docs/descriptors.md for the schema"
    try:
        stream = io.StringIO(text)
        stream.name = source  # type: ignore[misc]  # PyYAML names the file in its error marks
        data = yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise HicaError(f"{source}: not valid YAML: {e}") from e
    except RecursionError as e:
        raise HicaError(f"{source}: not valid YAML: nested too deeply; {hint}") from e
    if not isinstance(data, dict):
        raise HicaError(f"{source}: expected a mapping with dataset, modality, templates, classes; {hint}")
    try:
        spec = DescriptorFile.model_validate(data)
    except ValidationError as e:
        raise HicaError(f"{source}: invalid descriptor file: {_format_errors(e)}; {hint}") from e
    return Descriptors(spec, source)


def list_bundled() -> list[str]:
    """Ids of the descriptor files shipped with hica."""
    return sorted(
        p.name.removesuffix(".yaml") for p in resources.files(_PACKAGE).iterdir() if p.name.endswith(".yaml")
    )


def load_descriptors(name_or_path: str | Path) -> Descriptors:
    """Load a bundled descriptor file by id (``busi``, ``chest_xray``…) or a user YAML by path."""
    s = str(name_or_path)
    bundled = list_bundled()
    looks_like_path = isinstance(name_or_path, Path) or s.endswith((".yaml", ".yml")) or "/" in s or "\\" in s
    if not looks_like_path and s in bundled:
        res = resources.files(_PACKAGE) / f"{s}.yaml"
        return parse_descriptors(res.read_text(encoding="utf-8"), str(res))
    path = Path(s).expanduser()
    if not path.is_file():
        raise HicaError(
            f"descriptor file {s!r} not found: give a bundled id ({', '.join(bundled)}) "
            "or the path of a YAML file written as in docs/descriptors.md"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HicaError(f"{path}: cannot read descriptor file: {e}") from e
    return parse_descriptors(text, str(path))
