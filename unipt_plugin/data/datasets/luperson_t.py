"""LUPerson-T (pseudo-text pre-training data: datasets/README.md, LUPerson-T), in either of two layouts.

- **JSON + image folder**: DATASETS.LUPERSON_T.ANNOTATION is a JSON list of
  ``{"file_path": str, "captions": [str, ...]}`` with paths relative to
  DATASETS.LUPERSON_T.IMAGE_DIR.
- **packed** (the authors' layout): an ANNOTATION ending in ``.arrow`` is an Apache Arrow IPC
  file holding the images themselves, one row per image (columns ``image``, ``caption``,
  ``image_id``, ``split``; see ``arrow_layout``); IMAGE_DIR is not used. Item paths are row
  references ``"arrow:<file>#<row>"`` that ``read_image`` decodes from the file.

Both keys are absolute or relative to ``<root>/LUPerson-T``. Training only; there are no person
ids, so every image is its own identity: pid = image index (0..N-1, the order of the file),
which keeps identity-balanced samplers and the ID-classifier bookkeeping working. Both layouts
give the same items (captions stripped, empty ones skipped and repeated ones kept once, with
the same warnings) when the packed file was written from the JSON by ``tools/pack_dataset.py``.

**Attribute spans** (PLIP's IAP; read only when a pre-training has MODEL.PRETRAIN.IAP_WEIGHT > 0):
an entry of the JSON layout may hold ``"attribute_spans"``, one list per caption (the order of
``captions``) of ``[start, end]`` character spans (end exclusive) of the caption's attribute
phrases, as the pseudo-text generator writes them (docs/pseudo_texts.md). They are kept per
training item in ``train_attribute_spans`` (``unipt_plugin.data.attribute_spans``), shifted to
the stripped caption; a caption without them (an older file, an entry without the field, a
caption merged in from a second entry of the same image) is marked "not recorded", and IAP then
matches the vocabulary's phrases in it. The packed layout carries them in its optional
``attribute_spans`` column (``arrow_layout``; what ``tools/pack_dataset.py`` writes from the JSON's
field), read the same way (a null caption entry: not recorded), so both layouts give IAP the same
spans; a file packed before the column existed loads, every caption "not recorded" (logged once).
A malformed field is an error naming the entry (row), the field (column) and the value.
"""
from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastreid.data.datasets import DATASET_REGISTRY

from ..attribute_spans import NOT_RECORDED, encode_spans
from ..serialize import TRAIN_ITEM, PackedItems, pack_strings
from .arrow_layout import (COLUMNS, PACKED_SUFFIX, SPANS_COLUMN, check_packed_images, image_ref,
                           read_packed_annotations, read_packed_attribute_spans)
from .base import DatasetFormatError, SplitImages, TextImageDataset, _CaptionCounts

__all__ = ["LUPersonT", "SPANS_KEY"]

logger = logging.getLogger(__name__)

_DEFAULT_ANNOTATION = "luperson_t.json"
_DEFAULT_IMAGE_DIR = "imgs"
#: the entry field of the attribute spans (module docstring)
SPANS_KEY = "attribute_spans"
# separator of the captions' encoded spans in one entry's string while the file is parsed
_CAPTION_SEP = "|"


@DATASET_REGISTRY.register()
class LUPersonT(TextImageDataset):
    """LUPerson-T: one training identity per image, one item per caption; no test split.

    Args (besides the base class's):
        attribute_spans: read the entries' ``attribute_spans`` (module docstring); None (default)
            = when cfg is a pre-training with MODEL.PRETRAIN.IAP_WEIGHT > 0.

    Attributes:
        train_attribute_spans: ``PackedItems`` of one encoded span string per training item
            (``attribute_spans.decode_spans``; ``NOT_RECORDED`` where the file has none), or None
            when the spans were not read or a packed file has no ``attribute_spans`` column.
        num_recorded_captions: training captions with recorded spans (0 when not read).
    """

    folder = "LUPerson-T"
    path_key = "file_path"
    split_key = None
    id_key = None
    train_split = "train"
    test_split = None
    example_entry = '{"file_path": "images/000001.jpg", "captions": ["A photo of a young man ..."]}'

    def __init__(self, root: str, cfg: Any = None, attribute_spans: bool | None = None, **kwargs: Any) -> None:
        node = getattr(getattr(cfg, "DATASETS", None), "LUPERSON_T", None)
        self.annotation_file = str(getattr(node, "ANNOTATION", _DEFAULT_ANNOTATION))
        self.image_subdir = str(getattr(node, "IMAGE_DIR", _DEFAULT_IMAGE_DIR))
        #: True when ANNOTATION names a packed Arrow file
        self.packed = self.annotation_file.lower().endswith(PACKED_SUFFIX)
        if attribute_spans is None:
            model = getattr(cfg, "MODEL", None)
            attribute_spans = (str(getattr(model, "META_ARCHITECTURE", "")) == "UniPTPretrain"
                               and float(getattr(getattr(model, "PRETRAIN", None), "IAP_WEIGHT", 0.0)) > 0)
        self.read_attribute_spans = bool(attribute_spans)
        self.train_attribute_spans: PackedItems | None = None
        self.num_recorded_captions = 0
        self._entry_spans: list[str | None] = []
        # a packed file without the attribute_spans column: no spans kept (IAP: the vocabulary)
        self._no_spans_column = False
        super().__init__(root, cfg, **kwargs)

    def resolve_annotation_path(self) -> str:
        return os.path.join(self.dataset_dir, self.annotation_file)  # absolute paths stay absolute

    def resolve_image_dir(self) -> str:
        return os.path.join(self.dataset_dir, self.image_subdir)

    def uses_image_dir(self) -> bool:
        return not self.packed

    def expected_layout(self) -> str:
        if self.packed:
            return (f"  <DATASETS.ROOT>/{self.folder}/{self.annotation_file}  (DATASETS.LUPERSON_T.ANNOTATION, "
                    "ending in .arrow: the packed layout)\n"
                    f"  an Arrow IPC file, one row per image, columns {COLUMNS}\n"
                    "  (absolute ANNOTATION is used as it is; see datasets/README.md)")
        return (f"  <DATASETS.ROOT>/{self.folder}/{self.annotation_file}  (DATASETS.LUPERSON_T.ANNOTATION)\n"
                f"  <DATASETS.ROOT>/{self.folder}/{self.image_subdir}/<file_path of each entry>  "
                "(DATASETS.LUPERSON_T.IMAGE_DIR)\n"
                f"  with the annotation a JSON list of entries like {self.example_entry}\n"
                "  (absolute ANNOTATION / IMAGE_DIR are used as they are; an ANNOTATION ending in .arrow "
                "is the packed layout; see datasets/README.md)")

    def read_splits(self) -> dict[str, SplitImages]:
        if not self.packed:
            if not self.read_attribute_spans:
                return super().read_splits()
            entries = self._load_json()
            self._entry_spans = [self._spans_of(entry, index) for index, entry in enumerate(entries)]
            return self._parse(entries)
        packed = read_packed_annotations(self.annotation_path, self.name)
        if self.read_attribute_spans:
            spans = self._packed_spans(packed.num_rows)
            self._no_spans_column = spans is None
            self._entry_spans = spans or []
        images = SplitImages()
        rows = packed.rows.tolist()
        prefix = image_ref(packed.path, 0)[:-1]  # "arrow:<file>#"
        images.paths = [f"{prefix}{r}" for r in rows]
        images.pids = np.full(len(rows), -1, dtype=np.int64)
        images.entries = packed.rows
        self._entry_noun = "rows"
        self._clean_captions = packed.clean
        if packed.clean is not None:  # nothing to clean: the captions stay in their buffer
            self._report_captions(_CaptionCounts())
            return {self.train_split: images}
        counts = _CaptionCounts()
        out = images.captions
        add = self._add_captions
        for r, captions in zip(rows, packed.captions):
            if len(captions) == 1:  # the common case
                caption = captions[0].strip()
                if caption:
                    out.append([caption])
                    continue
            caps: list[str] = []
            add(caps, captions, r, counts)
            out.append(caps)
        self._report_captions(counts)
        return {self.train_split: images}

    def _spans_of(self, entry: Any, index: int) -> str | None:
        """The entry's spans for its kept captions (stripped, empty and repeated ones skipped, as
        the base class keeps them), encoded and joined by "|"; None without the field. Entries
        the base class refuses are left to it."""
        if not isinstance(entry, dict) or SPANS_KEY not in entry:
            return None
        captions = entry.get("captions")
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            return None  # the base class's error
        return self._kept_spans(captions, entry[SPANS_KEY], lambda f, v, e: self._bad(index, f, v, e), False)

    def _packed_spans(self, num_rows: int) -> list[str | None] | None:
        """Per row of the packed file (unused rows None), its kept captions' spans as
        :meth:`_spans_of` gives an entry's; None (logged) when the file has no spans column."""
        packed = read_packed_attribute_spans(self.annotation_path, self.name)
        if packed is None:
            logger.warning("%s: %s has no column '%s' (packed before the column existed): IAP matches the "
                           "vocabulary's phrases in its captions; re-pack it from the JSON with tools/pack_dataset.py "
                           "to use the recorded spans", self.name, self.annotation_path, SPANS_COLUMN)
            return None
        out: list[str | None] = [None] * num_rows
        for row, captions, spans in zip(packed.rows.tolist(), packed.captions, packed.spans):
            if spans is not None:
                out[row] = self._kept_spans(captions, spans, self._bad_row(row), True)
        return out

    def _bad_row(self, row: int):
        """The error maker of row ``row``'s spans in the packed layout (``_kept_spans``'s ``bad``)."""
        def bad(field: str, value: Any, expected: str) -> DatasetFormatError:
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            return DatasetFormatError(f"{self.name}: row {row} of {self.annotation_path} (packed layout): column "
                                      f"{field!r} is {shown}; expected {expected} (re-pack with tools/pack_dataset.py)")
        return bad

    @staticmethod
    def _kept_spans(captions: Sequence[str], spans: Any, bad, missing_allowed: bool) -> str | None:
        """The spans of the kept captions (stripped, empty and repeated ones skipped), shifted to
        the stripped caption, each encoded (``encode_spans``; NOT_RECORDED for a caption whose
        entry is None, allowed when ``missing_allowed``: the packed layout's null) and joined by
        "|"; None when no caption is kept. ``bad(field, value, expected)`` makes the error of a
        malformed value."""
        if not isinstance(spans, list) or len(spans) != len(captions):
            raise bad(SPANS_KEY, spans, f"a list of {len(captions)} span lists, one per caption "
                      "(each [[start, end], ...] character offsets of its attribute phrases)")
        kept: list[str] = []
        seen: set[str] = set()
        for c_index, (caption, caption_spans) in enumerate(zip(captions, spans)):
            field = f"{SPANS_KEY}[{c_index}]"
            if caption_spans is None and missing_allowed:
                pass
            elif not isinstance(caption_spans, list):
                raise bad(field, caption_spans, "a list of [start, end] character spans")
            else:
                for span in caption_spans:
                    if (not isinstance(span, list) or len(span) != 2 or not all(type(v) is int for v in span)
                            or not 0 <= span[0] < span[1] <= len(caption)):
                        raise bad(field, span, f"[start, end] integers with 0 <= start < end <= "
                                  f"{len(caption)} (the length of captions[{c_index}])")
            stripped = caption.strip()
            if not stripped or stripped in seen:
                continue
            seen.add(stripped)
            if caption_spans is None:
                kept.append(NOT_RECORDED)
                continue
            lead = len(caption) - len(caption.lstrip())
            shifted = [(max(a - lead, 0), min(b - lead, len(stripped))) for a, b in caption_spans]
            kept.append(encode_spans(sorted((a, b) for a, b in shifted if b > a)))
        return _CAPTION_SEP.join(kept) if kept else None

    def _attach_attribute_spans(self, counts: Sequence[int], entries: Sequence[int], num_items: int) -> None:
        """``train_attribute_spans``: per training item, in item order (images with text in order,
        their ``counts`` captions in order; ``entries``: each image's entry, or row of the packed
        file), its entry's recorded spans or NOT_RECORDED."""
        column: list[str] = []
        recorded = 0
        entry_spans = self._entry_spans
        for count, entry in zip(counts, entries):
            count = int(count)
            if not count:
                continue
            joined = entry_spans[entry] if entry_spans else None
            mine = joined.split(_CAPTION_SEP) if joined is not None else []
            mine = mine[:count]
            recorded += sum(1 for m in mine if m != NOT_RECORDED)
            column.extend(mine)
            column.extend([NOT_RECORDED] * (count - len(mine)))
        self._entry_spans = []
        if len(column) != num_items:  # pragma: no cover - the base class's item order
            raise AssertionError(f"{len(column)} attribute span records for {num_items} items")
        self.train_attribute_spans = PackedItems.from_columns([column], ("str",))
        self.num_recorded_captions = recorded
        logger.info("%s: attribute spans recorded for %d of %d training captions (the others: vocabulary phrases)",
                    self.name, recorded, num_items)

    def _build_train(self, images: SplitImages) -> tuple[PackedItems, int, int]:
        clean = getattr(self, "_clean_captions", None)
        if not self.packed or clean is None:
            items, num, num_classes = super()._build_train(images)
            if self.read_attribute_spans and not self._no_spans_column:
                self._attach_attribute_spans([len(c) for c in images.captions], images.entries, len(items))
            return items, num, num_classes
        # the packed file's captions as they are (see PackedAnnotations.clean): the same items
        # as the general path, without a Python string per caption
        counts, caption_field = clean
        self._clean_captions = None
        with_text = np.flatnonzero(counts)
        num = len(with_text)
        if len(caption_field[1]) - 1 == len(images):  # one caption per image
            paths = images.paths
        else:
            paths = list(itertools.chain.from_iterable(map(itertools.repeat, images.paths, counts.tolist())))
        ids = np.repeat(np.arange(num, dtype=np.int64), counts[with_text])  # pid = image id = index
        items = PackedItems(TRAIN_ITEM, np.stack([ids, ids], axis=1), [pack_strings(paths), caption_field])
        if self.read_attribute_spans and not self._no_spans_column:
            self._attach_attribute_spans(counts, images.entries, len(items))
        return items, num, num

    def verify_images(self, splits: Sequence[SplitImages]) -> None:
        if not self.packed:
            return super().verify_images(splits)
        check_packed_images(self.annotation_path, np.asarray(splits[0].entries, dtype=np.int64), self.name)
