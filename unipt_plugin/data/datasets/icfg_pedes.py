"""ICFG-PEDES from its raw ``ICFG-PEDES.json`` (datasets/README.md, ICFG-PEDES).

``<root>/ICFG-PEDES/ICFG-PEDES.json``: a JSON list of ``{"split": "train"|"test",
"captions": [str], "file_path": "train/0012/0012_010_01_0303morning_0015_1.jpg",
"processed_tokens": [...], "id": int}``; images under ``<root>/ICFG-PEDES/imgs/``.
"""
from __future__ import annotations

from fastreid.data.datasets import DATASET_REGISTRY

from .base import TextImageDataset

__all__ = ["ICFGPEDES"]


@DATASET_REGISTRY.register()
class ICFGPEDES(TextImageDataset):
    """ICFG-PEDES: train split for training, test split for query / gallery."""

    folder = "ICFG-PEDES"
    annotation_file = "ICFG-PEDES.json"
    path_key = "file_path"
    known_splits = ("train", "test")
    train_split = "train"
    test_split = "test"
    example_entry = ('{"split": "train", "captions": ["The woman is wearing ..."], '
                     '"file_path": "train/0012/0012_010_01_0303morning_0015_1.jpg", "id": 12}')
