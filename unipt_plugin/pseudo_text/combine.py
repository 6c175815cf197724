"""Combine stage, part 2: chosen attribute ids -> captions (template draw + synonym substitution).

Every random draw for an image comes from a generator seeded by ``(seed, file_path)``, so an
image's captions do not depend on which shard, chunk or batch it was processed in.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

from .templates import AccessoryClause, Template, build_templates, fill_template_with_spans, mark_phrase
from .vocabulary import NEGATIVE_ID, Vocabulary

__all__ = ["Caption", "CaptionBuilder", "image_rng"]

# How many extra draws to spend looking for a caption not yet produced for the same image.
_DISTINCT_TRIES = 8


@dataclass(frozen=True)
class Caption:
    """A caption, the index of its template and the ``(start, end)`` character spans of its
    attribute phrases (``templates.fill_template_with_spans``; PLIP's IAP masks them)."""

    text: str
    template_index: int
    attribute_spans: tuple[tuple[int, int], ...] = ()


def image_rng(seed: int, key: str) -> random.Random:
    """The generator of one image (string seeding is stable across runs and platforms)."""
    return random.Random(f"{seed}\x00{key}")


class CaptionBuilder:
    """Turns the chosen class id of every attribute into sentences.

    Args:
        vocab: the vocabulary whose class ids the attributes use.
        templates: the template list (default: every template of ``build_templates()``).
    """

    def __init__(self, vocab: Vocabulary, templates: Sequence[Template] | None = None) -> None:
        self.vocab = vocab
        self.templates = list(templates) if templates is not None else build_templates()
        if not self.templates:
            raise ValueError("CaptionBuilder needs at least one template")

    def _slots(self, attrs: Mapping[str, str], rng: random.Random) -> tuple[dict[str, str], dict[str, str]]:
        v = self.vocab
        gender = v["gender"].get(attrs["gender"])
        age_id = attrs["age"]
        nouns = gender.by_age.get(age_id) or gender.texts
        slots = {
            "gender": rng.choice(nouns),
            "age": rng.choice(v["age"].get(age_id).texts),
            "action": rng.choice(v["action"].get(attrs["action"]).texts),
            "hair": rng.choice(v["hair_length"].get(attrs["hair_length"]).texts),
            "upper": rng.choice(v["upper_clothes"].get(attrs["upper_clothes"]).texts),
            "lower": rng.choice(v["lower_clothes"].get(attrs["lower_clothes"]).texts),
        }
        return slots, dict(gender.pronouns)

    def _clauses(self, attrs: Mapping[str, str], rng: random.Random) -> list[AccessoryClause]:
        out = []
        for attr in self.vocab.optional:
            cid = attrs.get(attr.name, NEGATIVE_ID)
            if cid == NEGATIVE_ID:
                continue
            noun = mark_phrase(rng.choice(attr.get(cid).texts))  # its span is recorded
            out.append(AccessoryClause(verb=rng.choice(attr.verbs).replace("{x}", noun),
                                       with_form=rng.choice(attr.with_forms).replace("{x}", noun)))
        return out

    def caption(self, attrs: Mapping[str, str], rng: random.Random) -> Caption:
        """One caption: a random template filled with randomly chosen synonyms.

        Args:
            attrs: attribute name -> class id; every required attribute must be present, an
                optional one absent or "none" is left out of the sentence.
        """
        missing = [name for name in ("age", "gender", "upper_clothes", "lower_clothes", "action", "hair_length") if name not in attrs]
        if missing:
            raise KeyError(f"attributes {missing} missing from {dict(attrs)}")
        template = self.templates[rng.randrange(len(self.templates))]
        slots, pronouns = self._slots(attrs, rng)
        text, spans = fill_template_with_spans(template, slots, pronouns, self._clauses(attrs, rng))
        return Caption(text=text, template_index=template.index, attribute_spans=tuple(spans))

    def captions(self, attrs: Mapping[str, str], key: str, seed: int, num: int) -> list[Caption]:
        """``num`` captions for one image, distinct when a few extra draws allow it."""
        rng = image_rng(seed, key)
        out: list[Caption] = []
        seen: set[str] = set()
        for _ in range(num):
            cap = self.caption(attrs, rng)
            for _ in range(_DISTINCT_TRIES):
                if cap.text not in seen:
                    break
                cap = self.caption(attrs, rng)
            seen.add(cap.text)
            out.append(cap)
        return out
