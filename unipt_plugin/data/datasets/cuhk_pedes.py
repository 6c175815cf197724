"""CUHK-PEDES from its raw ``reid_raw.json`` (datasets/README.md, CUHK-PEDES).

``<root>/CUHK-PEDES/reid_raw.json``: a JSON list of ``{"split": "train"|"val"|"test",
"captions": [str, ...], "file_path": "CUHK01/0363004.png", "processed_tokens": [...], "id": int}``
(ids 1-based); images under ``<root>/CUHK-PEDES/imgs/``. ``processed_tokens`` is not used.
``CUHKPEDES`` tests on the test split, ``CUHKPEDESVal`` on the val split.
"""
from __future__ import annotations

from fastreid.data.datasets import DATASET_REGISTRY

from .base import TextImageDataset

__all__ = ["CUHKPEDES", "CUHKPEDESVal"]


@DATASET_REGISTRY.register()
class CUHKPEDES(TextImageDataset):
    """CUHK-PEDES: train split for training, test split for query / gallery."""

    folder = "CUHK-PEDES"
    annotation_file = "reid_raw.json"
    path_key = "file_path"
    known_splits = ("train", "val", "test")
    train_split = "train"
    test_split = "test"
    example_entry = ('{"split": "train", "captions": ["A man in a black coat ..."], '
                     '"file_path": "CUHK01/0363004.png", "id": 1}')


@DATASET_REGISTRY.register()
class CUHKPEDESVal(CUHKPEDES):
    """CUHK-PEDES with the val split as query / gallery (model selection)."""

    test_split = "val"
