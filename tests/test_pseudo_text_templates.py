"""Combine stage: every template filled with random attributes reads as clean English."""
import functools
import random
import re

import pytest

from unipt_plugin.pseudo_text.combine import CaptionBuilder
from unipt_plugin.pseudo_text.templates import build_templates
from unipt_plugin.pseudo_text.vocabulary import NEGATIVE_ID, load_vocabulary

MALE_WORDS = re.compile(r"\b(he|him|his|man|boy|gentleman|guy|male)\b", re.I)
FEMALE_WORDS = re.compile(r"\b(she|her|hers|woman|girl|lady|female)\b", re.I)
DANGLING = re.compile(r"\b(and|also|with|seen|addition|wearing|in|carries|wears|has|is|a|an|the)\s*\.|,\s*\.|\.\s*\.|\s[.,]", re.I)


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


def random_attributes(vocab, rng, p_optional):
    out = {a.name: rng.choice(a.class_ids) for a in vocab.required}
    for a in vocab.optional:
        present = [c for c in a.class_ids if c != NEGATIVE_ID]
        out[a.name] = rng.choice(present) if rng.random() < p_optional else NEGATIVE_ID
    return out


@functools.lru_cache(maxsize=None)
def phrase_regex(phrases):
    return re.compile("|".join(r"(?<![\w-])" + re.escape(p) + r"(?![\w-])" for p in phrases), re.I)


def contains_phrase(text, phrases):
    return bool(phrases) and bool(phrase_regex(tuple(phrases)).search(text))


def check_caption(text, attrs, vocab):
    assert "{" not in text and "}" not in text and "<" not in text, text
    assert "  " not in text and text == text.strip(), text
    sentences = re.split(r"(?<=\.) ", text)
    for s in sentences:
        assert s[:1].isupper() and s.endswith(".") and s.count(".") == 1, (s, text)
    assert not DANGLING.search(text), text
    assert not re.search(r"\ba [aeiou]", text, re.I) and not re.search(r"\ban [^aeiou]", text, re.I), text
    if attrs["gender"] == "man":
        assert not FEMALE_WORDS.search(text), text
        assert MALE_WORDS.search(text), text
    else:
        assert not MALE_WORDS.search(text), text
    for name in ("upper_clothes", "lower_clothes", "action", "hair_length", "age"):
        assert contains_phrase(text, vocab[name].get(attrs[name]).texts), (name, attrs[name], text)
    for a in vocab.optional:
        others = [t for c in a.classes if c.id not in (NEGATIVE_ID, attrs[a.name]) for t in c.texts]
        if attrs[a.name] == NEGATIVE_ID:
            assert not contains_phrase(text, [t for c in a.classes if c.id != NEGATIVE_ID for t in c.texts]), (a.name, text)
        else:
            assert contains_phrase(text, a.get(attrs[a.name]).texts), (a.name, text)
            mine = a.get(attrs[a.name]).texts
            # Another class's phrase must not appear (unless it is part of the chosen phrase:
            # "glasses" in "dark glasses").
            assert not contains_phrase(text, [t for t in others if not any(t in m for m in mine)]), (a.name, text)


def test_at_least_456_distinct_templates():
    templates = build_templates()
    texts = [t.text for t in templates]
    assert len(set(texts)) == len(texts) >= 456
    assert [t.index for t in templates] == list(range(len(templates)))
    sub = build_templates(456, seed=3)
    assert len(sub) == 456 and {t.text for t in sub} <= set(texts)
    with pytest.raises(ValueError, match="only"):
        build_templates(len(texts) + 1)


def test_every_template_filled_cleanly(vocab):
    templates = build_templates()
    rng = random.Random(7)
    for template in templates:
        # No optional attribute, some, or all of them, in turn.
        attrs = random_attributes(vocab, rng, (0.0, 0.3, 1.0)[template.index % 3])
        builder = CaptionBuilder(vocab, [template])
        cap = builder.caption(attrs, rng)
        assert cap.template_index == template.index
        check_caption(cap.text, attrs, vocab)


def test_absent_optional_clauses_dropped(vocab):
    rng = random.Random(0)
    builder = CaptionBuilder(vocab)
    attrs = random_attributes(vocab, rng, 0.0)
    for t in builder.templates:
        if "{acc:" in t.text:
            text = CaptionBuilder(vocab, [t]).caption(attrs, rng).text
            assert not re.search(r"\b(also|In addition|can be seen|carries)\b", text), text
            # The sentence count is that of the template without its accessory sentence.
            assert text.count(".") == re.sub(r"\{acc:\w+\}", "", t.text).count("."), (t.text, text)


def test_seeded(vocab):
    builder = CaptionBuilder(vocab)
    rng = random.Random(1)
    items = [(f"img{i}.jpg", random_attributes(vocab, rng, 0.5)) for i in range(20)]
    run = lambda seed: [[c.text for c in builder.captions(a, k, seed, 3)] for k, a in items]  # noqa: E731
    first = run(11)
    assert first == run(11)
    assert first != run(12)
    assert sum(x != y for x, y in zip(first, run(12))) >= 15
    assert all(len(set(caps)) == 3 for caps in first)
