"""SYNTH-PEDES from its released JSON layout: exact counts, identities, prompt captions, attributes,
and bad entries refused naming the entry and the field.

The fixture writes the released layout (``<root>/SYNTH-PEDES/synthpedes_dataset.json`` and
``Part<k>/<id>/<n>.jpg`` images) with non-contiguous raw ids and shuffled entries; the expected
counts, labels and attribute phrases are computed while writing, independently of the loader.
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import random

import pytest
from fastreid.data.datasets import DATASET_REGISTRY

from raw_fixtures import write_image, write_json
from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.data.build import build_dataset, build_t2i_train_loader
from unipt_plugin.data.datasets import SYNTHPEDES, DatasetFormatError

RAW_IDS = (7, 3, 12, 40)
_COPIES = itertools.count()
IMAGES_PER_ID = 2


def _write_synth_pedes(root: str, seed: int = 0) -> dict:
    """The released layout; returns the entries written and the expected figures."""
    rng = random.Random(seed)
    folder = os.path.join(root, "SYNTH-PEDES")
    entries = []
    for pid in RAW_IDS:
        for k in range(IMAGES_PER_ID):
            rel = f"Part{1 + pid % 2}/{pid}/{k + 1}.jpg"
            write_image(os.path.join(folder, rel), (32, 16), seed=pid * 10 + k)
            colour = rng.choice(["black", "red", "blue", "white"])
            entries.append({
                "id": pid, "file_path": rel,
                "attributes": [f"man,{colour} hair,{colour} shirt,pink shorts,black shoes,unknown"],
                "captions": [f"A man {pid} view {k} in a {colour} shirt.", f"The person {pid}/{k} walks."],
                "prompt_caption": [f"A man with {colour} hair, number {pid}-{k}."],
            })
    rng.shuffle(entries)
    write_json(os.path.join(folder, "synthpedes_dataset.json"), entries)
    label = {pid: i for i, pid in enumerate(sorted(RAW_IDS))}  # relabelled in sorted raw-id order
    return {"folder": folder, "entries": entries, "label": label,
            "images": len(entries), "captions": sum(len(e["captions"]) for e in entries),
            "prompts": sum(len(e["prompt_caption"]) for e in entries)}


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth_pedes"))
    return root, _write_synth_pedes(root)


def _cfg(**keys):
    cfg = get_unipt_cfg()
    for dotted, value in keys.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def _rewrite(root: str, entries: list) -> str:
    """A copy of the dataset folder's annotation with ``entries`` (same images); returns the new root."""
    new_root = f"{root}_copy{next(_COPIES)}"
    os.makedirs(os.path.join(new_root, "SYNTH-PEDES"))
    for part in ("Part1", "Part2"):
        src = os.path.join(root, "SYNTH-PEDES", part)
        if os.path.isdir(src):
            os.symlink(src, os.path.join(new_root, "SYNTH-PEDES", part))
    write_json(os.path.join(new_root, "SYNTH-PEDES", "synthpedes_dataset.json"), entries)
    return new_root


def test_registered_and_loaded_with_exact_counts_and_identities(released, caplog):
    root, fx = released
    assert DATASET_REGISTRY.get("SYNTHPEDES") is SYNTHPEDES
    data = build_dataset(_cfg(DATASETS__ROOT=root), "SYNTHPEDES")
    assert data.num_classes == len(RAW_IDS)
    assert data.num_train_images == fx["images"] == len(RAW_IDS) * IMAGES_PER_ID
    assert len(data.train) == fx["captions"]
    assert len(data.query) == 0 and len(data.gallery) == 0  # no split in the release: training only
    by_path = {os.path.join(fx["folder"], e["file_path"]): e for e in fx["entries"]}
    for path, caption, pid, image_id in data.train:
        entry = by_path[path]
        assert pid == fx["label"][entry["id"]]
        assert caption in entry["captions"]
    # image ids: 0..N-1 in the file's order of first appearance
    first_seen = list(dict.fromkeys(p for p, _, _, _ in data.train))
    assert first_seen == [os.path.join(fx["folder"], e["file_path"]) for e in fx["entries"]]
    assert sorted({i for _, _, _, i in data.train}) == list(range(fx["images"]))
    with caplog.at_level(logging.INFO, logger="unipt_plugin"):
        data.show_train()
    row = [r for r in caplog.text.splitlines() if r.startswith("| train")][0]
    assert [c.strip() for c in row.strip("|").split("|")] == ["train", "4", "8", "16"]


def test_prompt_captions_are_extra_captions_by_the_key(released):
    root, fx = released
    without = SYNTHPEDES(root, _cfg())
    with_prompts = SYNTHPEDES(root, _cfg(DATASETS__SYNTH_PEDES__PROMPT_CAPTIONS=True))
    assert len(without.train) == fx["captions"]
    assert len(with_prompts.train) == fx["captions"] + fx["prompts"]
    folder = fx["folder"]
    for entry in fx["entries"]:
        path = os.path.join(folder, entry["file_path"])
        caps = [c for p, c, _, _ in with_prompts.train if p == path]
        assert caps == entry["captions"] + entry["prompt_caption"]  # after the image's captions
    with pytest.raises(ValueError, match="DATASETS.SYNTH_PEDES.PROMPT_CAPTIONS"):
        SYNTHPEDES(root, _cfg(DATASETS__SYNTH_PEDES__PROMPT_CAPTIONS="yes"))


def test_a_prompt_equal_to_a_caption_is_kept_once(released, caplog):
    root, fx = released
    entries = copy.deepcopy(fx["entries"])
    entries[0]["prompt_caption"] = [entries[0]["captions"][0]]
    data = SYNTHPEDES(_rewrite(root, entries), _cfg(DATASETS__SYNTH_PEDES__PROMPT_CAPTIONS=True))
    assert len(data.train) == fx["captions"] + fx["prompts"] - 1
    assert data.num_repeated_captions == 1


def test_attributes_are_kept_per_training_image(released):
    root, fx = released
    entries = copy.deepcopy(fx["entries"])
    entries[1]["attributes"] = ["woman,long hair", " red coat , unknown "]  # two strings
    entries[2]["attributes"] = []
    bad_root = _rewrite(root, entries)
    data = SYNTHPEDES(bad_root, _cfg())
    folder = os.path.join(bad_root, "SYNTH-PEDES")
    # by hand: every string split at "," and stripped, in file order
    expected = {os.path.join(folder, e["file_path"]): [p.strip() for text in e["attributes"] for p in text.split(",")]
                for e in entries}
    assert expected[os.path.join(folder, entries[1]["file_path"])] == ["woman", "long hair", "red coat", "unknown"]
    assert expected[os.path.join(folder, entries[2]["file_path"])] == []
    seen = set()
    for path, _, _, image_id in data.train:
        assert data.attributes_of(image_id) == expected[path], path
        seen.add(image_id)
    assert len(seen) == len(entries) == len(data.train_attributes)


def _bad(entries: list, index: int, field: str, value, delete: bool = False) -> list:
    entries = copy.deepcopy(entries)
    if delete:
        del entries[index][field]
    else:
        entries[index][field] = value
    return entries


@pytest.mark.parametrize("field,value,delete,shown,prompts", [
    ("attributes", None, True, "no field 'attributes'", False),
    ("attributes", "man,black hair", False, "field 'attributes'", False),
    ("attributes", ["man", 3], False, "field 'attributes[1]'", False),
    ("prompt_caption", None, True, "no field 'prompt_caption'", True),
    ("prompt_caption", "a text", False, "field 'prompt_caption'", True),
    ("prompt_caption", ["ok", None], False, "field 'prompt_caption[1]'", True),
    ("id", -1, False, "field 'id'", False),
    ("id", "7", False, "field 'id'", False),
    ("file_path", None, True, "no field 'file_path'", False),
    ("captions", "one caption", False, "field 'captions'", False),
])
def test_bad_entries_are_refused_naming_the_entry_and_the_field(released, field, value, delete, shown, prompts):
    root, fx = released
    bad_root = _rewrite(root, _bad(fx["entries"], 3, field, value, delete))
    with pytest.raises(DatasetFormatError) as e:
        SYNTHPEDES(bad_root, _cfg(DATASETS__SYNTH_PEDES__PROMPT_CAPTIONS=prompts))
    assert "entry 3 of" in str(e.value) and shown in str(e.value), str(e.value)


def test_prompt_caption_is_not_read_without_the_key(released):
    root, fx = released
    entries = _bad(fx["entries"], 3, "prompt_caption", None, delete=True)
    assert len(SYNTHPEDES(_rewrite(root, entries), _cfg()).train) == fx["captions"]


def test_layout_keys_and_missing_images(released, tmp_path):
    root, fx = released
    # an absolute ANNOTATION and IMAGE_DIR elsewhere
    ann = tmp_path / "elsewhere.json"
    ann.write_text(json.dumps(fx["entries"]))
    data = SYNTHPEDES(str(tmp_path), _cfg(DATASETS__SYNTH_PEDES__ANNOTATION=str(ann),
                                          DATASETS__SYNTH_PEDES__IMAGE_DIR=fx["folder"]))
    assert len(data.train) == fx["captions"]
    entries = copy.deepcopy(fx["entries"])
    entries[5]["file_path"] = "Part9/1/1.jpg"
    with pytest.raises(FileNotFoundError, match="Part9/1/1.jpg"):
        SYNTHPEDES(_rewrite(root, entries), _cfg())
    assert len(SYNTHPEDES(_rewrite(root, entries), _cfg(DATASETS__VERIFY_IMAGES="lazy")).train) == fx["captions"]
    with pytest.raises(FileNotFoundError, match="synthpedes_dataset.json"):
        SYNTHPEDES(str(tmp_path), _cfg())


def test_the_training_loader_gives_the_identity_labels(released):
    root, fx = released
    cfg = _cfg(DATASETS__ROOT=root, DATASETS__NAMES=("SYNTHPEDES",), SOLVER__IMS_PER_BATCH=4,
               DATALOADER__NUM_WORKERS=0, INPUT__SIZE_TRAIN=[32, 16], INPUT__SIZE_TEST=[32, 16])
    loader = build_t2i_train_loader(cfg)
    assert loader.dataset.num_classes == len(RAW_IDS)
    items = loader.dataset.img_items
    batch = next(iter(loader))
    assert batch["images"].shape == (4, 3, 32, 16)
    # every target is the relabelled raw id of its image (the items hold them in the same order)
    label_of = {os.path.join(fx["folder"], e["file_path"]): fx["label"][e["id"]] for e in fx["entries"]}
    expected = {items[i][3]: label_of[items[i][0]] for i in range(len(items))}
    assert [expected[i] for i in batch["img_ids"].tolist()] == batch["targets"].tolist()
