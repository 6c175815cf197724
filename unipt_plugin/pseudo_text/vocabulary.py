"""Divide stage: the attribute vocabulary (YAML), loaded and validated.

A vocabulary maps each attribute (6 required, any number optional) to phrase classes. Each class
carries CLIP prompts (conquer stage), a sentence phrase and synonyms (combine stage). Composite
attributes (clothes) are generated from colour x pattern x type factor lists. See
``vocabulary.yaml`` beside this file for the format.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

logger = logging.getLogger(__name__)

__all__ = [
    "REQUIRED_ATTRIBUTES",
    "NEGATIVE_ID",
    "PhraseClass",
    "Attribute",
    "Vocabulary",
    "VocabularyError",
    "load_vocabulary",
    "default_vocabulary_path",
    "with_article",
]

#: Attributes every person has exactly one phrase for; the templates place each of them.
REQUIRED_ATTRIBUTES = ("age", "gender", "upper_clothes", "lower_clothes", "action", "hair_length")
#: Class id of the negative ("absent") phrase of every optional attribute.
NEGATIVE_ID = "none"
_PRONOUN_KEYS = ("subject", "object", "possessive")


class VocabularyError(ValueError):
    """The vocabulary file is malformed; the message names the file and the attribute."""


def default_vocabulary_path() -> Path:
    """The vocabulary shipped with the package (``pseudo_text/vocabulary.yaml``)."""
    return Path(__file__).with_name("vocabulary.yaml")


def with_article(text: str) -> str:
    """Prefix "a" or "an" by the first letter of ``text`` (vowel letter -> "an")."""
    return ("an " if text[:1].lower() in "aeiou" else "a ") + text


def _squash(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class PhraseClass:
    """One phrase class of an attribute.

    Attributes:
        id: canonical class id ("man", "blue/striped/shirt", "none").
        prompts: full CLIP prompt strings (one per prompt template); their embeddings are averaged.
        phrase: canonical sentence text; ``synonyms`` are alternatives for synonym substitution.
        pronouns: gender classes only: {"subject", "object", "possessive"}.
        by_age: gender classes only: nouns to use instead of the phrase for some age ids.
    """

    id: str
    prompts: tuple[str, ...]
    phrase: str
    synonyms: tuple[str, ...] = ()
    pronouns: Mapping[str, str] = field(default_factory=dict)
    by_age: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def texts(self) -> tuple[str, ...]:
        """The phrase followed by its synonyms (duplicates removed, order kept)."""
        return tuple(dict.fromkeys((self.phrase,) + self.synonyms))


@dataclass(frozen=True)
class Attribute:
    """An attribute: its phrase classes and, for optional ones, the clause forms."""

    name: str
    required: bool
    classes: tuple[PhraseClass, ...]
    verbs: tuple[str, ...] = ()
    with_forms: tuple[str, ...] = ()

    @property
    def class_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.classes)

    @property
    def negative_index(self) -> int | None:
        """Index of the negative class (optional attributes), else None."""
        ids = self.class_ids
        return ids.index(NEGATIVE_ID) if NEGATIVE_ID in ids else None

    def get(self, class_id: str) -> PhraseClass:
        for c in self.classes:
            if c.id == class_id:
                return c
        raise KeyError(f"attribute {self.name!r} has no class {class_id!r}; classes: {list(self.class_ids)[:10]}...")


@dataclass(frozen=True)
class Vocabulary:
    """All attributes in file order, plus where they came from and a content hash."""

    attributes: tuple[Attribute, ...]
    source: str
    sha256: str

    def __getitem__(self, name: str) -> Attribute:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(f"vocabulary {self.source} has no attribute {name!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    @property
    def required(self) -> tuple[Attribute, ...]:
        return tuple(a for a in self.attributes if a.required)

    @property
    def optional(self) -> tuple[Attribute, ...]:
        return tuple(a for a in self.attributes if not a.required)

    def class_slices(self) -> dict[str, slice]:
        """Attribute name -> its rows in the flattened class list (file order)."""
        out, start = {}, 0
        for a in self.attributes:
            out[a.name] = slice(start, start + len(a.classes))
            start += len(a.classes)
        return out

    @property
    def num_classes(self) -> int:
        return sum(len(a.classes) for a in self.attributes)


def _err(path: str, attr: str | None, msg: str) -> VocabularyError:
    where = f"attribute {attr!r}" if attr else "top level"
    return VocabularyError(f"vocabulary {path}: {where}: {msg}")


def _str_list(value: Any, path: str, attr: str, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _err(path, attr, f"{what} must be a list of non-empty strings, got {value!r}")
    return tuple(_squash(v) for v in value)


def _text(value: Any, path: str, attr: str, what: str) -> str:
    """A non-empty string field, or a VocabularyError naming it and its value."""
    if not isinstance(value, str) or not value.strip():
        raise _err(path, attr, f"{what} must be a non-empty string, got {value!r}")
    return value


def _prompts(templates: Sequence[str], prompt: str, path: str, attr: str) -> tuple[str, ...]:
    return tuple(_squash(t.replace("{}", prompt)) for t in templates)


def _explicit_classes(raw: Any, templates: Sequence[str], path: str, attr: str) -> list[PhraseClass]:
    if not isinstance(raw, list) or not raw:
        raise _err(path, attr, "'classes' is empty or missing: every attribute needs at least one phrase class")
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, Mapping) or not isinstance(c.get("id"), str) or not c["id"].strip():
            raise _err(path, attr, f"class #{i} needs a non-empty string 'id', got {c!r}")
        cid = c["id"]
        if "phrase" not in c:
            raise _err(path, attr, f"class {cid!r} has no 'phrase' (the sentence text; required)")
        phrase = _text(c["phrase"], path, attr, f"class {cid!r} 'phrase'")
        prompt = _text(c.get("prompt", phrase), path, attr, f"class {cid!r} 'prompt'")
        pronouns = c.get("pronouns") or {}
        if not isinstance(pronouns, Mapping) or not all(isinstance(v, str) for v in pronouns.values()):
            raise _err(path, attr, f"class {cid!r} 'pronouns' must be a mapping like "
                       f"{{subject: he, object: him, possessive: his}}, got {pronouns!r}")
        raw_by_age = c.get("by_age") or {}
        if not isinstance(raw_by_age, Mapping):
            raise _err(path, attr, f"class {cid!r} 'by_age' must be a mapping from age class ids to lists of nouns, "
                       f"got {raw_by_age!r}")
        by_age = {str(k): _str_list(v, path, attr, f"class {cid!r} by_age[{k!r}]") for k, v in raw_by_age.items()}
        out.append(
            PhraseClass(
                id=cid,
                prompts=_prompts(templates, prompt, path, attr),
                phrase=_squash(phrase),
                synonyms=_str_list(c.get("synonyms"), path, attr, f"class {cid!r} synonyms"),
                pronouns=dict(pronouns),
                by_age=by_age,
            )
        )
    return out


def _fill(template: str, color: str, type_word: str) -> str:
    return _squash(template.replace("{color}", color).replace("{type}", type_word))


def _composed_classes(raw: Any, templates: Sequence[str], path: str, attr: str) -> list[PhraseClass]:
    """Classes "<color>/<pattern>/<type>" from the factor lists of a ``compose`` section."""
    if not isinstance(raw, Mapping):
        raise _err(path, attr, "'compose' must be a mapping with colors, patterns and types")
    factors = {}
    for key in ("colors", "patterns", "types"):
        value = raw.get(key)
        if not isinstance(value, Mapping) or not value:
            raise _err(path, attr, f"compose.{key} is empty or missing")
        factors[key] = value
    colors = {k: _str_list(v, path, attr, f"compose.colors[{k!r}]") for k, v in factors["colors"].items()}
    for k, v in colors.items():
        if not v:
            raise _err(path, attr, f"compose.colors[{k!r}] has no words")
    patterns = {}
    for k, v in factors["patterns"].items():
        if not isinstance(v, Mapping) or "phrase" not in v:
            raise _err(path, attr, f"compose.patterns[{k!r}] needs 'phrase' (and may have 'prompt', 'synonyms')")
        phrase = _text(v["phrase"], path, attr, f"compose.patterns[{k!r}].phrase")
        prompt = _text(v.get("prompt", phrase), path, attr, f"compose.patterns[{k!r}].prompt")
        patterns[k] = (prompt, phrase, _str_list(v.get("synonyms"), path, attr, f"compose.patterns[{k!r}].synonyms"))
    types = {}
    for k, v in factors["types"].items():
        if not isinstance(v, Mapping):
            raise _err(path, attr, f"compose.types[{k!r}] must be a mapping with 'words' and 'plural'")
        words = _str_list(v.get("words"), path, attr, f"compose.types[{k!r}].words")
        if not words:
            raise _err(path, attr, f"compose.types[{k!r}] has no words")
        types[k] = (words, bool(v.get("plural", False)))
    out = []
    for (cname, cwords), (pname, (pprompt, pphrase, psyn)), (tname, (twords, plural)) in itertools.product(
        colors.items(), patterns.items(), types.items()
    ):
        art = (lambda s: s) if plural else with_article
        prompt = art(_fill(pprompt, cwords[0], twords[0]))
        phrase = art(_fill(pphrase, cwords[0], twords[0]))
        synonyms = [art(_fill(form, cw, tw)) for form in (pphrase,) + psyn for cw in cwords for tw in twords]
        out.append(
            PhraseClass(
                id=f"{cname}/{pname}/{tname}",
                prompts=_prompts(templates, prompt, path, attr),
                phrase=phrase,
                synonyms=tuple(s for s in dict.fromkeys(synonyms) if s != phrase),
            )
        )
    return out


def _parse_attribute(name: str, raw: Any, path: str) -> Attribute:
    if not isinstance(raw, Mapping):
        raise _err(path, name, f"must be a mapping, got {type(raw).__name__}")
    required = raw.get("required")
    if not isinstance(required, bool):
        raise _err(path, name, "needs 'required: true' or 'required: false'")
    templates = _str_list(raw.get("prompt_templates") or ["A photo of a person {}."], path, name, "prompt_templates")
    for t in templates:
        if "{}" not in t:
            raise _err(path, name, f"prompt template {t!r} has no '{{}}' blank")
    if "compose" in raw:
        classes = _composed_classes(raw["compose"], templates, path, name)
    else:
        classes = _explicit_classes(raw.get("classes"), templates, path, name)
    ids = [c.id for c in classes]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise _err(path, name, f"duplicate class ids {dup}")
    verbs = _str_list(raw.get("verbs"), path, name, "verbs")
    with_forms = _str_list(raw.get("with"), path, name, "with")
    if required:
        if NEGATIVE_ID in ids:
            raise _err(path, name, f"a required attribute cannot have a negative class {NEGATIVE_ID!r}")
    else:
        if NEGATIVE_ID not in ids:
            raise _err(path, name, f"optional attribute has no negative class (a class with id {NEGATIVE_ID!r}, e.g. 'does not carry a bag')")
        if len(ids) < 2:
            raise _err(path, name, "optional attribute needs at least one class besides the negative")
        if not verbs or not with_forms:
            raise _err(path, name, "optional attribute needs 'verbs' and 'with' clause forms containing '{x}'")
        for form in verbs + with_forms:
            if "{x}" not in form:
                raise _err(path, name, f"clause form {form!r} has no '{{x}}' blank")
    if name == "gender":
        for c in classes:
            if sorted(c.pronouns) != sorted(_PRONOUN_KEYS) or not all(isinstance(v, str) and v for v in c.pronouns.values()):
                raise _err(path, name, f"class {c.id!r} needs pronouns {{subject, object, possessive}}, got {dict(c.pronouns)}")
    return Attribute(name=name, required=required, classes=tuple(classes), verbs=verbs, with_forms=with_forms)


def load_vocabulary(path: str | os.PathLike | None = None) -> Vocabulary:
    """Load and validate a vocabulary YAML file (``None``: the default shipped with the package).

    Raises:
        FileNotFoundError: the file does not exist.
        VocabularyError: a required attribute is missing or not required, an attribute has no
            classes, an optional attribute has no negative "none" class, a field is malformed.
            The message names the file and the attribute.
    """
    path = Path(path) if path else default_vocabulary_path()
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    data = path.read_bytes()
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise VocabularyError(f"vocabulary {path}: not valid YAML: {e}") from e
    spath = str(path)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("attributes"), Mapping) or not raw["attributes"]:
        raise _err(spath, None, "needs a non-empty 'attributes' mapping")
    attrs = tuple(_parse_attribute(str(k), v, spath) for k, v in raw["attributes"].items())
    by_name = {a.name: a for a in attrs}
    for name in REQUIRED_ATTRIBUTES:
        if name not in by_name:
            raise _err(spath, name, f"required attribute is missing (required: {', '.join(REQUIRED_ATTRIBUTES)})")
        if not by_name[name].required:
            raise _err(spath, name, "must be declared 'required: true'")
    age_ids = set(by_name["age"].class_ids)
    for c in by_name["gender"].classes:
        unknown = sorted(set(c.by_age) - age_ids)
        if unknown:
            raise _err(spath, "gender", f"class {c.id!r} by_age names {unknown}, which are not age class ids "
                       f"(age classes: {sorted(age_ids)})")
    extra_required = [a.name for a in attrs if a.required and a.name not in REQUIRED_ATTRIBUTES]
    if extra_required:
        raise _err(spath, extra_required[0], f"only {REQUIRED_ATTRIBUTES} can be required (the sentence templates place "
                   "exactly those); declare other attributes 'required: false'")
    vocab = Vocabulary(attributes=attrs, source=spath, sha256=hashlib.sha256(data).hexdigest())
    logger.info("vocabulary %s: %d attributes, %d phrase classes", spath, len(attrs), vocab.num_classes)
    return vocab
