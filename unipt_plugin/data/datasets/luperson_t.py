"""LUPerson-T (pseudo-text pre-training data, method-notes section 1) from its JSON list.

The annotation file is a JSON list of ``{"file_path": str, "captions": [str, ...]}`` with
paths relative to the image folder. Both come from the config: DATASETS.LUPERSON_T.ANNOTATION
and DATASETS.LUPERSON_T.IMAGE_DIR, each absolute or relative to ``<root>/LUPerson-T``.
Training only; there are no person ids, so every image is its own identity: pid = image index
(0..N-1), which keeps identity-balanced samplers and the ID-classifier bookkeeping working.
"""
from __future__ import annotations

import os
from typing import Any

from fastreid.data.datasets import DATASET_REGISTRY

from .base import TextImageDataset

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
        super().__init__(root, cfg, **kwargs)

    def resolve_annotation_path(self) -> str:
        return os.path.join(self.dataset_dir, self.annotation_file)  # absolute paths stay absolute

    def resolve_image_dir(self) -> str:
        return os.path.join(self.dataset_dir, self.image_subdir)

    def expected_layout(self) -> str:
        return (f"  <DATASETS.ROOT>/{self.folder}/{self.annotation_file}  (DATASETS.LUPERSON_T.ANNOTATION)\n"
                f"  <DATASETS.ROOT>/{self.folder}/{self.image_subdir}/<file_path of each entry>  "
                "(DATASETS.LUPERSON_T.IMAGE_DIR)\n"
                f"  with the annotation a JSON list of entries like {self.example_entry}\n"
                "  (absolute ANNOTATION / IMAGE_DIR are used as they are; see datasets/README.md)")
