"""The synthetic world's attribute space: the 14 attributes of the pseudo-text vocabulary with
the same class ids (``unipt_plugin/pseudo_text/vocabulary.yaml``), and seeded sampling of a
person's attributes with plausible correlations."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["COLORS", "COLOR_RGB", "PATTERNS", "UPPER_TYPES", "LOWER_TYPES", "REQUIRED", "OPTIONAL",
           "OPTIONAL_RATES", "PersonIdentity", "sample_identity", "nearest_color"]

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 28), "white": (235, 235, 232), "gray": (128, 128, 130), "red": (200, 30, 35),
    "orange": (240, 130, 20), "yellow": (235, 215, 40), "green": (40, 150, 60), "blue": (35, 70, 190),
    "purple": (120, 50, 150), "pink": (240, 140, 180), "brown": (110, 70, 35),
}
COLORS = tuple(COLOR_RGB)
PATTERNS = ("pure", "striped", "plaid")
UPPER_TYPES = ("t-shirt", "shirt", "jacket", "coat", "sweater")
LOWER_TYPES = ("trousers", "jeans", "shorts", "skirt")
REQUIRED = {
    "gender": ("man", "woman"),
    "age": ("child", "teenager", "young", "middle-aged", "elderly"),
    "action": ("walking", "standing", "running"),
    "hair_length": ("short", "long", "bald"),
}
OPTIONAL = {
    "bag": ("backpack", "shoulder-bag", "handbag"), "glasses": ("glasses", "sunglasses"),
    "smoke": ("cigarette",), "hat": ("cap", "hat"), "cellphone": ("phone",), "umbrella": ("umbrella",),
    "gloves": ("gloves",), "vehicle": ("bicycle", "motorcycle"),
}
# Probability that an optional attribute is present (bag most common, as in LUPerson-T).
OPTIONAL_RATES = {"bag": 0.38, "cellphone": 0.18, "glasses": 0.17, "hat": 0.16, "umbrella": 0.05,
                  "smoke": 0.04, "gloves": 0.05, "vehicle": 0.05}


@dataclass
class PersonIdentity:
    """A person: attribute class ids (``attributes``) plus identity-specific traits that make two
    people with equal attributes look different (exact shades, proportions, a mark)."""

    attributes: dict[str, str]
    upper_rgb: tuple[int, int, int]
    lower_rgb: tuple[int, int, int]
    pattern_rgb: tuple[int, int, int]
    skin_rgb: tuple[int, int, int]
    hair_rgb: tuple[int, int, int]
    shoe_rgb: tuple[int, int, int]
    accessory_rgb: tuple[int, int, int]
    mark_rgb: tuple[int, int, int]
    height: float  # fraction of the image height the person spans (before per-view scale)
    width: float  # shoulder width relative to height
    mark_pos: tuple[float, float]  # where the small mark sits on the torso (x, y in [0, 1])
    extra: dict = field(default_factory=dict)


def _jitter(rgb, rng: np.random.Generator, amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def nearest_color(rgb) -> str:
    """The named colour closest (Euclidean RGB) to ``rgb``."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return min(COLORS, key=lambda c: float(np.sum((np.asarray(COLOR_RGB[c]) - rgb) ** 2)))


def sample_identity(rng: np.random.Generator) -> PersonIdentity:
    """Draw a person's attributes and traits from ``rng``."""
    gender = str(rng.choice(REQUIRED["gender"]))
    age = str(rng.choice(REQUIRED["age"], p=[0.08, 0.14, 0.42, 0.24, 0.12]))
    action = str(rng.choice(REQUIRED["action"], p=[0.55, 0.3, 0.15]))
    hair_p = [0.55, 0.4, 0.05] if gender == "woman" else [0.8, 0.08, 0.12]
    if age == "elderly" and gender == "man":
        hair_p = [0.5, 0.0, 0.5]
    hair = str(rng.choice(REQUIRED["hair_length"], p=hair_p))
    upper = f"{rng.choice(COLORS)}/{rng.choice(PATTERNS, p=[0.6, 0.2, 0.2])}/{rng.choice(UPPER_TYPES)}"
    lower_types = LOWER_TYPES if gender == "woman" else ("trousers", "jeans", "shorts")
    lower_type = str(rng.choice(lower_types))
    lower = f"{rng.choice(COLORS)}/{rng.choice(PATTERNS, p=[0.8, 0.1, 0.1])}/{lower_type}"
    attrs = {"gender": gender, "age": age, "upper_clothes": upper, "lower_clothes": lower,
             "action": action, "hair_length": hair}
    for key, classes in OPTIONAL.items():
        attrs[key] = str(rng.choice(classes)) if rng.random() < OPTIONAL_RATES[key] else "none"
    if attrs["vehicle"] != "none":
        attrs["umbrella"] = "none"  # nobody rides holding an umbrella here
    tone = float(rng.uniform(0.45, 1.0))
    skin = (int(235 * tone), int(190 * tone), int(160 * tone))
    hair_base = (200, 200, 205) if age == "elderly" else [(20, 15, 10), (70, 45, 25), (170, 130, 70)][int(rng.integers(3))]
    height = {"child": 0.55, "teenager": 0.78, "young": 0.9, "middle-aged": 0.88, "elderly": 0.84}[age]
    return PersonIdentity(
        attributes=attrs,
        upper_rgb=_jitter(COLOR_RGB[upper.split("/")[0]], rng),
        lower_rgb=_jitter(COLOR_RGB[lower.split("/")[0]], rng),
        pattern_rgb=_jitter((245, 245, 245) if upper.split("/")[0] in ("black", "blue", "purple", "brown", "red", "green")
                            else (30, 30, 30), rng, 10),
        skin_rgb=skin,
        hair_rgb=_jitter(hair_base, rng, 10),
        shoe_rgb=_jitter(COLOR_RGB[str(rng.choice(["black", "white", "brown", "gray"]))], rng),
        accessory_rgb=_jitter(COLOR_RGB[str(rng.choice(["black", "brown", "gray", "red", "blue"]))], rng),
        mark_rgb=tuple(int(c) for c in rng.integers(0, 256, 3)),
        height=height * float(rng.uniform(0.94, 1.04)),
        width=float(rng.uniform(0.2, 0.27)) * (1.08 if gender == "man" else 0.95),
        mark_pos=(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.7))),
    )
