"""SYNTH-PEDES (PLIP's synthetic text-image person set) from its released JSON (datasets/README.md, SYNTH-PEDES).

``<root>/SYNTH-PEDES/synthpedes_dataset.json`` (DATASETS.SYNTH_PEDES.ANNOTATION): a JSON list of

    {"id": 7, "file_path": "Part1/7/1.jpg",
     "attributes": ["man,black hair,black shirt,pink shorts,black shoes,unknown"],
     "captions": ["A man in his mid-twenties ...", "The man with short black hair ..."],
     "prompt_caption": ["A man with black hair is wearing a black shirt ..."]}

one entry per image, ``file_path`` relative to DATASETS.SYNTH_PEDES.IMAGE_DIR ("" = the
SYNTH-PEDES folder, which holds Part1/ ... Part11/). The release has no split field and PLIP
pre-trains on all of it: every entry is a training image (no query / gallery; evaluate on
another set through DATASETS.TESTS). Person ids are the entries' ``id``s, relabelled to 0..C-1
like every labeled set's (so identity-aware losses and samplers see SYNTH-PEDES's identities).

``prompt_caption``: with DATASETS.SYNTH_PEDES.PROMPT_CAPTIONS True its strings are extra
captions of the image, after ``captions`` (stripped, empty ones skipped, a text already among
the image's captions kept once, with the base class's warnings); it must then be a list of
strings in every entry. With the key False the field is not read.

``attributes``: a list of strings, each a comma-separated list of attribute phrases; every
training image keeps its phrases (``attributes_of(image_id)``, stripped, in file order, the
placeholder "unknown" kept so that the positions stay those of the file). An image listed
twice keeps the attributes of its first entry. They are stored packed (one string per image,
the entry's own string when it has one), so they add about the file's bytes of them.

Errors, statistics table and scale behaviour are the base class's (``TextImageDataset``): a
bad entry names the file, the entry index, the field, its value and what was expected.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from fastreid.data.datasets import DATASET_REGISTRY

from ..serialize import PackedItems
from .base import _PROGRESS_STEP, DatasetFormatError, SplitImages, TextImageDataset, _Progress

__all__ = ["SYNTHPEDES", "ATTRIBUTE_SEPARATOR", "UNKNOWN_ATTRIBUTE"]

_DEFAULT_ANNOTATION = "synthpedes_dataset.json"
_DEFAULT_IMAGE_DIR = ""
#: separator of the phrases inside one attribute string of the released file
ATTRIBUTE_SEPARATOR = ","
#: the released file's placeholder for an attribute slot it could not fill
UNKNOWN_ATTRIBUTE = "unknown"
_ATTRIBUTE_ITEM = ("str",)


@DATASET_REGISTRY.register()
class SYNTHPEDES(TextImageDataset):
    """SYNTH-PEDES: every entry a training image with its person id; no test split.

    Attributes (besides the base class's):
        prompt_captions: whether ``prompt_caption`` texts were added (DATASETS.SYNTH_PEDES.PROMPT_CAPTIONS).
        train_attributes: ``PackedItems`` of one field per training image (index = image id):
            its attribute phrases joined by ","; read them with :meth:`attributes_of`.
    """

    folder = "SYNTH-PEDES"
    path_key = "file_path"
    split_key = None
    id_key = "id"
    train_split = "train"
    test_split = None
    example_entry = ('{"id": 7, "file_path": "Part1/7/1.jpg", "attributes": ["man,black hair,black shirt,'
                     'pink shorts,black shoes,unknown"], "captions": ["A man ..."], "prompt_caption": ["A man ..."]}')

    def __init__(self, root: str, cfg: Any = None, **kwargs: Any) -> None:
        node = getattr(getattr(cfg, "DATASETS", None), "SYNTH_PEDES", None)
        self.annotation_file = str(getattr(node, "ANNOTATION", _DEFAULT_ANNOTATION))
        self.image_subdir = str(getattr(node, "IMAGE_DIR", _DEFAULT_IMAGE_DIR))
        prompt = getattr(node, "PROMPT_CAPTIONS", False)
        if not isinstance(prompt, bool):
            raise ValueError(f"DATASETS.SYNTH_PEDES.PROMPT_CAPTIONS = {prompt!r}: expected True or False")
        self.prompt_captions = prompt
        self._entry_attributes: list[str | None] = []
        super().__init__(root, cfg, **kwargs)

    # ------------------------------------------------------------------ layout
    def resolve_annotation_path(self) -> str:
        return os.path.join(self.dataset_dir, self.annotation_file)  # absolute paths stay absolute

    def resolve_image_dir(self) -> str:
        return os.path.join(self.dataset_dir, self.image_subdir)

    def expected_layout(self) -> str:
        images = f"<DATASETS.ROOT>/{self.folder}/{self.image_subdir + '/' if self.image_subdir else ''}"
        return (f"  <DATASETS.ROOT>/{self.folder}/{self.annotation_file}  (DATASETS.SYNTH_PEDES.ANNOTATION)\n"
                f"  {images}<file_path of each entry>, e.g. Part1/7/1.jpg  (DATASETS.SYNTH_PEDES.IMAGE_DIR, "
                "\"\" = the SYNTH-PEDES folder)\n"
                f"  with the annotation a JSON list of entries like {self.example_entry}\n"
                "  (absolute ANNOTATION / IMAGE_DIR are used as they are; see datasets/README.md)")

    # ------------------------------------------------------------------ parsing
    def read_splits(self) -> dict[str, SplitImages]:
        """The base class's parse, after one pass that keeps each entry's attributes and (with
        PROMPT_CAPTIONS) appends its prompt captions to its captions."""
        entries = self._load_json()
        attributes: list[str | None] = [None] * len(entries)
        prompt = self.prompt_captions
        progress = _Progress(f"{self.name}: reading attributes{' and prompt captions' if prompt else ''}",
                             len(entries), "entries")
        for index, entry in enumerate(entries):
            if not index & (_PROGRESS_STEP - 1):
                progress.update_to(index)
            if not isinstance(entry, dict):
                continue  # refused by the base class's parse, with its message
            attributes[index] = self._attribute_string(entry, index)
            if prompt:
                self._add_prompt_captions(entry, index)
        progress.close()
        splits = self._parse(entries)
        self._entry_attributes = attributes
        return splits

    def _attribute_string(self, entry: dict, index: int) -> str:
        """The entry's attribute strings joined by "," (its own string when it has one)."""
        value = self._field(entry, index, "attributes")
        if not isinstance(value, list):
            raise self._bad(index, "attributes", value,
                            "a list of strings of comma-separated attribute phrases, e.g. "
                            "[\"man,black hair,black shirt,pink shorts,black shoes,unknown\"]")
        for a_index, text in enumerate(value):
            if not isinstance(text, str):
                raise self._bad(index, f"attributes[{a_index}]", text,
                                "a string of comma-separated attribute phrases")
        if len(value) == 1:
            return value[0]
        return ATTRIBUTE_SEPARATOR.join(value)

    def _add_prompt_captions(self, entry: dict, index: int) -> None:
        prompts = self._field(entry, index, "prompt_caption")
        if not isinstance(prompts, list):
            raise self._bad(index, "prompt_caption", prompts,
                            "a list of strings (read because DATASETS.SYNTH_PEDES.PROMPT_CAPTIONS is True)")
        for p_index, text in enumerate(prompts):
            if not isinstance(text, str):
                raise self._bad(index, f"prompt_caption[{p_index}]", text,
                                "a string (read because DATASETS.SYNTH_PEDES.PROMPT_CAPTIONS is True)")
        captions = entry.get("captions")
        if isinstance(captions, list) and prompts:
            entry["captions"] = captions + prompts  # the base class validates and cleans them

    # ------------------------------------------------------------------ items
    def _build_train(self, images: SplitImages) -> tuple[PackedItems, int, int]:
        items, num_images, num_classes = super()._build_train(images)
        counts = np.fromiter(map(len, images.captions), dtype=np.int64, count=len(images))
        with_text = np.flatnonzero(counts)  # the training images, in image-id order (as the base class)
        first_entries = np.asarray(images.entries, dtype=np.int64)[with_text].tolist()
        strings = self._entry_attributes
        column = [strings[e] for e in first_entries]
        if any(s is None for s in column):  # pragma: no cover - every listed entry was a dict
            raise DatasetFormatError(f"{self.name}: attributes missing for a training image of {self.annotation_path}")
        self.train_attributes = PackedItems.from_columns([column], _ATTRIBUTE_ITEM)
        self._entry_attributes = []
        return items, num_images, num_classes

    def attributes_of(self, image_id: int) -> list[str]:
        """The attribute phrases of training image ``image_id`` (the ``img_ids`` / item field 3
        of this dataset, before any offset across DATASETS.NAMES), stripped, in file order, the
        placeholder "unknown" kept; [] for an image whose ``attributes`` list is empty."""
        (text,) = self.train_attributes[int(image_id)]
        if not text.strip():
            return []
        return [phrase.strip() for phrase in text.split(ATTRIBUTE_SEPARATOR)]
