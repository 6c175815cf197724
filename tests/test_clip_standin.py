"""CLIP stand-in: training lowers the contrastive loss, the saved files load through the pseudo-text
tool's path, the conquer stage runs on them, and the accuracy table matches hand-computed values."""
import json
import textwrap

import open_clip
import pytest
import torch

from unipt_plugin.modeling.clip_models import create_clip
from unipt_plugin.pseudo_text.clip_model import load_frozen_clip
from unipt_plugin.pseudo_text.vocabulary import load_vocabulary
from unipt_plugin.synthetic.clip_standin import (
    accuracy_markdown,
    attribute_accuracy,
    encode_text_trimmed,
    load_attribute_truth,
    mean_contrastive_loss,
    read_caption_pairs,
    selection_accuracy,
    standin_model_config,
    train_clip_standin,
)

SMALL = textwrap.dedent("""
    attributes:
      gender:
        required: true
        classes:
          - {id: man, phrase: man, pronouns: {subject: he, object: him, possessive: his}}
          - {id: woman, phrase: woman, pronouns: {subject: she, object: her, possessive: her}}
      age: {required: true, classes: [{id: young, phrase: young}, {id: elderly, phrase: elderly}]}
      upper_clothes:
        required: true
        classes:
          - {id: red/pure/shirt, phrase: a red shirt}
          - {id: red/striped/coat, phrase: a red striped coat}
          - {id: blue/pure/coat, phrase: a blue coat}
          - {id: blue/striped/shirt, phrase: a blue striped shirt}
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
          - {id: shoulder-bag, phrase: a shoulder bag}
          - {id: none, phrase: no bag, prompt: who does not carry a bag}
""")

TINY_MODEL = dict(image_size=(32, 16), patch_size=8, vision_width=32, vision_layers=1, vision_head_width=16,
                  text_width=32, text_layers=1, text_heads=2, embed_dim=32)


@pytest.fixture()
def small(tmp_path):
    p = tmp_path / "small.yaml"
    p.write_text(SMALL)
    return load_vocabulary(p)


def _by_key(rows):
    return {(r.attribute, r.metric): r for r in rows}


def test_selection_accuracy_hand_computed(small):
    base = {"age": "young", "lower_clothes": "black/pure/jeans", "action": "walking", "hair_length": "short"}
    truth = [
        dict(base, gender="man", upper_clothes="red/pure/shirt", bag="backpack"),
        dict(base, gender="woman", upper_clothes="blue/striped/shirt", bag="none"),
        dict(base, gender="man", upper_clothes="red/striped/coat", bag="handbag"),
        dict(base, gender="man", upper_clothes="blue/pure/coat"),  # bag left out = absent
    ]
    pred = [
        dict(base, gender="man", upper_clothes="red/pure/shirt", bag="backpack"),
        dict(base, gender="man", upper_clothes="blue/pure/coat", bag="handbag"),
        dict(base, gender="man", upper_clothes="red/pure/shirt", bag="none"),
        dict(base, gender="woman", upper_clothes="red/striped/coat", bag="none"),
    ]
    rows = _by_key(selection_accuracy(pred, truth, small))
    # gender: right on images 0 and 2 -> 2/4; majority "man" 3/4; uniform 1/2.
    g = rows[("gender", "class")]
    assert (g.count, g.accuracy, g.majority, g.uniform) == (4, 0.5, 0.75, 0.5)
    # upper clothes: whole class right on image 0 only -> 1/4; all four classes differ -> majority 1/4.
    u = rows[("upper_clothes", "class")]
    assert (u.accuracy, u.majority, u.uniform) == (0.25, 0.25, 0.25)
    # colour: red=red, blue=blue, red=red, red!=blue -> 3/4; pattern: pure=pure, pure!=striped,
    # pure!=striped, striped!=pure -> 1/4; type: shirt=shirt, coat!=shirt, shirt!=coat, coat=coat -> 2/4.
    assert rows[("upper_clothes", "color")].accuracy == 0.75
    assert rows[("upper_clothes", "pattern")].accuracy == 0.25
    assert rows[("upper_clothes", "type")].accuracy == 0.5
    assert rows[("upper_clothes", "color")].uniform == 0.5
    # bag presence: predicted [T, T, F, F] vs true [T, F, T, F] -> 2/4; majority 2/4; uniform 1/2.
    b = rows[("bag", "present/absent")]
    assert (b.count, b.accuracy, b.majority, b.uniform) == (4, 0.5, 0.5, 0.5)
    # bag class where truly present (images 0, 2): backpack right, miss wrong -> 1/2; 3 bag classes.
    c = rows[("bag", "class when present")]
    assert (c.count, c.accuracy, c.majority) == (2, 0.5, 0.5)
    assert c.uniform == pytest.approx(1 / 3)
    # single-class attribute: always right
    assert rows[("lower_clothes", "class")].accuracy == 1.0
    md = accuracy_markdown(list(rows.values()))
    assert "| gender | class | 4 | 50.0 | 75.0 | 50.0 |" in md


def test_selection_accuracy_no_present_and_length_mismatch(small):
    t = {"gender": "man", "age": "young", "upper_clothes": "red/pure/shirt", "lower_clothes": "black/pure/jeans",
         "action": "walking", "hair_length": "short", "bag": "none"}
    rows = _by_key(selection_accuracy([t], [t], small))
    assert rows[("bag", "class when present")].count == 0 and rows[("bag", "class when present")].accuracy is None
    assert "| bag | class when present | 0 | n/a | n/a |" in accuracy_markdown(list(rows.values()))
    with pytest.raises(ValueError, match="predictions"):
        selection_accuracy([t, t], [t], small)


def test_attribute_truth_rejects_unknown_class(small, tmp_path):
    p = tmp_path / "attributes.json"
    rec = {"gender": "man", "age": "young", "upper_clothes": "green/pure/shirt", "lower_clothes": "black/pure/jeans",
           "action": "walking", "hair_length": "short"}
    p.write_text(json.dumps({"a.png": rec}))
    with pytest.raises(ValueError, match="a.png.*upper_clothes.*green/pure/shirt"):
        load_attribute_truth(p, ["a.png"], small)
    rec["upper_clothes"] = "red/pure/shirt"
    del rec["gender"]
    p.write_text(json.dumps({"a.png": rec}))
    with pytest.raises(ValueError, match="required attribute 'gender'"):
        load_attribute_truth(p, ["a.png"], small)
    with pytest.raises(KeyError, match="b.png"):
        load_attribute_truth(p, ["b.png"], small)


def test_trimmed_text_encoding_equals_open_clip():
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(0)
    model = create_clip(standin_model_config(**TINY_MODEL)).eval()
    tokens = SimpleTokenizer()(["a man in a red shirt", "the woman walks with a black backpack and blue jeans today"])
    with torch.no_grad():
        ref = model.encode_text(tokens)
        got = encode_text_trimmed(model, tokens)
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from unipt_plugin.synthetic import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(str(root), num_labeled_ids=8, images_per_id=2, num_pool_images=4, size=(32, 16), seed=0)
    return root


def test_training_lowers_loss_and_files_load_through_the_tool_path(tiny_world, tmp_path):
    torch.manual_seed(123)
    config = standin_model_config(**TINY_MODEL)
    pairs = read_caption_pairs(tiny_world)
    assert pairs and all(isinstance(c, str) and c for _, c in pairs)
    out = train_clip_standin(tiny_world, tmp_path / "standin.pt", model_config=config, epochs=2, batch_size=8, lr=2e-3,
                             seed=0, show_progress=False)
    assert out == tmp_path / "standin.pt" and out.is_file()
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(config))
    # The model at initialisation: same seed, same construction as inside train_clip_standin.
    torch.manual_seed(0)
    initial = create_clip(config)
    # The pseudo-text tool's loader: open_clip config registered from the JSON, weights loaded strictly.
    trained, tokenizer = load_frozen_clip(model_config=str(out.with_suffix(".json")), weights=str(out))
    assert tuple(trained.visual.image_size) == (32, 16)
    state = torch.load(out, weights_only=True)
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in state.items())
    assert not all(torch.equal(initial.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(tokenizer(["a red shirt"]), open_clip.tokenize(["a red shirt"]))
    before = mean_contrastive_loss(initial, pairs, batch_size=8)
    after = mean_contrastive_loss(trained, pairs, batch_size=8)
    assert after < before - 0.05, (before, after)


def test_attribute_accuracy_runs_the_conquer_stage(tiny_world, tmp_path):
    from unipt_plugin.pseudo_text.conquer import ClipConquer
    from unipt_plugin.pseudo_text.image_list import clip_transform
    from unipt_plugin.synthetic.clip_standin import labeled_split_images
    from unipt_plugin.data.transforms import read_image

    torch.manual_seed(0)
    model = create_clip(standin_model_config(**TINY_MODEL))
    weights = tmp_path / "init.pt"
    torch.save(model.state_dict(), weights)
    weights.with_suffix(".json").write_text(json.dumps(standin_model_config(**TINY_MODEL)))
    rows = attribute_accuracy(tiny_world, weights, split="test", batch_size=4)
    # Independent reference: the conquer stage called image by image, compared by hand.
    vocab = load_vocabulary()
    built, tokenizer = load_frozen_clip(model_config=str(weights.with_suffix(".json")), weights=str(weights))
    conquer = ClipConquer(built, tokenizer, vocab)
    image_dir, files = labeled_split_images(tiny_world, "test")
    truth = json.loads((image_dir.parent / "attributes.json").read_text())
    tf = clip_transform(built)
    preds = [conquer(tf(read_image(str(image_dir / f))).unsqueeze(0)).ids[0] for f in files]
    got = _by_key(rows)
    for attr in ("gender", "upper_clothes", "action"):
        expected = sum(p[attr] == truth[f][attr] for p, f in zip(preds, files)) / len(files)
        assert got[(attr, "class")].accuracy == pytest.approx(expected)
        assert got[(attr, "class")].count == len(files)
    present = sum((p["bag"] != "none") == (truth[f].get("bag", "none") != "none") for p, f in zip(preds, files)) / len(files)
    assert got[("bag", "present/absent")].accuracy == pytest.approx(present)
