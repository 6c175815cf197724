"""Combine stage, part 1: sentence templates generated from composable clause patterns.

A template is an opening sentence (the subject and the action, optionally absorbing the hair and
the clothes) followed, in one of several orders, by the separate sentences the opening did not
absorb: a clothes sentence, a hair sentence and an accessories sentence (optional attributes).
Enumerating the clause patterns and their orders gives thousands of distinct templates (the
paper uses 456); ``build_templates()`` lists them in a fixed order so a template index is stable.

Blanks in a template:
    {A} {a} {The}   article resolved from the word that follows ("A"/"An", "a"/"an", "The")
    {age} {gender} {action} {hair} {upper} {lower}   phrases of the required attributes
    {Subj} {subj} {Poss} {poss} {obj}                pronouns of the gender
    {acc:<style>}    the sentence(s) of the present optional attributes; the whole sentence is
                     dropped when none is present

Attribute spans (PLIP's IAP masks them, docs/choices.md, PLIP): :func:`fill_template_with_spans`
also returns the character spans ``(start, end)`` of the caption that hold an attribute phrase:
the phrases filled into {age} {gender} {action} {hair} {upper} {lower} and the nouns of the
accessory clauses, each marked (:func:`mark_phrase`) before the text is assembled, so that the
spans follow every later step (articles, whitespace); a leading article ("a", "an", "the") is
not part of a span ("a red shirt" -> "red shirt").
"""
from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = ["Template", "AccessoryClause", "build_templates", "fill_template", "fill_template_with_spans", "join_list",
           "mark_phrase", "ACCESSORY_STYLES", "SPAN_OPEN", "SPAN_CLOSE"]

#: Private-use characters around an attribute phrase while a caption is assembled (never in the output).
SPAN_OPEN, SPAN_CLOSE = "\ue000", "\ue001"
_LEADING_ARTICLE = re.compile(r"(?:a|an|the) ", re.I)

# Openings: (pattern, absorbs_hair). Every opening ends where a clothes suffix may follow.
_OPENINGS: tuple[tuple[str, bool], ...] = (
    ("{A} {age} {gender} is {action}", False),
    ("{The} {age} {gender} is {action}", False),
    ("This {age} {gender} is {action}", False),
    ("There is {a} {age} {gender} {action}", False),
    ("{A} {age} {gender} with {hair} is {action}", True),
    ("{The} {age} {gender} with {hair} is {action}", True),
    ("{A} {age} {gender} who has {hair} is {action}", True),
)
# Clothes pairs and the suffixes that attach them to the opening.
_PAIRS = ("{upper} and {lower}", "{lower} and {upper}", "{upper} over {lower}")
_CLOTHES_SUFFIXES = (", wearing {pair}", " in {pair}", ", dressed in {pair}")
# Separate clothes sentences: generic ones take a pair; the others place upper/lower themselves.
_CLOTHES_SENTENCES = ("{Subj} is wearing {pair}.", "{Subj} wears {pair}.", "{Subj} is dressed in {pair}.", "{Subj} has on {pair}.")
_CLOTHES_SPLIT = (
    "{Subj} wears {upper} on top and {lower} below.",
    "On {poss} upper body {subj} wears {upper}, and on {poss} lower body {lower}.",
)
_HAIR_SENTENCES = ("{Subj} has {hair}.", "{Subj} has got {hair}.")
#: Accessory styles: how the present optional attributes are written.
ACCESSORY_STYLES = ("list", "also", "noun", "addition", "each", "seen_with")


@dataclass(frozen=True)
class Template:
    """A sentence template: ``text`` with blanks (see the module docstring); ``index`` in the list."""

    index: int
    text: str


@dataclass(frozen=True)
class AccessoryClause:
    """One present optional attribute, already worded: ``verb`` ("carries a backpack") and
    ``with_form`` ("with a backpack")."""

    verb: str
    with_form: str


def build_templates(limit: int = 0, seed: int = 0) -> list[Template]:
    """Every distinct template, in a fixed order (same list on every run and machine).

    Args:
        limit: keep only this many templates (0 = all), drawn with ``seed`` and kept in the
            enumeration order; e.g. 456 to match the paper's count.
    """
    texts: list[str] = []
    for opening, absorbs_hair in _OPENINGS:
        clothes_options: list[tuple[str, str | None]] = [
            (suffix.replace("{pair}", pair), None) for suffix in _CLOTHES_SUFFIXES for pair in _PAIRS
        ]
        clothes_options += [("", s.replace("{pair}", p)) for s in _CLOTHES_SENTENCES for p in _PAIRS]
        clothes_options += [("", s) for s in _CLOTHES_SPLIT]
        hair_options: Sequence[str | None] = (None,) if absorbs_hair else _HAIR_SENTENCES
        for (suffix, clothes_sentence), hair_sentence, style in itertools.product(clothes_options, hair_options, ACCESSORY_STYLES):
            first = opening + suffix + "."
            rest = [s for s in (clothes_sentence, hair_sentence, "{acc:%s}" % style) if s is not None]
            for order in itertools.permutations(rest):
                texts.append(" ".join((first,) + order))
    unique = list(dict.fromkeys(texts))
    if limit:
        if limit > len(unique):
            raise ValueError(f"asked for {limit} templates; only {len(unique)} distinct templates exist")
        keep = sorted(random.Random(f"templates:{seed}").sample(range(len(unique)), limit))
        unique = [unique[i] for i in keep]
    return [Template(index=i, text=t) for i, t in enumerate(unique)]


def join_list(items: Sequence[str]) -> str:
    """"x", "x and y", "x, y and z"."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _accessories(style: str, clauses: Sequence[AccessoryClause], noun_subject: str) -> str:
    """The accessory sentence(s) in ``style``; "" when no optional attribute is present."""
    if not clauses:
        return ""
    verbs = join_list([c.verb for c in clauses])
    if style == "list":
        return "{Subj} " + verbs + "."
    if style == "also":
        return "{Subj} also " + verbs + "."
    if style == "noun":
        return noun_subject + " " + verbs + "."
    if style == "addition":
        return "In addition, {subj} " + verbs + "."
    if style == "each":
        return " ".join("{Subj} " + c.verb + "." for c in clauses)
    if style == "seen_with":
        return "{Subj} can be seen " + join_list([c.with_form for c in clauses]) + "."
    raise ValueError(f"unknown accessory style {style!r}; expected one of {ACCESSORY_STYLES}")


# the next word may begin with a phrase mark: the article follows the phrase's first letter
_ARTICLE = re.compile(r"\{(A|a)\} (" + SPAN_OPEN + r"?)([^\s" + SPAN_OPEN + r"])")
_ACC = re.compile(r"\{acc:(\w+)\}")


def mark_phrase(text: str) -> str:
    """``text`` between the attribute-phrase marks (an accessory clause's noun, say):
    :func:`fill_template_with_spans` records its span and removes the marks."""
    return SPAN_OPEN + text + SPAN_CLOSE


def _unmark(text: str) -> tuple[str, list[tuple[int, int]]]:
    """Text with marks -> (text without them, spans of the marked phrases, leading articles and
    surrounding spaces excluded; empty spans dropped)."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    length, start = 0, None
    for part in re.split("([" + SPAN_OPEN + SPAN_CLOSE + "])", text):
        if part == SPAN_OPEN:
            if start is not None:
                raise ValueError(f"nested attribute-phrase marks in {text!r}")
            start = length
        elif part == SPAN_CLOSE:
            if start is None:
                raise ValueError(f"an attribute-phrase mark closes none in {text!r}")
            phrase = "".join(out)[start:length]
            lead = len(phrase) - len(phrase.lstrip())
            article = _LEADING_ARTICLE.match(phrase, lead)
            s = article.end() if article else lead
            e = len(phrase.rstrip())
            if e > s:
                spans.append((start + s, start + e))
            start = None
        else:
            out.append(part)
            length += len(part)
    if start is not None:
        raise ValueError(f"an attribute-phrase mark is not closed in {text!r}")
    return "".join(out), spans


def fill_template(
    template: Template | str,
    slots: Mapping[str, str],
    pronouns: Mapping[str, str],
    clauses: Sequence[AccessoryClause],
) -> str:
    """Fill a template: the caption of :func:`fill_template_with_spans` (its text only)."""
    return fill_template_with_spans(template, slots, pronouns, clauses)[0]


def fill_template_with_spans(
    template: Template | str,
    slots: Mapping[str, str],
    pronouns: Mapping[str, str],
    clauses: Sequence[AccessoryClause],
) -> tuple[str, list[tuple[int, int]]]:
    """Fill a template and locate its attribute phrases.

    Args:
        template: a ``Template`` or its text.
        slots: texts for age, gender, action, hair, upper, lower.
        pronouns: {"subject", "object", "possessive"} of the gender (lower case).
        clauses: the present optional attributes, worded (their nouns marked with
            :func:`mark_phrase` to be located); none -> the accessory sentence is dropped.
    Returns:
        (caption, spans): the caption (sentences capitalised, ending with a period, single
        spaces) and the ``(start, end)`` character spans (end exclusive, in text order) of its
        attribute phrases: the six slots' phrases and the marked clause nouns (module docstring).
    """
    text = template.text if isinstance(template, Template) else template
    marked = {k: mark_phrase(slots[k]) for k in ("age", "gender", "action", "hair", "upper", "lower")}
    noun_subject = "The " + marked["gender"]
    text = _ACC.sub(lambda m: _accessories(m.group(1), clauses, noun_subject), text)
    subj, obj, poss = pronouns["subject"], pronouns["object"], pronouns["possessive"]
    values = {
        "{Subj}": subj.capitalize(), "{subj}": subj, "{obj}": obj, "{poss}": poss, "{Poss}": poss.capitalize(),
        "{The}": "The",
        **{"{" + k + "}": v for k, v in marked.items()},
    }
    # Fill from a single pass over the blanks so a phrase containing braces is never re-filled.
    text = re.sub(r"\{(Subj|subj|obj|poss|Poss|The|age|gender|action|hair|upper|lower)\}", lambda m: values[m.group(0)], text)

    def article(m: re.Match) -> str:
        word = "an" if m.group(3).lower() in "aeiou" else "a"
        return (word.capitalize() if m.group(1) == "A" else word) + " " + m.group(2) + m.group(3)

    text = _ARTICLE.sub(article, text)
    return _unmark(" ".join(text.split()))
