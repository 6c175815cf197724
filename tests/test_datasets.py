"""Text-image datasets parsed from raw-format fixture files (tests/raw_fixtures.py)."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter

import pytest
from fastreid.data.datasets import DATASET_REGISTRY

from raw_fixtures import make_cuhk_pedes, make_icfg_pedes, make_luperson_t, make_rstpreid, write_json
from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.data.datasets import (CUHKPEDES, CUHKPEDESVal, ICFGPEDES, DatasetFormatError, LUPersonT,
                                        RSTPReid)


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
