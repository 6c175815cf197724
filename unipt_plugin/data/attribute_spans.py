"""Which characters of a training caption are attribute phrases (PLIP's IAP; docs/choices.md, PLIP).

Image-guided attribute prediction masks the attribute phrases of a caption and predicts them
from the text fused with the image. The phrases come, per dataset of DATASETS.NAMES, from:

* **recorded** spans: a LUPerson-T file written by the pseudo-text generator holds, beside each
  entry's ``captions``, ``attribute_spans``: one list per caption of ``[start, end]`` character
  spans (end exclusive) of the phrases it filled in (``pseudo_text.templates``); the reader keeps
  them per training item (``LUPersonT.train_attribute_spans``, encoded by :func:`encode_spans`).
  The packed layout carries them in its ``attribute_spans`` column. A caption without recorded
  spans (an older file, a file packed before that column, an entry without the field) falls back
  to the vocabulary below;
* **SYNTH-PEDES's** ``attributes`` (``SYNTHPEDES.attributes_of``): each phrase of the image
  ("black hair") is found in the caption as a whole (case-insensitive, whole words); a phrase
  that does not occur as a whole ("black shirt" in "... a black t-shirt ...") is found word by
  word (its words other than articles, "of", "and", "with": "black"); the placeholder
  "unknown" is skipped;
* the **vocabulary** (any other dataset, and the fallback): every phrase of the pseudo-text
  vocabulary (``pseudo_text/vocabulary.yaml`` or MODEL.PRETRAIN.IAP.VOCABULARY: every class's
  phrase and synonyms except the negative "none" classes, and the gender classes' age nouns),
  leading article removed, found in the caption as whole words, the longest phrase first at
  each position (leftmost-longest, non-overlapping).

Words are runs of letters and digits joined by inner hyphens or apostrophes ("t-shirt",
"middle-aged"); matching compares them lower-cased. Spans are ``(start, end)`` character
offsets into the caption as the dataset gives it (stripped), sorted and non-overlapping.
``unipt_plugin.data.attribute_masking`` turns them into token positions.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any


__all__ = ["NOT_RECORDED", "encode_spans", "decode_spans", "PhraseMatcher", "vocabulary_phrases",
           "match_attribute_phrases", "AttributeSpanSource", "build_attribute_span_source"]

logger = logging.getLogger(__name__)

#: Encoded spans of a caption whose spans were not recorded (the vocabulary is matched instead).
NOT_RECORDED = "?"
_WORD = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")
_ARTICLES = ("a", "an", "the")
# words of a SYNTH-PEDES phrase that are not matched on their own
_NOT_ALONE = frozenset(_ARTICLES + ("of", "and", "with", "unknown"))
_UNKNOWN = "unknown"


def encode_spans(spans: Iterable[Sequence[int]] | None) -> str:
    """[(start, end), ...] -> "start:end,start:end" ("" for none); None -> :data:`NOT_RECORDED`."""
    if spans is None:
        return NOT_RECORDED
    return ",".join(f"{int(s)}:{int(e)}" for s, e in spans)


def decode_spans(text: str) -> list[tuple[int, int]] | None:
    """The inverse of :func:`encode_spans` (None for :data:`NOT_RECORDED`)."""
    if text == NOT_RECORDED:
        return None
    if not text:
        return []
    out = []
    for part in text.split(","):
        s, e = part.split(":")
        out.append((int(s), int(e)))
    return out


def _words(text: str) -> list[tuple[str, int, int]]:
    """(lower-cased word, start, end) of every word of ``text``."""
    return [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def _strip_article(phrase: str) -> str:
    words = phrase.split()
    if len(words) > 1 and words[0].lower() in _ARTICLES:
        return " ".join(words[1:])
    return phrase


class PhraseMatcher:
    """Leftmost-longest whole-word matching of a fixed set of phrases.

    Args:
        phrases: the phrases (case and spacing do not matter; a phrase without a word is ignored).
    Call: ``matcher(text)`` -> sorted, non-overlapping ``(start, end)`` spans of the phrases in
    ``text``: at each word, the longest phrase starting there is taken, and matching resumes
    after it.
    """

    def __init__(self, phrases: Iterable[str]) -> None:
        self.phrases: set[tuple[str, ...]] = set()
        for p in phrases:
            words = tuple(w for w, _, _ in _words(p))
            if words:
                self.phrases.add(words)
        self.max_words = max((len(p) for p in self.phrases), default=0)

    def __len__(self) -> int:
        return len(self.phrases)

    def __call__(self, text: str) -> list[tuple[int, int]]:
        words = _words(text)
        spans, i = [], 0
        while i < len(words):
            for n in range(min(self.max_words, len(words) - i), 0, -1):
                if tuple(w for w, _, _ in words[i:i + n]) in self.phrases:
                    spans.append((words[i][1], words[i + n - 1][2]))
                    i += n
                    break
            else:
                i += 1
        return spans


def vocabulary_phrases(vocab: Any) -> list[str]:
    """The attribute phrases of a pseudo-text ``Vocabulary``: every class's phrase and synonyms
    (negative "none" classes excluded) and the gender classes' age nouns, leading article removed."""
    from ..pseudo_text.vocabulary import NEGATIVE_ID

    out: dict[str, None] = {}
    for attr in vocab.attributes:
        for c in attr.classes:
            if c.id == NEGATIVE_ID:
                continue
            for text in c.texts + tuple(n for nouns in c.by_age.values() for n in nouns):
                out[_strip_article(text)] = None
    return list(out)


def match_attribute_phrases(caption: str, phrases: Sequence[str]) -> list[tuple[int, int]]:
    """SYNTH-PEDES's rule (module docstring): spans of ``phrases`` in ``caption``, each phrase
    as a whole, else its words (not articles, "of", "and", "with"); "unknown" skipped."""
    phrases = [p for p in phrases if p.strip() and p.strip().lower() != _UNKNOWN]
    if not phrases:
        return []
    whole = PhraseMatcher(phrases)
    spans = whole(caption)
    found = {tuple(w for w, _, _ in _words(caption[s:e])) for s, e in spans}
    missing = [p for p in phrases if tuple(w for w, _, _ in _words(p)) not in found]
    singles = {w for p in missing for w, _, _ in _words(p) if w not in _NOT_ALONE}
    if singles:
        taken = list(spans)
        for word, s, e in _words(caption):
            if word in singles and not any(a < e and s < b for a, b in taken):
                spans.append((s, e))
        spans.sort()
    return spans


class AttributeSpanSource:
    """The attribute spans of every training item of a concatenation of datasets.

    Built by :func:`build_attribute_span_source`; picklable (DataLoader workers use it).
    ``source(index, caption, image_id)`` -> sorted ``(start, end)`` character spans of
    ``caption``, the item ``index`` of the concatenated items, ``image_id`` its (offset) image id.

    Args:
        parts: per dataset, in item order: ``(stop, kind, payload, image_offset)`` where items
            ``[previous stop, stop)`` are the dataset's, ``kind`` is "recorded" (payload: one
            encoded span string per item), "synth" (payload: (one attribute string per image of
            the dataset, the separator of its phrases)) or "vocabulary" (payload None), and
            ``image_offset`` the offset of the dataset's image ids in the concatenation.
        matcher: the vocabulary's :class:`PhraseMatcher`.
    """

    def __init__(self, parts: Sequence[tuple[int, str, Any, int]], matcher: PhraseMatcher) -> None:
        self.parts = list(parts)
        self.matcher = matcher

    def __call__(self, index: int, caption: str, image_id: int) -> list[tuple[int, int]]:
        start = 0
        for stop, kind, payload, image_offset in self.parts:
            if index < stop:
                break
            start = stop
        else:
            raise IndexError(f"training item {index} is beyond the {start} items of the attribute span source")
        if kind == "recorded":
            spans = decode_spans(payload[index - start][0])
            if spans is not None:
                return spans
        elif kind == "synth":
            attributes, separator = payload
            (text,) = attributes[int(image_id) - image_offset]
            return match_attribute_phrases(caption, [p.strip() for p in text.split(separator)])
        return self.matcher(caption)


def build_attribute_span_source(cfg: Any, datasets: Sequence[tuple[Any, int]]) -> AttributeSpanSource:
    """The span source of a training loader's datasets.

    Args:
        cfg: the config (MODEL.PRETRAIN.IAP.VOCABULARY: the vocabulary YAML, "" = the shipped one).
        datasets: ``(dataset, image_offset)`` per dataset of DATASETS.NAMES in order, each with its
            ``train`` items; its source: ``train_attribute_spans`` when it has them (LUPerson-T with
            recorded spans), ``train_attributes`` (SYNTH-PEDES), else the vocabulary.
    """
    from ..pseudo_text.vocabulary import load_vocabulary
    from .datasets.synth_pedes import ATTRIBUTE_SEPARATOR

    path = str(cfg.MODEL.PRETRAIN.IAP.VOCABULARY)
    matcher = PhraseMatcher(vocabulary_phrases(load_vocabulary(path or None)))
    parts, stop = [], 0
    for data, image_offset in datasets:
        stop += len(data.train)
        recorded = getattr(data, "train_attribute_spans", None)
        attributes = getattr(data, "train_attributes", None)
        if recorded is not None:
            kind, payload = "recorded", recorded
            if len(recorded) != len(data.train):
                raise ValueError(f"{data.name}: {len(recorded)} attribute span records for {len(data.train)} "
                                 "training items")
        elif attributes is not None:
            kind, payload = "synth", (attributes, ATTRIBUTE_SEPARATOR)
        else:
            kind, payload = "vocabulary", None
        parts.append((stop, kind, payload, int(image_offset)))
        how = {"recorded": "the file's attribute_spans (vocabulary phrases where a caption has none)",
               "synth": "its attributes matched in each caption",
               "vocabulary": f"the vocabulary's {len(matcher)} phrases matched in each caption"}[kind]
        logger.info("IAP attribute phrases of %s: %s", data.name, how)
    return AttributeSpanSource(parts, matcher)
