"""RSTPReid from its raw ``data_captions.json`` (datasets/README.md, RSTPReid).

``<root>/RSTPReid/data_captions.json``: a JSON list of ``{"id": int, "img_path":
"0000_c14_0031.jpg", "captions": [str, str], "split": "train"|"val"|"test"}`` (note the key
``img_path``); images flat under ``<root>/RSTPReid/imgs/``.
"""
from __future__ import annotations

from fastreid.data.datasets import DATASET_REGISTRY

from .base import TextImageDataset

__all__ = ["RSTPReid"]


@DATASET_REGISTRY.register()
class RSTPReid(TextImageDataset):
    """RSTPReid: train split for training, test split for query / gallery."""

    folder = "RSTPReid"
    annotation_file = "data_captions.json"
    path_key = "img_path"
    known_splits = ("train", "val", "test")
    train_split = "train"
    test_split = "test"
    example_entry = ('{"id": 0, "img_path": "0000_c14_0031.jpg", "captions": ["A man ...", "The man ..."], '
                     '"split": "train"}')
