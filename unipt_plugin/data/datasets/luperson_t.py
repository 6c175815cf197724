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
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastreid.data.datasets import DATASET_REGISTRY

from ..serialize import TRAIN_ITEM, PackedItems, pack_strings
from .arrow_layout import COLUMNS, PACKED_SUFFIX, check_packed_images, image_ref, read_packed_annotations
from .base import SplitImages, TextImageDataset, _CaptionCounts

__all__ = ["LUPersonT"]

_DEFAULT_ANNOTATION = "luperson_t.json"
_DEFAULT_IMAGE_DIR = "imgs"


@DATASET_REGISTRY.register()
class LUPersonT(TextImageDataset):
    """LUPerson-T: one training identity per image, one item per caption; no test split."""

    folder = "LUPerson-T"
    path_key = "file_path"
    split_key = None
    id_key = None
    train_split = "train"
    test_split = None
    example_entry = '{"file_path": "images/000001.jpg", "captions": ["A photo of a young man ..."]}'

    def __init__(self, root: str, cfg: Any = None, **kwargs: Any) -> None:
        node = getattr(getattr(cfg, "DATASETS", None), "LUPERSON_T", None)
        self.annotation_file = str(getattr(node, "ANNOTATION", _DEFAULT_ANNOTATION))
        self.image_subdir = str(getattr(node, "IMAGE_DIR", _DEFAULT_IMAGE_DIR))
        #: True when ANNOTATION names a packed Arrow file
        self.packed = self.annotation_file.lower().endswith(PACKED_SUFFIX)
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
            return super().read_splits()
        packed = read_packed_annotations(self.annotation_path, self.name)
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

    def _build_train(self, images: SplitImages) -> tuple[PackedItems, int, int]:
        clean = getattr(self, "_clean_captions", None)
        if not self.packed or clean is None:
            return super()._build_train(images)
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
        return items, num, num

    def verify_images(self, splits: Sequence[SplitImages]) -> None:
        if not self.packed:
            return super().verify_images(splits)
        check_packed_images(self.annotation_path, np.asarray(splits[0].entries, dtype=np.int64), self.name)
