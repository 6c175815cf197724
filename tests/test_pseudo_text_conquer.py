"""Conquer stage: selection on crafted similarities, prompt embeddings, vocabulary validation."""
import json
import math
import textwrap

import pytest
import torch
import torch.nn.functional as F

from unipt_plugin.pseudo_text.conquer import ClipConquer, select_attributes
from unipt_plugin.pseudo_text.vocabulary import VocabularyError, load_vocabulary

SMALL = textwrap.dedent("""
    attributes:
      gender:
        required: true
        classes:
          - {id: man, phrase: man, pronouns: {subject: he, object: him, possessive: his}}
          - {id: woman, phrase: woman, pronouns: {subject: she, object: her, possessive: her}}
      age: {required: true, classes: [{id: young, phrase: young}, {id: elderly, phrase: elderly}]}
      upper_clothes: {required: true, classes: [{id: red/pure/shirt, phrase: a red shirt}, {id: blue/pure/coat, phrase: a blue coat}]}
      lower_clothes: {required: true, classes: [{id: black/pure/jeans, phrase: black jeans}]}
      action: {required: true, classes: [{id: walking, phrase: walking}, {id: standing, phrase: standing}, {id: running, phrase: running}]}
      hair_length: {required: true, classes: [{id: short, phrase: short hair}, {id: long, phrase: long hair}]}
      bag:
        required: false
        verbs: ["carries {x}"]
        with: ["with {x}"]
        classes:
          - {id: backpack, phrase: a backpack}
          - {id: handbag, phrase: a handbag}
          - {id: none, phrase: no bag, prompt: who does not carry a bag}
""")
# Columns: gender 0-1, age 2-3, upper 4-5, lower 6, action 7-9, hair 10-11, bag 12-14.


@pytest.fixture()
def small(tmp_path):
    p = tmp_path / "small.yaml"
    p.write_text(SMALL)
    return load_vocabulary(p)


def row(gender, age, upper, lower, action, hair, bag):
    return gender + age + upper + lower + action + hair + bag


def test_selection_hand_computed(small):
    sims = torch.tensor([
        # bag: 0.30 / 0.28 / 0.25 at scale 100 -> p(backpack) = 1 / (1 + e^-2 + e^-5) = 0.8756: rejected
        row([0.2, 0.3], [0.1, 0.0], [0.05, 0.06], [0.1], [0.3, 0.1, 0.2], [0.0, 0.1], [0.30, 0.28, 0.25]),
        # bag: 0.31 / 0.28 / 0.25 -> p(backpack) = 1 / (1 + e^-3 + e^-6) = 0.95033: kept
        row([0.4, 0.3], [0.0, 0.1], [0.07, 0.06], [0.1], [0.1, 0.3, 0.2], [0.2, 0.1], [0.31, 0.28, 0.25]),
        # bag: the negative wins with p = 1 / (1 + e^-15 + e^-20): absent
        row([0.4, 0.3], [0.0, 0.1], [0.07, 0.06], [0.1], [0.1, 0.2, 0.3], [0.2, 0.1], [0.25, 0.20, 0.40]),
    ])
    sel = select_attributes(sims, small, logit_scale=100.0, threshold=0.9)
    assert [s["gender"] for s in sel.ids] == ["woman", "man", "man"]
    assert [s["age"] for s in sel.ids] == ["young", "elderly", "elderly"]
    assert [s["upper_clothes"] for s in sel.ids] == ["blue/pure/coat", "red/pure/shirt", "red/pure/shirt"]
    assert [s["action"] for s in sel.ids] == ["walking", "standing", "running"]
    assert [s["hair_length"] for s in sel.ids] == ["long", "short", "short"]
    assert [s["bag"] for s in sel.ids] == ["none", "backpack", "none"]
    assert sel.scores[0]["gender"] == pytest.approx(0.3)
    assert sel.scores[0]["bag"] == pytest.approx(1 / (1 + math.exp(-2) + math.exp(-5)), abs=1e-5)
    assert sel.scores[1]["bag"] == pytest.approx(1 / (1 + math.exp(-3) + math.exp(-6)), abs=1e-5)
    assert sel.scores[2]["bag"] == pytest.approx(1 / (1 + math.exp(-15) + math.exp(-20)), abs=1e-6)
    # The threshold is strict and applies to the probability: 0.95033 passes 0.95, not 0.951.
    assert select_attributes(sims[1:2], small, 100.0, 0.95).ids[0]["bag"] == "backpack"
    assert select_attributes(sims[1:2], small, 100.0, 0.951).ids[0]["bag"] == "none"
    # The logit scale matters: at scale 200 the first row's p = 1 / (1 + e^-4 + e^-10) = 0.98196.
    sel200 = select_attributes(sims[:1], small, 200.0, 0.9)
    assert sel200.ids[0]["bag"] == "backpack"
    assert sel200.scores[0]["bag"] == pytest.approx(1 / (1 + math.exp(-4) + math.exp(-10)), abs=1e-5)


def test_selection_shape_checked(small):
    with pytest.raises(ValueError, match=r"\(N, 15\)"):
        select_attributes(torch.zeros(2, 14), small, 100.0, 0.9)


def test_default_vocabulary_canonical_ids():
    v = load_vocabulary()
    colors = "black white gray red orange yellow green blue purple pink brown".split()
    patterns = ["pure", "striped", "plaid"]
    upper = {f"{c}/{p}/{t}" for c in colors for p in patterns for t in ["t-shirt", "shirt", "jacket", "coat", "sweater"]}
    lower = {f"{c}/{p}/{t}" for c in colors for p in patterns for t in ["trousers", "jeans", "shorts", "skirt"]}
    expected = {
        "gender": {"man", "woman"}, "age": {"child", "teenager", "young", "middle-aged", "elderly"},
        "action": {"walking", "standing", "running"}, "hair_length": {"short", "long", "bald"},
        "upper_clothes": upper, "lower_clothes": lower,
        "bag": {"backpack", "shoulder-bag", "handbag", "none"}, "glasses": {"glasses", "sunglasses", "none"},
        "smoke": {"cigarette", "none"}, "hat": {"cap", "hat", "none"}, "cellphone": {"phone", "none"},
        "umbrella": {"umbrella", "none"}, "gloves": {"gloves", "none"}, "vehicle": {"bicycle", "motorcycle", "none"},
    }
    assert {a.name: set(a.class_ids) for a in v.attributes} == expected
    assert len(upper) == 165 and len(lower) == 132
    c = v["upper_clothes"].get("orange/plaid/coat")
    assert c.phrase == "an orange plaid coat" and "A photo of a person wearing an orange plaid coat." in c.prompts
    assert v["lower_clothes"].get("blue/pure/jeans").phrase == "blue jeans"


@pytest.mark.parametrize("edit, attr, message", [
    (lambda s: s.replace("  hair_length: {required: true, classes: [{id: short, phrase: short hair}, {id: long, phrase: long hair}]}\n", ""),
     "hair_length", "required attribute is missing"),
    (lambda s: s.replace("[{id: black/pure/jeans, phrase: black jeans}]", "[]"), "lower_clothes", "empty"),
    (lambda s: s.replace("      - {id: none, phrase: no bag, prompt: who does not carry a bag}\n", ""), "bag", "no negative class"),
    (lambda s: s.replace("action: {required: true, classes: [", 'action: {required: false, verbs: ["is {x}"], with: ["{x}"], '
                         "classes: [{id: none, phrase: still}, "), "action", "must be declared 'required: true'"),
    (lambda s: s.replace("{id: woman, phrase: woman, pronouns: {subject: she, object: her, possessive: her}}", "{id: woman, phrase: woman}"),
     "gender", "pronouns"),
])
def test_vocabulary_errors_name_file_and_attribute(tmp_path, edit, attr, message):
    edited = edit(SMALL)
    assert edited != SMALL
    p = tmp_path / "bad_vocab.yaml"
    p.write_text(edited)
    with pytest.raises(VocabularyError) as e:
        load_vocabulary(p)
    assert str(p) in str(e.value) and repr(attr) in str(e.value) and message in str(e.value)


def test_prompt_embeddings_are_normalised_prompt_means(small, tmp_path):
    from unipt_plugin.pseudo_text.clip_model import load_frozen_clip

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "conquer-tiny.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    model, tok = load_frozen_clip(model_config=str(tmp_path / "conquer-tiny.json"), random_init_ok=True)
    conq = ClipConquer(model, tok, small, threshold=0.9)
    assert conq.class_embeddings.shape == (small.num_classes, 16)
    assert conq.logit_scale == pytest.approx(float(model.logit_scale.exp()))
    bag = small["bag"].get("none")
    assert bag.prompts == ("A photo of a person who does not carry a bag.",)
    # Independent: encode the prompts of one class one by one, average the unit vectors.
    gender_man = small["gender"].get("man")
    assert len(gender_man.prompts) == 1
    up = small["upper_clothes"].get("blue/pure/coat")
    with torch.no_grad():
        feats = torch.stack([F.normalize(model.encode_text(tok([p]))[0], dim=-1) for p in up.prompts])
    expected = F.normalize(feats.mean(0), dim=-1)
    assert torch.allclose(conq.class_embeddings[5], expected, atol=1e-5)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
    assert torch.allclose(conq.similarities(images), img @ conq.class_embeddings.T, atol=1e-5)
