"""Text-image datasets parsed from raw-format fixture files (tests/raw_fixtures.py)."""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections import Counter

import numpy as np
import pytest
import torch
from fastreid.data.datasets import DATASET_REGISTRY

from raw_fixtures import make_cuhk_pedes, make_icfg_pedes, make_luperson_t, make_rstpreid, write_json
from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.data import build_t2i_train_loader
from unipt_plugin.data.build import build_dataset
from unipt_plugin.data.common import T2ITrainSet
from unipt_plugin.data.datasets import (CUHKPEDES, CUHKPEDESVal, ICFGPEDES, DatasetFormatError, LUPersonT,
                                        RSTPReid)
from unipt_plugin.data.datasets.arrow_layout import pack_luperson_t, read_packed_image
from unipt_plugin.data.transforms import ImageReadError, build_image_transform, read_image


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    """One read-only root holding all four datasets (tests that modify files use their own tmp_path)."""
    root = str(tmp_path_factory.mktemp("datasets"))
    written = {
        "CUHKPEDES": make_cuhk_pedes(root, num_ids=3, images_per_id=2, captions_per_image=2),
        "ICFGPEDES": make_icfg_pedes(root, num_ids=3, images_per_id=3),
        "RSTPReid": make_rstpreid(root, num_ids=2, images_per_id=3, captions_per_image=2),
        "LUPersonT": make_luperson_t(root, num_images=5, captions_per_image=2),
    }
    return root, written


def _check_train(data, written):
    recs = [r for r in written["records"] if r["split"] == "train"]
    expected = written["train"]
    assert len(data.train) == expected["captions"]
    assert data.num_classes == expected["ids"]
    assert data.num_train_images == expected["images"]
    # one item per caption: the multiset of (image, caption) is exactly what was written
    assert Counter((p, c) for p, c, _, _ in data.train) == Counter(
        (r["path"], c) for r in recs for c in r["captions"])
    # relabelling: sorted raw-id order -> 0..C-1
    order = sorted({r["pid"] for r in recs})
    raw_of = {r["path"]: r["pid"] for r in recs}
    for path, _, pid, _ in data.train:
        assert pid == order.index(raw_of[path])
    # image ids: one per image, 0..N-1
    ids_of = {}
    for path, _, _, image_id in data.train:
        assert ids_of.setdefault(path, image_id) == image_id
    assert sorted(ids_of.values()) == list(range(expected["images"]))


def _check_test(data, written, split):
    recs = [r for r in written["records"] if r["split"] == split]
    assert Counter(data.query) == Counter((c, r["pid"]) for r in recs for c in r["captions"])
    assert len(data.query) == written[split]["captions"]
    assert len(data.gallery) == written[split]["images"]  # each image once
    assert sorted((p, pid) for p, pid, _ in data.gallery) == sorted((r["path"], r["pid"]) for r in recs)
    assert [g[2] for g in data.gallery] == list(range(len(data.gallery)))


@pytest.mark.parametrize("cls,key,split", [(CUHKPEDES, "CUHKPEDES", "test"), (CUHKPEDESVal, "CUHKPEDES", "val"),
                                           (ICFGPEDES, "ICFGPEDES", "test"), (RSTPReid, "RSTPReid", "test")])
def test_splits_match_fixture(shared_root, cls, key, split):
    root, written = shared_root
    data = cls(root=root, cfg=get_unipt_cfg())
    _check_train(data, written[key])
    _check_test(data, written[key], split)


def test_registered_in_fastreid():
    for cls in (CUHKPEDES, CUHKPEDESVal, ICFGPEDES, RSTPReid, LUPersonT):
        assert DATASET_REGISTRY.get(cls.__name__) is cls


def test_cuhk_ids_are_relabelled_from_non_contiguous_raw_ids(shared_root):
    root, written = shared_root
    data = CUHKPEDES(root=root)
    raw = sorted({r["pid"] for r in written["CUHKPEDES"]["records"] if r["split"] == "train"})
    assert raw == [3, 7, 11]  # what the fixture promises: not 0..C-1
    assert sorted({pid for _, _, pid, _ in data.train}) == [0, 1, 2]
    assert {pid for _, pid in data.query} <= {r["pid"] for r in written["CUHKPEDES"]["records"]}  # raw kept


def test_rstpreid_reads_img_path(shared_root, tmp_path):
    root, written = shared_root
    with open(written["RSTPReid"]["annotation"]) as f:
        entries = json.load(f)
    assert all("img_path" in e and "file_path" not in e for e in entries)
    # the same entries under "file_path" are rejected, naming the field RSTPReid needs
    bad_root = tmp_path / "root"
    (bad_root / "RSTPReid").mkdir(parents=True)
    os.symlink(written["RSTPReid"]["image_dir"], bad_root / "RSTPReid" / "imgs")
    write_json(str(bad_root / "RSTPReid" / "data_captions.json"),
               [{("file_path" if k == "img_path" else k): v for k, v in e.items()} for e in entries])
    with pytest.raises(DatasetFormatError, match=r"no field 'img_path'"):
        RSTPReid(root=str(bad_root))


def test_luperson_t_each_image_its_own_identity(shared_root):
    root, written = shared_root
    data = LUPersonT(root=root, cfg=get_unipt_cfg())
    w = written["LUPersonT"]
    assert data.num_classes == w["train"]["images"] == 5
    assert len(data.train) == w["train"]["captions"] == 10
    index_of = {r["path"]: i for i, r in enumerate(w["records"])}
    for path, _, pid, image_id in data.train:
        assert pid == image_id == index_of[path]
    assert data.query == [] and data.gallery == []


def test_luperson_t_paths_from_config(tmp_path):
    w = make_luperson_t(str(tmp_path), num_images=3, annotation="meta/pseudo.json", image_dir="pictures")
    cfg = get_unipt_cfg()
    with pytest.raises(FileNotFoundError, match="luperson_t.json"):
        LUPersonT(root=str(tmp_path), cfg=cfg)  # default keys: file not there
    cfg.DATASETS.LUPERSON_T.ANNOTATION = "meta/pseudo.json"
    cfg.DATASETS.LUPERSON_T.IMAGE_DIR = str(tmp_path / "LUPerson-T" / "pictures")  # absolute works too
    data = LUPersonT(root=str(tmp_path), cfg=cfg)
    assert len(data.train) == w["train"]["captions"] == 3


def test_statistics_table_is_logged(shared_root, caplog):
    root, written = shared_root
    data = CUHKPEDES(root=root)
    with caplog.at_level(logging.INFO, logger="unipt_plugin.data.datasets.base"):
        data.show_train()
        data.show_test()
    text = caplog.text
    assert "=> Loaded CUHKPEDES" in text and "# captions" in text
    t, q = written["CUHKPEDES"]["train"], written["CUHKPEDES"]["test"]
    assert data.train_statistics() == ["train", t["ids"], t["images"], t["captions"]]
    assert data.test_statistics() == [["query", q["ids"], "-", q["captions"]], ["gallery", q["ids"], q["images"], "-"]]


def test_duplicate_image_entries_are_one_gallery_image(tmp_path):
    w = make_cuhk_pedes(str(tmp_path), num_ids=2, images_per_id=1)
    with open(w["annotation"]) as f:
        entries = json.load(f)
    test_entry = next(e for e in entries if e["split"] == "test")
    entries.append(dict(test_entry, captions=["An extra caption for the same image."]))
    write_json(w["annotation"], entries)
    data = CUHKPEDES(root=str(tmp_path))
    assert len(data.gallery) == w["test"]["images"]
    assert len(data.query) == w["test"]["captions"] + 1
    # the same image with another id is an error naming both entries
    entries.append(dict(test_entry, id=999))
    write_json(w["annotation"], entries)
    with pytest.raises(DatasetFormatError, match=r"two ids"):
        CUHKPEDES(root=str(tmp_path))


# ---------------------------------------------------------------------- bad input
@pytest.fixture()
def cuhk(tmp_path):
    w = make_cuhk_pedes(str(tmp_path), num_ids=2, images_per_id=2, captions_per_image=2)
    with open(w["annotation"]) as f:
        entries = json.load(f)
    return str(tmp_path), w, entries


def test_missing_root(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere") as e:
        CUHKPEDES(root=missing)
    assert "reid_raw.json" in str(e.value)  # the expected layout is shown


def test_missing_dataset_folder_and_annotation(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ICFG-PEDES.*does not exist") as e:
        ICFGPEDES(root=str(tmp_path))
    assert "ICFG-PEDES.json" in str(e.value)
    (tmp_path / "ICFG-PEDES" / "imgs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"ICFG-PEDES\.json.*does not exist"):
        ICFGPEDES(root=str(tmp_path))


@pytest.mark.parametrize("field", ["captions", "id", "split", "file_path"])
def test_missing_field(cuhk, field):
    root, w, entries = cuhk
    del entries[2][field]
    write_json(w["annotation"], entries)
    with pytest.raises(DatasetFormatError) as e:
        CUHKPEDES(root=root)
    msg = str(e.value)
    assert f"'{field}'" in msg and "entry 2" in msg and w["annotation"] in msg
    assert "expected entries like" in msg


@pytest.mark.parametrize("bad_id", ["7", 3.5, None, True])
def test_non_integer_id(cuhk, bad_id):
    root, w, entries = cuhk
    entries[5]["id"] = bad_id
    write_json(w["annotation"], entries)
    with pytest.raises(DatasetFormatError, match=r"entry 5 .*'id'.*integer"):
        CUHKPEDES(root=root)


@pytest.mark.parametrize("field,value,pattern", [
    ("captions", "one caption, not a list", r"'captions'.*list of strings"),
    ("captions", ["ok", 5], r"'captions\[1\]'.*a string"),
    ("split", "dev", r"'split'.*'dev'.*one of"),
    ("file_path", "", r"'file_path'.*non-empty"),
])
def test_bad_field_values(cuhk, field, value, pattern):
    root, w, entries = cuhk
    entries[1][field] = value
    write_json(w["annotation"], entries)
    with pytest.raises(DatasetFormatError, match=pattern) as e:
        CUHKPEDES(root=root)
    assert "entry 1" in str(e.value)


def test_not_a_list_and_not_an_object(cuhk):
    root, w, entries = cuhk
    write_json(w["annotation"], {"images": entries})
    with pytest.raises(DatasetFormatError, match="holds a JSON dict; expected a list"):
        CUHKPEDES(root=root)
    write_json(w["annotation"], entries[:3] + [["not", "an", "object"]])
    with pytest.raises(DatasetFormatError, match="entry 3 .* is a list"):
        CUHKPEDES(root=root)


def test_malformed_json_names_line_and_column(cuhk):
    root, w, _ = cuhk
    with open(w["annotation"], "w") as f:
        f.write('[\n {"split": "train",\n  "id": 1,, "captions": []}\n]')
    with pytest.raises(DatasetFormatError) as e:
        CUHKPEDES(root=root)
    msg = str(e.value)
    assert w["annotation"] in msg and "line 3, column 11" in msg


def test_missing_images_listed_with_count(cuhk):
    root, w, _ = cuhk
    gone = [r["path"] for r in w["records"] if r["split"] in ("train", "test")][:3]
    for p in gone:
        os.remove(p)
    with pytest.raises(FileNotFoundError) as e:
        CUHKPEDES(root=root)
    msg = str(e.value)
    total = w["train"]["images"] + w["test"]["images"]
    assert f"3 of the {total} images" in msg and "'file_path'" in msg
    assert all(p in msg for p in gone)
    # a missing image of the unused val split does not matter for CUHKPEDES; it does for CUHKPEDESVal
    with pytest.raises(FileNotFoundError):
        CUHKPEDESVal(root=root)


def test_missing_images_list_is_capped(tmp_path):
    w = make_rstpreid(str(tmp_path), num_ids=3, images_per_id=3)
    for r in w["records"]:
        if r["split"] == "train":
            os.remove(r["path"])
    with pytest.raises(FileNotFoundError) as e:
        RSTPReid(root=str(tmp_path))
    msg = str(e.value)
    assert "9 of the 18 images" in msg
    assert sum(r["path"] in msg for r in w["records"]) == 5  # first few only


def test_empty_split_is_an_error(cuhk):
    root, w, entries = cuhk
    write_json(w["annotation"], [e for e in entries if e["split"] != "test"])
    with pytest.raises(DatasetFormatError, match=r"split 'test' .* has no images"):
        CUHKPEDES(root=root)


def test_empty_captions_skipped_with_one_warning(cuhk, caplog):
    root, w, entries = cuhk
    test_entries = [i for i, e in enumerate(entries) if e["split"] == "test"]
    train_entries = [i for i, e in enumerate(entries) if e["split"] == "train"]
    entries[test_entries[0]]["captions"] = ["", "   \n"]  # an image with no caption left
    entries[train_entries[0]]["captions"][1] = " "
    write_json(w["annotation"], entries)
    with caplog.at_level(logging.WARNING):
        data = CUHKPEDES(root=root)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "empty" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 3 empty" in warnings[0].getMessage()
    assert data.num_empty_captions == 3
    assert len(data.train) == w["train"]["captions"] - 1
    assert len(data.query) == w["test"]["captions"] - 2
    assert len(data.gallery) == w["test"]["images"]  # the image stays in the gallery
    assert all(c.strip() for _, c, _, _ in data.train) and all(c.strip() for c, _ in data.query)


# ---------------------------------------------------------------------- packed items = the list of tuples
def _reference_items(entries, image_dir, path_key, split_key, id_key, train_split, test_split):
    """The items as lists of tuples, by the rules of datasets/README.md and docs/bad_inputs.md,
    written independently of the dataset code: paths normalised and joined, an image listed
    twice is one (captions merged), captions stripped, empty and repeated ones dropped, training
    ids relabelled in sorted raw order (LUPerson-T: the image index), images in first-appearance
    order."""
    splits = {}
    for e in entries:
        split = e[split_key] if split_key else train_split
        path = os.path.join(image_dir, os.path.normpath(e[path_key]))
        _, caps = splits.setdefault(split, {}).setdefault(path, (e[id_key] if id_key else None, []))
        for c in e["captions"]:
            c = c.strip()
            if c and c not in caps:
                caps.append(c)
    train, query, gallery = [], [], []
    if train_split:
        with_text = [(p, pid, caps) for p, (pid, caps) in splits[train_split].items() if caps]
        raws = list(range(len(with_text))) if id_key is None else [pid for _, pid, _ in with_text]
        label = {raw: new for new, raw in enumerate(sorted(set(raws)))}
        for image_id, ((p, _, caps), raw) in enumerate(zip(with_text, raws)):
            train.extend((p, c, label[raw], image_id) for c in caps)
    if test_split:
        for image_id, (p, (pid, caps)) in enumerate(splits[test_split].items()):
            gallery.append((p, pid, image_id))
            query.extend((c, pid) for c in caps)
    return train, query, gallery


def _assert_same_items(packed, expected):
    assert len(packed) == len(expected)
    for i, (got, want) in enumerate(zip(packed, expected)):  # item by item, in order
        assert got == want, i
        assert [type(v) for v in got] == [type(v) for v in want], i  # Python str / int, not numpy scalars
    assert [packed[i] for i in range(len(packed))] == expected  # indexing agrees with iteration
    assert packed == expected and list(packed) == expected


def test_items_equal_the_lists_of_tuples(tmp_path):
    w = make_cuhk_pedes(str(tmp_path), num_ids=3, images_per_id=2, captions_per_image=2)
    with open(w["annotation"]) as f:
        entries = json.load(f)
    train_entry = next(e for e in entries if e["split"] == "train")
    test_entry = next(e for e in entries if e["split"] == "test")
    entries += [
        # merged into the same image, one caption repeated
        dict(test_entry, captions=[test_entry["captions"][0], "  Another view, café 東京 🙂.  "]),
        dict(train_entry, file_path="./" + train_entry["file_path"], captions=["", "A new caption."]),  # same image
        dict(train_entry, file_path=train_entry["file_path"].replace("/", "//"), captions=["Third one."]),
    ]
    write_json(w["annotation"], entries)
    data = CUHKPEDES(root=str(tmp_path), cfg=get_unipt_cfg())
    train, query, gallery = _reference_items(entries, w["image_dir"], "file_path", "split", "id", "train", "test")
    assert len(train) == w["train"]["captions"] + 2 and len(query) == w["test"]["captions"] + 1  # the merges happened
    _assert_same_items(data.train, train)
    _assert_same_items(data.query, query)
    _assert_same_items(data.gallery, gallery)


def test_luperson_t_items_equal_the_list_of_tuples(tmp_path):
    w = make_luperson_t(str(tmp_path), num_images=9, captions_per_image=2)
    with open(w["annotation"]) as f:
        entries = json.load(f)
    entries[4]["captions"] = [" ", ""]  # an image without text: left out of training, ids stay contiguous
    write_json(w["annotation"], entries)
    data = LUPersonT(root=str(tmp_path), cfg=get_unipt_cfg())
    train, _, _ = _reference_items(entries, w["image_dir"], "file_path", None, None, "train", None)
    _assert_same_items(data.train, train)
    assert data.num_classes == data.num_train_images == 8


# ---------------------------------------------------------------------- DATASETS.VERIFY_IMAGES
@pytest.mark.parametrize("value", ["FULL", "none", "", True])
def test_verify_images_refuses_other_values(cuhk, value):
    root, _, _ = cuhk
    cfg = get_unipt_cfg()
    cfg.DATASETS.ROOT = root
    if isinstance(value, bool):  # not a config value (yacs keeps the key's type): through the argument
        with pytest.raises(ValueError, match="DATASETS.VERIFY_IMAGES = 'bogus'"):
            CUHKPEDES(root=root, verify_images="bogus")
        return
    cfg.DATASETS.VERIFY_IMAGES = value
    with pytest.raises(ValueError, match=rf"DATASETS.VERIFY_IMAGES = {value!r}: expected one of \['full', 'lazy'\]"):
        build_dataset(cfg, "CUHKPEDES")


def test_lazy_verification_finds_a_missing_image_when_it_is_read(cuhk):
    root, w, _ = cuhk
    gone = next(r["path"] for r in w["records"] if r["split"] == "train")
    os.remove(gone)
    cfg = get_unipt_cfg()
    with pytest.raises(FileNotFoundError, match="are missing"):
        CUHKPEDES(root=root, cfg=cfg)  # "full", the default
    cfg.DATASETS.VERIFY_IMAGES = "lazy"
    data = CUHKPEDES(root=root, cfg=cfg)
    assert len(data.train) == w["train"]["captions"]  # built, the missing image listed
    train_set = T2ITrainSet(data.train, lambda img: img, data.num_classes)
    index = next(i for i, item in enumerate(data.train) if item[0] == gone)
    with pytest.raises(FileNotFoundError) as e:
        train_set[index]
    assert gone in str(e.value) and "DATASETS.VERIFY_IMAGES" in str(e.value) and '"lazy"' in str(e.value)
    assert CUHKPEDES(root=root, verify_images=False).train == data.train  # the argument overrides the config


def test_full_verification_lists_each_folder_once_and_stats_no_image(tmp_path, monkeypatch):
    w = make_cuhk_pedes(str(tmp_path), num_ids=4, images_per_id=3)
    root = str(tmp_path)
    images = [r["path"] for r in w["records"] if r["split"] in ("train", "test")]
    # a symbolic link to a file counts as present; a broken one, a folder and a missing folder do not
    target = images[0] + ".real.png"
    os.replace(images[0], target)
    os.symlink(target, images[0])
    os.remove(images[1])
    os.symlink(images[1] + ".nowhere", images[1])
    os.remove(images[2])
    os.mkdir(images[2])
    folders = sorted({os.path.dirname(p) for p in images})
    calls = {"stat": 0, "scandir": []}
    real_stat, real_scandir = os.stat, os.scandir

    def counting_stat(*a, **k):
        calls["stat"] += 1
        return real_stat(*a, **k)

    def counting_scandir(path="."):
        calls["scandir"].append(os.path.normpath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "stat", counting_stat)
    monkeypatch.setattr(os, "scandir", counting_scandir)
    with pytest.raises(FileNotFoundError) as e:
        CUHKPEDES(root=root)
    msg = str(e.value)
    assert f"2 of the {len(images)} images" in msg and images[1] in msg and images[2] in msg
    assert images[0] not in msg.replace(images[0] + ".real", "")
    assert sorted(calls["scandir"]) == folders  # each folder listed once
    assert calls["stat"] <= 6 < len(images) == 24  # the root / folder / annotation checks, none per image


# ---------------------------------------------------------------------- packed (Arrow) LUPerson-T
@pytest.fixture()
def packed(tmp_path):
    """A LUPerson-T set in both layouts: (root, what was written, the JSON cfg, the Arrow cfg)."""
    w = make_luperson_t(str(tmp_path), num_images=11, captions_per_image=2, size=(24, 12))
    with open(w["annotation"]) as f:
        entries = json.load(f)
    entries[3]["captions"] = ["  padded caption  ", "", "  padded caption"]  # stripped, one empty, one repeat
    entries.append(dict(entries[5], captions=["Listed again."]))  # merged into image 5
    write_json(w["annotation"], entries)
    output = str(tmp_path / "LUPerson-T" / "LUPerson_train.arrow")
    result = pack_luperson_t(w["annotation"], w["image_dir"], output, rows_per_part=4, batch_bytes=2000,
                             progress=False)
    assert result.num_images == 11 and os.path.isfile(output) and not os.path.exists(output + ".parts")
    json_cfg, arrow_cfg = get_unipt_cfg(), get_unipt_cfg()
    arrow_cfg.DATASETS.LUPERSON_T.ANNOTATION = "LUPerson_train.arrow"
    return str(tmp_path), w, json_cfg, arrow_cfg, output


def test_arrow_and_json_layouts_give_the_same_items_and_images(packed):
    root, w, json_cfg, arrow_cfg, output = packed
    from_json = LUPersonT(root=root, cfg=json_cfg)
    from_arrow = LUPersonT(root=root, cfg=arrow_cfg)
    assert from_arrow.packed and not from_json.packed
    # image 3 keeps one of its two captions, image 5 gains one
    assert len(from_arrow.train) == len(from_json.train) == w["train"]["captions"] - 1 + 1
    row_of = {}
    for (jp, jc, jpid, jimg), (ap, ac, apid, aimg) in zip(from_json.train, from_arrow.train):
        assert (jc, jpid, jimg) == (ac, apid, aimg)
        assert ap == f"arrow:{output}#{aimg}"  # row = image id: one row per image, in file order
        row_of[ap] = jp
    assert (from_arrow.num_classes, from_arrow.num_train_images) == (from_json.num_classes, from_json.num_train_images)
    assert len(row_of) == 11
    tf = build_image_transform(json_cfg, is_train=False)
    for ref, path in row_of.items():
        a, b = read_image(ref), read_image(path)
        assert a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))
        assert torch.equal(tf(a), tf(b))
    with open(row_of[f"arrow:{output}#0"], "rb") as f:
        assert read_packed_image(f"arrow:{output}#0") == f.read()  # the file's bytes, as they were


def test_arrow_layout_through_the_train_loader_with_workers(packed):
    root, _, json_cfg, arrow_cfg, _ = packed
    batches = {}
    for name, cfg in (("json", json_cfg), ("arrow", arrow_cfg)):
        cfg.DATASETS.ROOT = root
        cfg.DATASETS.NAMES = ("LUPersonT",)
        cfg.INPUT.SIZE_TRAIN = [16, 8]
        cfg.INPUT.TEXT.MAX_LENGTH = 16
        cfg.SOLVER.IMS_PER_BATCH = 4
        cfg.DATALOADER.NUM_WORKERS = 2  # each worker opens the packed file itself
        batches[name] = list(itertools.islice(iter(build_t2i_train_loader(cfg)), 3))
    for a, b in zip(batches["json"], batches["arrow"]):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_packed_verification_and_read_errors(packed, tmp_path):
    import pyarrow as pa

    root, _, _, arrow_cfg, output = packed
    table = pa.ipc.open_file(pa.memory_map(output)).read_all()

    def write(t, name="bad.arrow"):
        path = str(tmp_path / "LUPerson-T" / name)
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, t.schema) as writer:
            writer.write_table(t)
        arrow_cfg.DATASETS.LUPERSON_T.ANNOTATION = name
        return path

    images = table.column("image").to_pylist()
    images[2] = b""
    bad = write(table.set_column(0, "image", pa.array(images, pa.binary())))
    with pytest.raises(ImageReadError, match=rf"1 of the 11 images of {re.escape(bad)} .*rows \[2\]"):
        LUPersonT(root=root, cfg=arrow_cfg)  # "full": every row has image bytes
    arrow_cfg.DATASETS.VERIFY_IMAGES = "lazy"
    data = LUPersonT(root=root, cfg=arrow_cfg)
    with pytest.raises(ImageReadError, match=rf"row 2 of packed image file {re.escape(bad)} has an empty image"):
        read_image(next(p for p, _, _, img in data.train if img == 2))
    with pytest.raises(ImageReadError, match=r"row 11 of packed image file .* does not exist \(it has 11 rows\)"):
        read_image(f"arrow:{bad}#11")
    with pytest.raises(FileNotFoundError, match="packed image file not found: /no/such.arrow"):
        read_image("arrow:/no/such.arrow#0")


@pytest.mark.parametrize("change,pattern", [
    ("drop_split", r"no column 'split'"),
    ("int_caption", r"column 'caption' is int64"),
    ("null_caption", r"column 'caption' is null in rows \[1\]"),
    ("repeated_id", r"image_id 3 is in rows 3 and 7"),
    ("unknown_split", r"row 4: column 'split' is 'dev', not one of"),
    ("not_arrow", r"not an Arrow IPC file"),
])
def test_bad_packed_files_are_refused(packed, tmp_path, change, pattern):
    import pyarrow as pa

    root, _, _, arrow_cfg, output = packed
    table = pa.ipc.open_file(pa.memory_map(output)).read_all()
    path = str(tmp_path / "LUPerson-T" / "bad.arrow")
    arrow_cfg.DATASETS.LUPERSON_T.ANNOTATION = "bad.arrow"
    n = table.num_rows
    if change == "drop_split":
        table = table.drop_columns(["split"])
    elif change == "int_caption":
        table = table.set_column(1, "caption", pa.array(range(n), pa.int64()))
    elif change == "null_caption":
        caps = table.column("caption").to_pylist()
        caps[1] = None
        table = table.set_column(1, "caption", pa.array(caps, pa.list_(pa.string())))
    elif change == "repeated_id":
        ids = list(range(n))
        ids[7] = 3
        table = table.set_column(2, "image_id", pa.array(ids, pa.int64()))
    elif change == "unknown_split":
        table = table.set_column(3, "split", pa.array(["train"] * 4 + ["dev"] + ["train"] * (n - 5)))
    if change == "not_arrow":
        with open(path, "w") as f:
            f.write('[{"file_path": "a.jpg"}]')
    else:
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    with pytest.raises(DatasetFormatError, match=pattern) as e:
        LUPersonT(root=root, cfg=arrow_cfg)
    assert path in str(e.value) and "tools/pack_dataset.py" in str(e.value)


def test_pack_resumes_after_an_interruption(tmp_path, monkeypatch):
    from unipt_plugin.data.datasets import arrow_layout

    w = make_luperson_t(str(tmp_path), num_images=10, captions_per_image=1, size=(24, 12))
    whole = str(tmp_path / "whole.arrow")
    pack_luperson_t(w["annotation"], w["image_dir"], whole, rows_per_part=3, progress=False)
    output = str(tmp_path / "resumed.arrow")
    real_read, reads = arrow_layout._read_file, []

    def interrupted(path, decode_check):
        reads.append(path)
        if len(reads) == 8:  # in the third part
            raise KeyboardInterrupt
        return real_read(path, decode_check)

    monkeypatch.setattr(arrow_layout, "_read_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack_luperson_t(w["annotation"], w["image_dir"], output, rows_per_part=3, progress=False)
    assert not os.path.exists(output)  # nothing half-written at the output
    parts = sorted(os.listdir(output + ".parts"))
    assert parts == ["manifest.json", "part-00000.arrow", "part-00001.arrow"]  # no temporary left behind
    monkeypatch.setattr(arrow_layout, "_read_file", real_read)
    result = pack_luperson_t(w["annotation"], w["image_dir"], output, rows_per_part=3, progress=False)
    assert result.parts_reused == 2 and result.num_images == 10
    import pyarrow as pa

    assert pa.ipc.open_file(pa.memory_map(output)).read_all().equals(pa.ipc.open_file(pa.memory_map(whole)).read_all())
    # parts of a pack of other inputs are not reused
    os.makedirs(output + ".parts")
    write_json(os.path.join(output + ".parts", "manifest.json"), {"version": 0})
    assert pack_luperson_t(w["annotation"], w["image_dir"], output, rows_per_part=3, progress=False).parts_reused == 0


def test_pack_names_a_bad_image(tmp_path):
    w = make_luperson_t(str(tmp_path), num_images=4)
    empty = w["records"][2]["path"]
    open(empty, "wb").close()
    with pytest.raises(ImageReadError, match=rf"image file is empty \(0 bytes\): {re.escape(empty)}"):
        pack_luperson_t(w["annotation"], w["image_dir"], str(tmp_path / "out.arrow"), progress=False)
    os.remove(empty)
    with pytest.raises(FileNotFoundError, match=re.escape(empty)):
        pack_luperson_t(w["annotation"], w["image_dir"], str(tmp_path / "out.arrow"), progress=False)
    with pytest.raises(ValueError, match=r"must end with '\.arrow'"):
        pack_luperson_t(w["annotation"], w["image_dir"], str(tmp_path / "out.feather"), progress=False)


def test_a_long_construction_logs_its_progress(cuhk, monkeypatch, caplog, capsys):
    from unipt_plugin.data.datasets import base

    monkeypatch.setattr(base, "_PROGRESS_DELAY_S", 0.0)  # as if every step took long
    root, w, _ = cuhk
    with caplog.at_level(logging.INFO, logger="unipt_plugin.data.datasets.base"):
        CUHKPEDES(root=root)
    messages = [r.getMessage() for r in caplog.records]
    total = sum(w[s]["images"] for s in ("train", "val", "test"))
    assert any(m.startswith(f"CUHKPEDES: parsing reid_raw.json: 0 / {total} entries") for m in messages)
    assert any(m.startswith("CUHKPEDES: checking images: 0 / ") and "folders" in m for m in messages)
    assert any(f"{w['train']['captions']} training items" in m and "DATASETS.VERIFY_IMAGES = 'full'" in m
               for m in messages)
    assert capsys.readouterr().out == ""  # logged (stderr is no terminal here), never printed


def test_a_packed_file_with_captions_to_clean_gives_the_json_items(packed, tmp_path, caplog):
    """A file not written by the packer: raw captions (padded, empty, repeated), a "val" row, rows
    of several record batches; cleaned as the JSON layout cleans them."""
    import pyarrow as pa

    root, w, json_cfg, arrow_cfg, _ = packed
    with open(w["annotation"]) as f:
        entries = json.load(f)
    merged = {}  # one row per image, raw captions in file order (what the JSON lists for it)
    for e in entries:
        merged.setdefault(e["file_path"], []).extend(e["captions"])
    rels = list(merged)
    rows = {"image": [], "caption": [], "image_id": [], "split": []}
    for i, rel in enumerate(rels):
        if i == 2:  # a row of another split before image 2: not used
            rows["image"].append(b"not an image")
            rows["caption"].append(["Validation caption."])
            rows["image_id"].append(1000)
            rows["split"].append("val")
        with open(os.path.join(w["image_dir"], rel), "rb") as f:
            rows["image"].append(f.read())
        rows["caption"].append(merged[rel] + ([" trailing space ", "\u2003"] if i == 6 else []))
        rows["image_id"].append(50 - i)  # any unique ids
        rows["split"].append("train")
    schema = pa.schema([("image", pa.large_binary()), ("caption", pa.list_(pa.large_string())),
                        ("image_id", pa.int32()), ("split", pa.string())])
    path = str(tmp_path / "LUPerson-T" / "raw.arrow")
    table = pa.Table.from_pydict(rows, schema=schema)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for batch in table.to_batches(max_chunksize=4):
            writer.write_batch(batch)
    arrow_cfg.DATASETS.LUPERSON_T.ANNOTATION = "raw.arrow"
    for e in entries:
        if e["file_path"] == rels[6]:
            e["captions"] = e["captions"] + [" trailing space ", "\u2003"]
    write_json(w["annotation"], entries)
    with caplog.at_level(logging.WARNING):
        from_json = LUPersonT(root=root, cfg=json_cfg)
        from_arrow = LUPersonT(root=root, cfg=arrow_cfg)
    assert [item[1:] for item in from_arrow.train] == [item[1:] for item in from_json.train]
    assert (from_arrow.num_empty_captions, from_arrow.num_repeated_captions) == \
        (from_json.num_empty_captions, from_json.num_repeated_captions) == (2, 1)
    assert "trailing space" in [c for _, c, _, _ in from_arrow.train]
    for (jp, _, _, img), (ap, _, _, _) in zip(from_json.train, from_arrow.train):
        row = img + (img >= 2)  # the "val" row sits before image 2
        assert ap == f"arrow:{path}#{row}"
        assert np.array_equal(np.asarray(read_image(ap)), np.asarray(read_image(jp)))
    assert any("LUPersonT: skipped 2 empty" in r.getMessage() and "(rows [4, 7])" in r.getMessage()  # file rows
               for r in caplog.records)
