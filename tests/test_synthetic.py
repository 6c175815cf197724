"""The synthetic world: deterministic, attributes visible where they should be, and the labeled
set readable by the real CUHK-PEDES loader."""
import json
import os
from dataclasses import replace

import numpy as np

from unipt_plugin.synthetic import generate_world, render_person, sample_identity
from unipt_plugin.synthetic.attributes import nearest_color
from unipt_plugin.synthetic.captions import describe


def _people(n, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_identity(rng) for _ in range(n)]


def test_rendering_is_deterministic():
    p = _people(1)[0]
    assert np.array_equal(render_person(p, 7), render_person(p, 7))
    assert not np.array_equal(render_person(p, 7), render_person(p, 8))
    assert _people(3, seed=1)[2].attributes == _people(3, seed=1)[2].attributes


def _region_color(img, mask):
    return nearest_color(np.median(img[mask], axis=0))


def test_clothes_colours_dominate_their_regions():
    hits_up = hits_low = n_low = 0
    people = _people(60, seed=3)
    for i, p in enumerate(people):
        img, layout = render_person(p, 100 + i, (128, 64), return_layout=True)
        hits_up += _region_color(img, layout["torso"]) == p.attributes["upper_clothes"].split("/")[0]
        if layout["lower"].sum() > 20:
            n_low += 1
            hits_low += _region_color(img, layout["lower"]) == p.attributes["lower_clothes"].split("/")[0]
    # lighting changes and neighbouring named colours (orange/brown, white/gray) cost a few
    assert hits_up / len(people) > 0.8
    assert hits_low / n_low > 0.75


def test_hat_and_hair_are_visible():
    p = _people(1, seed=5)[0]
    bare = replace(p, attributes={**p.attributes, "hat": "none", "hair_length": "short", "umbrella": "none"})
    hat = replace(bare, attributes={**bare.attributes, "hat": "hat"})
    long_hair = replace(bare, attributes={**bare.attributes, "hair_length": "long"})
    img0, lay = render_person(bare, 3, return_layout=True)
    img1 = render_person(hat, 3)
    changed = np.any(img0 != img1, axis=2)
    assert changed[lay["above_head"]].mean() > 0.2  # the hat changes pixels above the head
    hair = np.all(np.abs(render_person(long_hair, 3).astype(int) - np.array(p.hair_rgb)) < 40, axis=2).sum()
    short = np.all(np.abs(img0.astype(int) - np.array(p.hair_rgb)) < 40, axis=2).sum()
    assert hair > short * 1.3


def test_identity_traits_separate_people_with_equal_attributes():
    a, b = _people(2, seed=9)
    b = replace(b, attributes=dict(a.attributes))
    assert not np.array_equal(render_person(a, 1), render_person(b, 1))


def test_captions_mention_gender_and_upper_colour():
    rng = np.random.default_rng(0)
    for p in _people(40, seed=11):
        text = describe(p, rng)
        words = set(text.lower().replace(".", " ").split())
        assert words & ({"man", "boy", "he"} if p.attributes["gender"] == "man" else {"woman", "girl", "she"})
        assert p.attributes["upper_clothes"].split("/")[0] in words
        assert "  " not in text and text[0].isupper() and text.endswith(".")


def test_world_parses_through_the_cuhk_pedes_loader(tmp_path):
    counts = generate_world(str(tmp_path), num_labeled_ids=10, images_per_id=2, num_pool_images=6,
                            size=(64, 32), seed=0, show_progress=False)
    raw = json.load(open(tmp_path / "CUHK-PEDES" / "reid_raw.json"))
    assert counts["labeled_images"] == len(raw) == 20 and counts["pool_images"] == 6
    assert {r["split"] for r in raw} == {"train", "val", "test"}
    assert all(set(r) == {"split", "captions", "file_path", "processed_tokens", "id"} for r in raw)
    from fastreid.data.datasets import DATASET_REGISTRY

    ds = DATASET_REGISTRY.get("CUHKPEDES")(root=str(tmp_path))
    n_train = sum(r["split"] == "train" for r in raw)
    assert len(ds.train) == 2 * n_train  # one item per caption
    assert len(ds.gallery) == sum(r["split"] == "test" for r in raw)
    truth = json.load(open(tmp_path / "CUHK-PEDES" / "attributes.json"))
    assert set(truth) == {r["file_path"] for r in raw}
    # a re-run renders nothing and rewrites identical files
    before = open(tmp_path / "CUHK-PEDES" / "reid_raw.json").read()
    again = generate_world(str(tmp_path), num_labeled_ids=10, images_per_id=2, num_pool_images=6,
                           size=(64, 32), seed=0, show_progress=False)
    assert again["rendered"] == 0 and open(tmp_path / "CUHK-PEDES" / "reid_raw.json").read() == before
    assert len(os.listdir(tmp_path / "LUPerson-T" / "imgs" / "000")) == 6
