"""One test per row of docs/bad_inputs.md: each bad input is handled correctly, or refused with
an error naming the file / field / value and what was expected.

Every test goes through the real entry point (dataset classes and ``build_dataset``,
``read_image``, the tokenizer, ``setup_cfg``, ``load_vocabulary``, ``UniPTCheckpointer``) on
small files written here or by tests/raw_fixtures.py. Expected values are computed by hand or
by an independent implementation (transformers' BertTokenizer, open_clip), never by the code
under test.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import re
import struct
import zlib

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from raw_fixtures import make_cuhk_pedes, make_luperson_t, write_json
from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.data.build import build_dataset, build_t2i_test_loader
from unipt_plugin.data.datasets import CUHKPEDES, DatasetFormatError, LUPersonT
from unipt_plugin.data.tokenizer import build_tokenizer, default_vocab_dir
from unipt_plugin.data.transforms import ImageReadError, build_image_transform, read_image

DATASET_LOGGER = "unipt_plugin.data.datasets.base"


# ---------------------------------------------------------------------- helpers
@pytest.fixture()
def cuhk(tmp_path):
    """A small CUHK-PEDES root: (root, what was written, the parsed annotation entries)."""
    w = make_cuhk_pedes(str(tmp_path), num_ids=2, images_per_id=2, captions_per_image=2)
    with open(w["annotation"], encoding="utf-8") as f:
        entries = json.load(f)
    return str(tmp_path), w, entries


def _index(entries, split):
    return [i for i, e in enumerate(entries) if e["split"] == split]


def _cfg(root: str = ""):
    cfg = get_unipt_cfg()
    cfg.DATASETS.ROOT = root
    cfg.INPUT.SIZE_TEST = [32, 16]
    cfg.INPUT.TEXT.MAX_LENGTH = 16
    cfg.TEST.IMS_PER_BATCH = 4
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


def _png16(path, arr: np.ndarray, color_type: int) -> str:
    """Write a 16-bit PNG by hand (color_type 0 = gray, 2 = RGB): big-endian samples, filter 0."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return str(path)


# ---------------------------------------------------------------------- missing dataset root
def test_missing_dataset_root(tmp_path):
    missing = str(tmp_path / "no_such_root")
    with pytest.raises(FileNotFoundError, match=re.escape(repr(missing)) + r" \(DATASETS.ROOT\) does not exist") as e:
        build_dataset(_cfg(missing), "CUHKPEDES")
    assert "<DATASETS.ROOT>/CUHK-PEDES/reid_raw.json" in str(e.value)  # the expected layout


# ---------------------------------------------------------------------- malformed JSON
@pytest.mark.parametrize("kind", ["double_comma", "truncated", "zero_bytes", "latin1"])
def test_malformed_json(cuhk, kind):
    root, w, entries = cuhk
    ann = w["annotation"]
    if kind == "double_comma":
        text = '[\n {"split": "train",\n  "id": 1,, "captions": []}\n]'
        open(ann, "w", encoding="utf-8").write(text)
        where = r"at line 3, column 11"  # the second comma: line 3 is '  "id": 1,, ...', column 11
    elif kind == "truncated":
        text = json.dumps(entries, indent=1)
        cut = text[: text.index("},\n", len(text) // 2) + 2]  # ends just after the comma between two entries
        open(ann, "w", encoding="utf-8").write(cut)
        lines = cut.split("\n")
        where = rf"at line {len(lines)}, column {len(lines[-1]) + 1}: Expecting value"  # a value after the comma
    elif kind == "zero_bytes":
        open(ann, "wb").close()
        where = r"at line 1, column 1"
    else:
        entries[0]["captions"].append("Une femme âgée.")
        open(ann, "wb").write(json.dumps(entries, ensure_ascii=False).encode("latin-1"))  # not UTF-8
        where = r"is not UTF-8 text"
    with pytest.raises(DatasetFormatError, match=re.escape(ann) + r"\b.*" + where):
        CUHKPEDES(root=root)


def test_json_with_utf8_byte_order_mark_is_read(cuhk):
    root, w, entries = cuhk
    with open(w["annotation"], "wb") as f:
        f.write(b"\xef\xbb\xbf" + json.dumps(entries).encode("utf-8"))  # as Windows editors save it
    data = CUHKPEDES(root=root)
    assert len(data.train) == w["train"]["captions"] and len(data.gallery) == w["test"]["images"]


# ---------------------------------------------------------------------- entry missing a field
@pytest.mark.parametrize("field", ["split", "captions", "file_path", "id"])
def test_entry_missing_field(cuhk, field):
    root, w, entries = cuhk
    del entries[3][field]
    write_json(w["annotation"], entries)
    pattern = rf"entry 3 of {re.escape(w['annotation'])} has no field '{field}' \(its keys: .*expected entries like"
    with pytest.raises(DatasetFormatError, match=pattern):
        CUHKPEDES(root=root)


def test_entry_missing_field_luperson_captions(tmp_path):
    w = make_luperson_t(str(tmp_path), num_images=3)
    entries = json.load(open(w["annotation"]))
    entries[1] = {"file_path": entries[1]["file_path"], "caption": "singular key"}
    write_json(w["annotation"], entries)
    with pytest.raises(DatasetFormatError, match=r"entry 1 of .*luperson_t\.json has no field 'captions'"):
        LUPersonT(root=str(tmp_path))


# ---------------------------------------------------------------------- missing image
def test_missing_image(cuhk):
    root, w, entries = cuhk
    gone = next(r["path"] for r in w["records"] if r["split"] == "test")
    os.remove(gone)
    with pytest.raises(FileNotFoundError, match=r"1 of the 8 images listed in .*reid_raw\.json \(field 'file_path'\) "
                                                r"are missing under .*imgs") as e:
        CUHKPEDES(root=root)
    assert gone in str(e.value)
    # an image deleted after the dataset was read is named by the reader
    with pytest.raises(FileNotFoundError, match=f"image file not found: {re.escape(gone)}"):
        read_image(gone)


# ---------------------------------------------------------------------- truncated or corrupt image
def _corrupt(tmp_path, kind: str) -> str:
    arr = np.random.default_rng(1).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    ext = "jpg" if kind == "truncated_jpeg" else "png"
    good = tmp_path / f"good.{ext}"
    Image.fromarray(arr).save(good)
    data = good.read_bytes()
    bad = tmp_path / f"{kind}.{ext}"
    if kind in ("truncated_jpeg", "truncated_png"):
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        bad.write_bytes(b"this is a text file, not an image")
    else:  # one flipped byte inside the PNG's compressed pixel data
        flipped = bytearray(data)
        flipped[200] ^= 0xFF
        bad.write_bytes(bytes(flipped))
    return str(bad)


@pytest.mark.parametrize("kind", ["truncated_jpeg", "truncated_png", "garbage", "corrupt_png_data"])
def test_truncated_or_corrupt_image(tmp_path, kind):
    bad = _corrupt(tmp_path, kind)
    with pytest.raises(ImageReadError, match=f"cannot decode image {re.escape(bad)}: "):
        read_image(bad)


def test_png_missing_only_its_end_chunk_is_read(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, (8, 4, 3), dtype=np.uint8)
    good = tmp_path / "good.png"
    Image.fromarray(arr).save(good)
    data = good.read_bytes()
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the 12-byte end chunk
    (tmp_path / "no_end.png").write_bytes(data[:-12])
    assert np.array_equal(np.asarray(read_image(str(tmp_path / "no_end.png"))), arr)  # every pixel is there


def test_corrupt_image_through_the_test_loader(cuhk):
    root, w, _ = cuhk
    victim = [r["path"] for r in w["records"] if r["split"] == "test"][1]
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[: len(data) // 2])
    loader, _ = build_t2i_test_loader(_cfg(root), "CUHKPEDES")
    with pytest.raises(ImageReadError, match=f"cannot decode image {re.escape(victim)}"):
        for _ in loader:
            pass


# ---------------------------------------------------------------------- zero-byte image
def test_zero_byte_image(cuhk):
    root, w, _ = cuhk
    empty = next(r["path"] for r in w["records"] if r["split"] == "test")
    open(empty, "wb").close()
    # the dataset is built: telling an empty file from a good one takes one stat per image, which
    # DATASETS.VERIFY_IMAGES = "full" avoids (it lists each folder once); the read refuses it
    data = CUHKPEDES(root=root)
    assert empty in [g[0] for g in data.gallery]
    loader, _ = build_t2i_test_loader(_cfg(root), "CUHKPEDES")
    with pytest.raises(ImageReadError, match=rf"image file is empty \(0 bytes\): {re.escape(empty)}"):
        for _ in loader:
            pass
    with pytest.raises(ImageReadError, match=rf"image file is empty \(0 bytes\): {re.escape(empty)}"):
        read_image(empty)


# ---------------------------------------------------------------------- grayscale, RGBA, 16-bit
def test_grayscale_image(tmp_path):
    gray = np.array([[0, 1, 127], [128, 254, 255]], dtype=np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, "L").save(path)
    img = read_image(str(path))
    assert img.mode == "RGB" and img.size == (3, 2)
    arr = np.asarray(img)
    for c in range(3):
        assert arr[..., c].tolist() == [[0, 1, 127], [128, 254, 255]]
    cfg = _cfg()
    cfg.INPUT.SIZE_TEST = [2, 3]  # same size: the transform only converts
    t = build_image_transform(cfg, is_train=False)(img)
    assert t.shape == (3, 2, 3) and t[0].tolist() == t[1].tolist() == t[2].tolist() == gray.astype(float).tolist()


def test_rgba_image_alpha_dropped(tmp_path):
    rgba = np.array([[[10, 20, 30, 255], [200, 100, 50, 0]],
                     [[1, 2, 3, 128], [255, 255, 255, 0]]], dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    # documented: colour values kept, alpha dropped (no compositing onto a background)
    assert np.asarray(read_image(str(path))).tolist() == [[[10, 20, 30], [200, 100, 50]], [[1, 2, 3], [255, 255, 255]]]
    la = np.array([[[40, 0], [90, 255]]], dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.asarray(read_image(str(tmp_path / "la.png"))).tolist() == [[[40, 40, 40], [90, 90, 90]]]
    pal = Image.fromarray(np.array([[0, 1, 1]], dtype=np.uint8), "P")
    pal.putpalette([250, 10, 20, 5, 6, 7] + [0] * 762)
    pal.save(tmp_path / "p.png", transparency=0)  # palette entry 0 fully transparent
    assert Image.open(tmp_path / "p.png").info.get("transparency") == 0
    assert np.asarray(read_image(str(tmp_path / "p.png"))).tolist() == [[[250, 10, 20], [5, 6, 7], [5, 6, 7]]]


def test_16bit_grayscale_image(tmp_path):
    values = np.array([[0, 128, 129, 385, 386, 32896, 65406, 65535]], dtype=np.uint16)
    path = _png16(tmp_path / "g16.png", values, color_type=0)
    assert Image.open(path).mode == "I;16"
    # by hand: v * 255 / 65535 = v / 257, rounded: 128/257 = 0.498, 129/257 = 0.502,
    # 385/257 = 1.498, 386/257 = 1.502, 32896/257 = 128, 65406/257 = 254.498
    expected = [0, 0, 1, 1, 2, 128, 254, 255]
    arr = np.asarray(read_image(path))
    assert arr.shape == (1, 8, 3)
    for c in range(3):
        assert arr[0, :, c].tolist() == expected


def test_16bit_colour_image(tmp_path):
    values = np.array([[[0, 65535, 1000], [255, 256, 511], [512, 32895, 65280]]], dtype=np.uint16)
    path = _png16(tmp_path / "rgb16.png", values, color_type=2)
    # Pillow decodes 16-bit-per-channel colour PNGs to 8 bits by keeping the high byte: v // 256
    # (at most one level below round(v / 257); e.g. 1000 -> 3, not 4)
    assert np.asarray(read_image(path)).tolist() == [[[0, 255, 3], [0, 1, 1], [2, 128, 255]]]


# ---------------------------------------------------------------------- captions
@pytest.fixture(scope="module")
def bert16():
    cfg = get_unipt_cfg()
    cfg.INPUT.TEXT.MAX_LENGTH = 16
    return build_tokenizer(cfg)


def test_empty_caption(cuhk, bert16, caplog):
    root, w, entries = cuhk
    i = _index(entries, "train")[0]
    keep = entries[i]["captions"][0]
    entries[i]["captions"] = ["", keep, " \t\n"]
    write_json(w["annotation"], entries)
    with caplog.at_level(logging.WARNING, logger=DATASET_LOGGER):
        data = CUHKPEDES(root=root)
    warns = [r.getMessage() for r in caplog.records if "empty" in r.getMessage()]
    assert len(warns) == 1 and f"skipped 2 empty or whitespace-only caption(s) in {w['annotation']} (entries [{i}])" \
        in warns[0]
    path = os.path.join(w["image_dir"], entries[i]["file_path"])
    assert sorted(c for p, c, _, _ in data.train if p == path) == [keep]
    assert len(data.train) == w["train"]["captions"] - 1
    # the tokenizer itself turns "" into [CLS] [SEP] and padding (never an error), padded to 8
    # (INPUT.TEXT.PADDING "longest": 2 tokens rounded up to PAD_MULTIPLE)
    out = bert16([""])
    assert out["input_ids"][0].tolist() == [101, 102] + [0] * 6
    assert out["attention_mask"][0].tolist() == [1, 1] + [0] * 6


def test_1000_word_caption(cuhk, bert16, caplog):
    from transformers import BertTokenizerFast

    root, w, entries = cuhk
    words = [("walking", "woman", "red", "backpack", "umbrella")[k % 5] for k in range(1000)]
    long = " ".join(words)
    i = _index(entries, "train")[0]
    entries[i]["captions"][0] = long
    write_json(w["annotation"], entries)
    data = CUHKPEDES(root=root)
    assert long in [c for _, c, _, _ in data.train]  # stored whole; truncation is the tokenizer's job
    before = bert16.num_truncated
    with caplog.at_level(logging.WARNING, logger="unipt_plugin.data.tokenizer"):
        out = bert16([long, "a man."])
    ids, mask = out["input_ids"][0].tolist(), out["attention_mask"][0].tolist()
    vocab = BertTokenizerFast.from_pretrained(default_vocab_dir(), local_files_only=True)
    word_ids = vocab.convert_tokens_to_ids(words[:14])  # each of these words is one WordPiece
    assert ids == [101] + word_ids + [102]  # MAX_LENGTH 16: [CLS], the first 14 words, [SEP] last
    assert mask == [1] * 16
    assert bert16.num_truncated == before + 1
    assert any("caption of 1002 tokens truncated to INPUT.TEXT.MAX_LENGTH=16" in r.getMessage() for r in caplog.records)


UNICODE = ["Une femme âgée porte un manteau bordeaux, très élégante.",
           "ÉCOLE naïve façade İstanbul",
           "一个穿着红色外套的女人，背着黑色的包。",
           "A man 👨‍👩‍👧 with a 🎒 backpack 😀 and a ❤️ shirt",
           "Café Noël 東京 🙂"]


def test_captions_with_accents_cjk_and_emoji(cuhk, caplog):
    import open_clip
    from transformers import BertTokenizer, BertTokenizerFast

    root, w, entries = cuhk
    i = _index(entries, "test")[0]
    entries[i]["captions"] = UNICODE
    with open(w["annotation"], "w", encoding="utf-8") as f:
        json.dump(entries, f, ensure_ascii=False)  # raw UTF-8, not \\u escapes
    data = CUHKPEDES(root=root)
    others = [c for k, e in enumerate(entries) if e["split"] == "test" and k != i for c in e["captions"]]
    assert sorted(c for c, _ in data.query) == sorted(UNICODE + others)  # read back exactly

    cfg = get_unipt_cfg()
    cfg.INPUT.TEXT.MAX_LENGTH = 40
    cfg.INPUT.TEXT.PADDING = "max_length"  # compared with transformers' / open_clip's fixed-width padding
    ours = build_tokenizer(cfg)(UNICODE)
    for cls in (BertTokenizer, BertTokenizerFast):  # the pure-Python and the Rust implementation
        ref = cls.from_pretrained(default_vocab_dir(), local_files_only=True)(
            UNICODE, padding="max_length", truncation=True, max_length=40, return_tensors="pt")
        assert torch.equal(ours["input_ids"], ref["input_ids"]), cls.__name__
        assert torch.equal(ours["attention_mask"], ref["attention_mask"])
    slow = BertTokenizer.from_pretrained(default_vocab_dir(), local_files_only=True)
    n = int(ours["attention_mask"][4].sum())
    # by hand: lower-cased, accents stripped, each CJK character its own token, emoji unknown
    assert slow.convert_ids_to_tokens(ours["input_ids"][4, :n].tolist()) == \
        ["[CLS]", "cafe", "noel", "東", "京", "[UNK]", "[SEP]"]

    cfg.INPUT.TEXT.TOKENIZER = "clip"
    with caplog.at_level(logging.ERROR):
        clip = build_tokenizer(cfg)(UNICODE)
    assert torch.equal(clip["input_ids"], open_clip.tokenize(UNICODE, context_length=40).long())


# ---------------------------------------------------------------------- duplicate file paths
def test_duplicate_path_same_split_merges_captions(cuhk):
    root, w, entries = cuhk
    e = entries[_index(entries, "test")[0]]
    entries.append(dict(e, captions=["An extra caption for the same image."]))
    entries.append(dict(e, file_path="./" + e["file_path"].replace("/", "/./"), captions=["A third caption."]))
    write_json(w["annotation"], entries)
    data = CUHKPEDES(root=root)
    path = os.path.join(w["image_dir"], e["file_path"])
    assert len(data.gallery) == w["test"]["images"]  # still one gallery image
    assert [g[0] for g in data.gallery].count(path) == 1
    same_id = [c for ee in entries[:-2] if ee["split"] == "test" and ee["id"] == e["id"] for c in ee["captions"]]
    assert sorted(c for c, pid in data.query if pid == e["id"]) == \
        sorted(same_id + ["An extra caption for the same image.", "A third caption."])
    assert len(data.query) == w["test"]["captions"] + 2


def test_duplicate_entry_verbatim_keeps_each_caption_once(cuhk, caplog):
    root, w, entries = cuhk
    j = _index(entries, "train")[0]
    entries.append(copy.deepcopy(entries[j]))
    write_json(w["annotation"], entries)
    with caplog.at_level(logging.WARNING, logger=DATASET_LOGGER):
        data = CUHKPEDES(root=root)
    assert len(data.train) == w["train"]["captions"]  # not + 2
    assert data.num_repeated_captions == 2
    assert any(f"skipped 2 caption(s) repeated verbatim for the same image in {w['annotation']} "
               f"(entries [{len(entries) - 1}])" in r.getMessage() for r in caplog.records)


def test_duplicate_path_with_two_ids_is_refused(cuhk):
    root, w, entries = cuhk
    k = _index(entries, "test")[1]
    entries.append(dict(entries[k], id=999))
    write_json(w["annotation"], entries)
    rel = entries[k]["file_path"]
    with pytest.raises(DatasetFormatError, match=rf"image {re.escape(repr(rel))} appears in entries {k} and "
                                                 rf"{len(entries) - 1} of .*reid_raw\.json with two ids "
                                                 rf"\({entries[k]['id']} and 999\); expected one id per image"):
        CUHKPEDES(root=root)


def test_duplicate_path_in_train_and_test_is_kept_with_a_warning(cuhk, caplog):
    root, w, entries = cuhk
    e = entries[_index(entries, "train")[0]]
    entries.append(dict(e, split="test"))
    write_json(w["annotation"], entries)
    with caplog.at_level(logging.WARNING, logger=DATASET_LOGGER):
        data = CUHKPEDES(root=root)
    path = os.path.join(w["image_dir"], e["file_path"])
    assert path in {p for p, _, _, _ in data.train} and path in {p for p, _, _ in data.gallery}
    assert data.num_split_overlap == 1
    assert any(f"1 image(s) of {w['annotation']} are listed in both split 'train' and split 'test' "
               f"(e.g. {e['file_path']!r})" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- negative / non-contiguous ids
@pytest.mark.parametrize("split", ["train", "test"])
def test_negative_id_is_refused(cuhk, split):
    root, w, entries = cuhk
    k = _index(entries, split)[0]
    entries[k]["id"] = -1
    write_json(w["annotation"], entries)
    with pytest.raises(DatasetFormatError, match=rf"entry {k} of {re.escape(w['annotation'])}: field 'id' is -1; "
                                                 r"expected a non-negative integer person id"):
        CUHKPEDES(root=root)


def test_non_contiguous_ids_are_relabelled_for_training(cuhk):
    root, w, entries = cuhk
    train = _index(entries, "train")
    raw = {}
    for n, k in enumerate(train):  # 2 ids x 2 images: raw ids 70000 and 5 (unsorted, far apart)
        entries[k]["id"] = {3: 70000, 7: 5}[entries[k]["id"]]
        raw[os.path.join(w["image_dir"], entries[k]["file_path"])] = entries[k]["id"]
    test_ids = {3 + 4 * 4: 123456, 3 + 4 * 5: 0}
    for k in _index(entries, "test"):
        entries[k]["id"] = test_ids[entries[k]["id"]]
    write_json(w["annotation"], entries)
    data = CUHKPEDES(root=root)
    assert data.num_classes == 2
    assert {p: pid for p, _, pid, _ in data.train} == {p: {5: 0, 70000: 1}[r] for p, r in raw.items()}
    assert {pid for _, pid in data.query} == {pid for _, pid, _ in data.gallery} == {123456, 0}  # raw kept


# ---------------------------------------------------------------------- split with no images
def test_split_with_no_images(cuhk):
    root, w, entries = cuhk
    write_json(w["annotation"], [e for e in entries if e["split"] != "test"])
    with pytest.raises(DatasetFormatError, match=rf"split 'test' of {re.escape(w['annotation'])} has no images "
                                                 r"\(images per split found: \{'(train|val)': 4, '(train|val)': 4\}\)"):
        CUHKPEDES(root=root)


def test_split_whose_captions_are_all_empty(cuhk):
    root, w, entries = cuhk
    for k in _index(entries, "test"):
        entries[k]["captions"] = [" "]
    write_json(w["annotation"], entries)
    with pytest.raises(DatasetFormatError, match=r"split 'test' of .*reid_raw\.json has images but no non-empty "
                                                 r"caption \(no queries\)"):
        CUHKPEDES(root=root)


def test_empty_annotation_list(tmp_path):
    w = make_luperson_t(str(tmp_path), num_images=1)
    write_json(w["annotation"], [])
    with pytest.raises(DatasetFormatError, match=r"split 'train' of .*luperson_t\.json has no images"):
        LUPersonT(root=str(tmp_path))


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("text,pattern", [
    ("SOLVER:\n  IMS_PER_BATCH: sixty-four\n",
     r"Type mismatch \(<class 'int'> vs. <class 'str'>\) with values \(64 vs. sixty-four\) for config key: "
     r"SOLVER.IMS_PER_BATCH"),
    ("INPUT:\n  SIZE_TRAIN: 384\n",
     r"Type mismatch \(<class 'list'> vs. <class 'int'>\) with values \(\[384, 128\] vs. 384\) for config key: "
     r"INPUT.SIZE_TRAIN"),
    ("SOLVER:\n  BASE_LR: 1\n",  # yacs does not turn an int into a float: write 1.0
     r"Type mismatch \(<class 'float'> vs. <class 'int'>\) .* for config key: SOLVER.BASE_LR"),
    ("MODEL:\n  PGU:\n    NUM_PROTOTYPE: 6\n", r"Non-existent config key: MODEL.PGU.NUM_PROTOTYPE"),
], ids=["str_for_int", "int_for_list", "int_for_float", "unknown_key"])
def test_config_file_wrong_type_or_unknown_key(tmp_path, text, pattern):
    from unipt_plugin.engine.defaults import ConfigError, setup_cfg

    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r": .*" + pattern):
        setup_cfg(str(path))


@pytest.mark.parametrize("text,pattern", [
    ("SOLVER:\n  BASE_LR: [1e-4\n", r"(?s) is not valid YAML: .*line 2"),
    ("", r": expected a mapping of config keys .* got an empty file"),
    ("- SOLVER\n- MODEL\n", r": expected a mapping of config keys .* got a list"),
    ("_BASE_: missing-base.yml\n", r"config file not found: .*missing-base\.yml \(named by _BASE_ in .*bad\.yml\)"),
], ids=["yaml_syntax", "empty", "top_level_list", "missing_base"])
def test_config_file_not_a_yaml_mapping(tmp_path, text, pattern):
    from unipt_plugin.engine.defaults import ConfigError, setup_cfg

    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        setup_cfg(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("opts,pattern", [
    (["SOLVER.IMS_PER_BATCH", "abc"], r"with values \(64 vs. abc\) for config key: SOLVER.IMS_PER_BATCH"),
    (["MODEL.T2I.NOT_A_KEY", "1"], r"Non-existent key: MODEL.T2I.NOT_A_KEY"),
], ids=["str_for_int", "unknown_key"])
def test_config_override_wrong_type_or_unknown_key(opts, pattern):
    from unipt_plugin.engine.defaults import ConfigError, setup_cfg

    with pytest.raises(ConfigError, match=r"command-line override \[.*\]: .*" + pattern):
        setup_cfg("", opts)


# ---------------------------------------------------------------------- vocabulary
def _vocab_file(tmp_path, edit) -> str:
    from unipt_plugin.pseudo_text.vocabulary import default_vocabulary_path

    raw = yaml.safe_load(default_vocabulary_path().read_text(encoding="utf-8"))
    edit(raw["attributes"])
    path = tmp_path / "vocab.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _assert_vocabulary_refused(tmp_path, edit, attr: str, message: str) -> None:
    """The vocabulary edited by ``edit`` is refused with an error naming the file and attribute."""
    from unipt_plugin.pseudo_text.vocabulary import VocabularyError, load_vocabulary

    path = _vocab_file(tmp_path, edit)
    with pytest.raises(VocabularyError, match=re.escape(f"vocabulary {path}: attribute {attr!r}: {message}")):
        load_vocabulary(path)


@pytest.mark.parametrize("edit,attr,message", [
    (lambda a: a.pop("age"), "age", "required attribute is missing (required: age, gender, upper_clothes, "
                                    "lower_clothes, action, hair_length)"),
    (lambda a: a["hair_length"].pop("required"), "hair_length", "needs 'required: true' or 'required: false'"),
    (lambda a: a["action"]["classes"][0].pop("phrase"), "action", "class 'walking' has no 'phrase'"),
    (lambda a: a["gender"]["classes"][1].pop("pronouns"), "gender", "class 'woman' needs pronouns"),
    (lambda a: a["bag"].__setitem__("classes", [c for c in a["bag"]["classes"] if c["id"] != "none"]), "bag",
     "optional attribute has no negative class"),
], ids=["no_age", "no_required_flag", "class_without_phrase", "gender_without_pronouns", "optional_without_none"])
def test_vocabulary_missing_required_attribute(tmp_path, edit, attr, message):
    _assert_vocabulary_refused(tmp_path, edit, attr, message)


@pytest.mark.parametrize("edit,attr,message", [
    (lambda a: a["gender"]["classes"][0].__setitem__("pronouns", "he"), "gender",
     "class 'man' 'pronouns' must be a mapping like {subject: he, object: him, possessive: his}, got 'he'"),
    (lambda a: a["gender"]["classes"][0].__setitem__("by_age", ["boy"]), "gender",
     "class 'man' 'by_age' must be a mapping from age class ids to lists of nouns, got ['boy']"),
    (lambda a: a["gender"]["classes"][1]["by_age"].__setitem__("toddler", ["baby"]), "gender",
     "class 'woman' by_age names ['toddler'], which are not age class ids"),
    (lambda a: a["age"]["classes"][0].__setitem__("phrase", 5), "age", "class 'child' 'phrase' must be a non-empty "
                                                                       "string, got 5"),
    (lambda a: a["upper_clothes"]["compose"]["patterns"]["pure"].__setitem__("prompt", 5), "upper_clothes",
     "compose.patterns['pure'].prompt must be a non-empty string, got 5"),
], ids=["pronouns_str", "by_age_list", "by_age_unknown_age", "phrase_int", "pattern_prompt_int"])
def test_vocabulary_field_of_the_wrong_type(tmp_path, edit, attr, message):
    _assert_vocabulary_refused(tmp_path, edit, attr, message)


# ---------------------------------------------------------------------- weights for another architecture
def test_weights_file_for_another_architecture(tmp_path):
    from fastreid.modeling.meta_arch import build_model

    from unipt_plugin.engine import UniPTCheckpointer
    from unipt_plugin.engine.defaults import setup_cfg

    torch.manual_seed(0)
    model = build_model(setup_cfg("configs/Tiny/t2i.yml", ["MODEL.HEADS.NUM_CLASSES", "4"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 2))
    path = tmp_path / "resnet_like.pth"
    torch.save(other.state_dict(), path)
    n = len(other.state_dict())  # conv w/b, bn w/b/mean/var/num_batches_tracked, linear w/b = 9
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: none of its {n} tensors matches the model "
                                         rf"\({len(before)} tensors; e\.g\. checkpoint key '0\.weight'.*"
                                         r"made for another architecture"):
        UniPTCheckpointer(model).load(str(path))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-loaded


@pytest.mark.parametrize("content,pattern", [
    (b"", r"empty file \(0 bytes\); expected a checkpoint written by torch\.save"),
    (b'{"model": "not a pickle"}', r"not a PyTorch checkpoint \(it does not unpickle"),
], ids=["zero_bytes", "json_text"])
def test_weights_file_that_is_not_a_checkpoint(tmp_path, content, pattern):
    from unipt_plugin.utils.io import UnsafeCheckpointError, load_weights_file

    path = tmp_path / "model_final.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + pattern) as info:
        load_weights_file(path)
    assert not isinstance(info.value, UnsafeCheckpointError)


# ---------------------------------------------------------------------- atomic output
def test_failed_write_leaves_no_partial_file(tmp_path):
    from unipt_plugin.utils.io import atomic_write_json

    path = tmp_path / "eval_results.json"
    atomic_write_json(path, {"Rank-1": 50.0})
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic_write_json(path, {"Rank-1": 60.0, "bad": object()})  # fails after part of the JSON was written
    assert json.loads(path.read_text()) == {"Rank-1": 50.0}
    assert os.listdir(tmp_path) == ["eval_results.json"]  # no temporary file left behind
