"""The packed LUPerson-T layout carries the captions' attribute spans (PLIP's IAP): tools/pack_dataset.py's
packer writes the JSON's ``attribute_spans`` as a column, the packed reader gives every training
caption the spans the JSON reader gives it (hand-computed here: stripped captions, empty and repeated
ones, an entry without the field, a caption merged from a second entry), IAP masks the same tokens
from both files, a file packed before the column existed loads with the vocabulary fallback (logged
once), and a malformed column is refused naming the row and the column."""
import json
import logging
import os
import re

import pyarrow as pa
import pytest

from raw_fixtures import write_image
from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.data import build_t2i_train_loader
from unipt_plugin.data.attribute_spans import decode_spans
from unipt_plugin.data.datasets import DatasetFormatError, LUPersonT
from unipt_plugin.data.datasets.arrow_layout import pack_luperson_t
from unipt_plugin.data.mlm_masking import IGNORE_INDEX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_PRETRAIN = os.path.join(ROOT, "configs", "Tiny", "pretrain.yml")

ENTRIES = [
    {"file_path": "0.png", "captions": ["A young man wears a red t-shirt.", "  A red cap.  "],
     "attribute_spans": [[[2, 7], [20, 31]], [[4, 7], [8, 11]]]},
    {"file_path": "1.png", "captions": ["The elderly woman is walking in black jeans."]},  # no field
    {"file_path": "2.png", "captions": ["A man in blue.", " ", "A man in blue."],
     "attribute_spans": [[[9, 13]], [], [[0, 1]]]},  # the empty and the repeated caption are dropped
    {"file_path": "3.png", "captions": ["A woman with a bag."], "attribute_spans": [[]]},  # recorded: none
    {"file_path": "0.png", "captions": ["A boy."], "attribute_spans": [[[2, 5]]]},  # merged into image 0
]
# per kept caption, its spans in the stripped caption (None: not recorded), by hand
EXPECTED = {"A young man wears a red t-shirt.": [(2, 7), (20, 31)], "A red cap.": [(2, 5), (6, 9)],
            "A boy.": None, "The elderly woman is walking in black jeans.": None, "A man in blue.": [(9, 13)],
            "A woman with a bag.": []}


@pytest.fixture()
def both(tmp_path):
    folder = tmp_path / "LUPerson-T"
    for i in range(4):
        write_image(str(folder / "imgs" / f"{i}.png"), (32, 16), i)
    annotation = folder / "luperson_t.json"
    annotation.write_text(json.dumps(ENTRIES))
    output = str(folder / "packed.arrow")
    pack_luperson_t(str(annotation), str(folder / "imgs"), output, rows_per_part=2, progress=False)
    return str(tmp_path), output


def _spans(data):
    return {item[1]: decode_spans(encoded) for item, (encoded,) in zip(data.train, data.train_attribute_spans)}


def _packed_cfg(name):
    cfg = get_unipt_cfg()
    cfg.DATASETS.LUPERSON_T.ANNOTATION = name
    return cfg


def _write(table, path):
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def test_packed_and_json_give_every_caption_the_same_spans(both):
    root, output = both
    table = pa.ipc.open_file(pa.memory_map(output)).read_all()
    assert str(table.schema.field("attribute_spans").type) == "list<item: list<item: list<item: int32>>>"
    assert table.column("attribute_spans").to_pylist()[0] == [[[2, 7], [20, 31]], [[2, 5], [6, 9]], None]
    from_json = LUPersonT(root=root, attribute_spans=True)
    from_arrow = LUPersonT(root=root, cfg=_packed_cfg("packed.arrow"), attribute_spans=True)
    assert from_arrow.packed and not from_json.packed
    assert [i[1] for i in from_arrow.train] == [i[1] for i in from_json.train]
    assert _spans(from_json) == _spans(from_arrow) == EXPECTED
    assert from_json.num_recorded_captions == from_arrow.num_recorded_captions == 4


def test_iap_masks_the_same_tokens_from_both_files_and_old_files_fall_back(both, tmp_path, caplog):
    root, output = both
    table = pa.ipc.open_file(pa.memory_map(output)).read_all()
    _write(table.drop_columns(["attribute_spans"]), str(tmp_path / "LUPerson-T" / "old.arrow"))
    from unipt_plugin.engine import setup_cfg

    batches = {}
    for name, annotation in (("json", "luperson_t.json"), ("arrow", "packed.arrow"), ("old", "old.arrow")):
        cfg = setup_cfg(TINY_PRETRAIN, ["DATASETS.ROOT", root, "DATASETS.LUPERSON_T.ANNOTATION", annotation,
                                        "MODEL.PRETRAIN.IAP_WEIGHT", "1.0", "SOLVER.IMS_PER_BATCH", "6",
                                        "DATALOADER.NUM_WORKERS", "0", "INPUT.FLIP.ENABLED", "False", "SEED", "1"])
        with caplog.at_level(logging.WARNING, logger="unipt_plugin.data.datasets.luperson_t"):
            caplog.clear()
            batches[name] = next(iter(build_t2i_train_loader(cfg)))
            warned = [r.getMessage() for r in caplog.records if "has no column 'attribute_spans'" in r.getMessage()]
        assert len(warned) == (1 if name == "old" else 0)
    json_b, arrow_b, old_b = batches["json"], batches["arrow"], batches["old"]
    for key in ("img_ids", "text_ids", "iap_ids", "iap_labels"):
        assert (json_b[key] == arrow_b[key]).all(), key
    # image 3's only caption has recorded spans [] (nothing masked); without them the vocabulary masks "woman"
    row = int((arrow_b["img_ids"] == 3).nonzero()[0, 0])
    assert int((arrow_b["iap_labels"][row] != IGNORE_INDEX).sum()) == 0
    old_row = int((old_b["img_ids"] == 3).nonzero()[0, 0])
    assert int((old_b["iap_labels"][old_row] != IGNORE_INDEX).sum()) > 0


def test_a_malformed_spans_column_is_refused_naming_the_row(both, tmp_path):
    root, output = both
    table = pa.ipc.open_file(pa.memory_map(output)).read_all()
    spans = table.column("attribute_spans").to_pylist()
    column = table.schema.get_field_index("attribute_spans")
    cases = []
    wrong_count = [list(s) for s in spans]
    wrong_count[2] = wrong_count[2] + [None]
    cases.append((wrong_count, r"row 2: column 'attribute_spans' has 2 span lists for the row's 1 captions"))
    too_long = [list(s) for s in spans]
    too_long[1] = [[[0, 99]]]
    cases.append((too_long, r"row 1 of .*bad\.arrow \(packed layout\): column 'attribute_spans\[0\]' is \[0, 99\]; "
                            r"expected \[start, end\] integers with 0 <= start < end <= 44"))
    path = str(tmp_path / "LUPerson-T" / "bad.arrow")
    for values, pattern in cases:
        _write(table.set_column(column, "attribute_spans", pa.array(values, table.schema.field(column).type)), path)
        with pytest.raises(DatasetFormatError, match=pattern):
            LUPersonT(root=root, cfg=_packed_cfg("bad.arrow"), attribute_spans=True)
    _write(table.set_column(column, "attribute_spans", pa.array(["x"] * table.num_rows)), path)
    with pytest.raises(DatasetFormatError, match=re.escape("column 'attribute_spans' is string, not list<list<list")):
        LUPersonT(root=root, cfg=_packed_cfg("bad.arrow"), attribute_spans=True)
    # not read without IAP: a training run without it loads the file as before
    assert LUPersonT(root=root, cfg=_packed_cfg("bad.arrow")).train_attribute_spans is None
