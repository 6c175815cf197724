"""Human-style captions for the labeled synthetic set, in the manner of CUHK-PEDES annotators:
free word order, varied verbs, occasional extra details, and some omissions. They are phrased
differently from the pseudo-text templates on purpose."""
from __future__ import annotations

import numpy as np

from .attributes import PersonIdentity, nearest_color

__all__ = ["describe"]

_AGE = {"child": "little", "teenager": "teenage", "young": "young", "middle-aged": "middle aged", "elderly": "old"}
_NOUN = {("man", "child"): "boy", ("woman", "child"): "girl", ("man", "teenager"): "teenage boy",
         ("woman", "teenager"): "teenage girl"}
_UPPER = {"t-shirt": ["t-shirt", "short sleeved shirt", "tee"], "shirt": ["shirt", "button up shirt", "long sleeved shirt"],
          "jacket": ["jacket", "open jacket", "zip up jacket"], "coat": ["coat", "long coat", "overcoat"],
          "sweater": ["sweater", "jumper", "pullover"]}
_LOWER = {"trousers": ["pants", "trousers", "slacks"], "jeans": ["jeans", "denim pants"], "shorts": ["shorts", "short pants"],
          "skirt": ["skirt", "knee length skirt"]}
_PATTERN = {"pure": ["", "plain ", "solid "], "striped": ["striped ", "stripy "], "plaid": ["plaid ", "checkered "]}
_OPTIONAL = {
    "backpack": ["carries a {c} backpack", "has a {c} backpack on the back", "is wearing a {c} backpack"],
    "shoulder-bag": ["carries a {c} bag over the shoulder", "has a {c} shoulder bag"],
    "handbag": ["holds a {c} handbag", "is carrying a small {c} purse"],
    "glasses": ["wears glasses", "has on a pair of glasses"], "sunglasses": ["wears dark sunglasses", "has sunglasses on"],
    "cigarette": ["is smoking a cigarette", "has a cigarette in the mouth"],
    "cap": ["wears a {c} cap", "has a {c} baseball cap on"], "hat": ["wears a {c} hat", "has a {c} hat on the head"],
    "phone": ["is talking on a phone", "holds a cell phone to the ear"],
    "umbrella": ["holds a {c} umbrella", "is walking under a {c} umbrella"],
    "gloves": ["wears {c} gloves", "has {c} gloves on"],
    "bicycle": ["is riding a bicycle", "rides a bike"], "motorcycle": ["is riding a motorcycle", "sits on a motorbike"],
}
_ACTION = {"walking": ["is walking", "walks along", "is strolling"], "standing": ["is standing", "stands still"],
           "running": ["is running", "jogs", "is rushing forward"]}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def describe(identity: PersonIdentity, rng: np.random.Generator) -> str:
    """One caption of ``identity``: two or three sentences, ~15% of details omitted."""
    a = identity.attributes
    he = "he" if a["gender"] == "man" else "she"
    his = "his" if a["gender"] == "man" else "her"
    noun = _NOUN.get((a["gender"], a["age"]), a["gender"])
    adj = _AGE[a["age"]] if (a["gender"], a["age"]) not in _NOUN and rng.random() < 0.7 else ""
    uc, up, ut = a["upper_clothes"].split("/")
    lc, lp, lt = a["lower_clothes"].split("/")
    upper = f"a {_pick(rng, _PATTERN[up])}{uc} {_pick(rng, _UPPER[ut])}"
    lower = f"{_pick(rng, _PATTERN[lp])}{lc} {_pick(rng, _LOWER[lt])}"
    lower = ("a " + lower) if lt == "skirt" else lower
    hair = {"short": "short hair", "long": "long hair", "bald": "no hair"}[a["hair_length"]]
    hair_color = nearest_color(identity.hair_rgb).replace("white", "gray")
    subject = f"{'An' if adj[:1] in 'aeiou' and adj else 'A'} {adj + ' ' if adj else ''}{noun}"
    first = _pick(rng, [
        f"{subject} with {hair_color if a['hair_length'] != 'bald' else ''} {hair} is wearing {upper} and {lower}.",
        f"{subject} {_pick(rng, _ACTION[a['action']])} in {upper} and {lower}.",
        f"This {noun} wears {upper} with {lower} and has {hair}.",
    ])
    rest = []
    if rng.random() < 0.6:
        rest.append(f"{he.capitalize()} {_pick(rng, _ACTION[a['action']])}.")
    for key in ("bag", "glasses", "smoke", "hat", "cellphone", "umbrella", "gloves", "vehicle"):
        cls = a[key]
        if cls != "none" and rng.random() < 0.85:
            rest.append(f"{he.capitalize()} " + _pick(rng, _OPTIONAL[cls]).format(c=nearest_color(identity.accessory_rgb)) + ".")
    if rng.random() < 0.35:
        rest.append(f"{his.capitalize()} shoes are {nearest_color(identity.shoe_rgb)}.")
    order = rng.permutation(len(rest))
    text = " ".join([first] + [rest[i] for i in order])
    return " ".join(text.split())
