"""Tiny datasets in the RAW annotation formats (datasets/README.md), written by tests.

Each ``make_*`` function writes ``<root>/<dataset folder>/`` with its annotation file and small
random images (PNG and JPG mixed), and returns what it wrote, computed while writing:

    {"dataset_dir": str, "annotation": str, "image_dir": str,
     "records": [{"split", "path" (absolute image path), "pid" (raw id), "captions"}, ...],
     "<split>": {"ids": int, "images": int, "captions": int}, ...}

Raw ids are deliberately non-contiguous and entries are shuffled, so relabelling is
exercised. Captions are short random sentences (no empty ones unless asked for).
"""
from __future__ import annotations

import json
import os
import random
from typing import Any, Iterable

import numpy as np
from PIL import Image

__all__ = ["write_image", "write_json", "make_cuhk_pedes", "make_icfg_pedes", "make_rstpreid", "make_luperson_t",
           "random_caption"]

_WORDS = ("a man woman wearing black white red blue shirt jacket trousers shorts skirt shoes bag backpack "
          "carrying walking long short hair glasses hat with and the young old holding phone").split()


def random_caption(rng: random.Random, num_words: int = 8) -> str:
    """A short random sentence of ``num_words`` common words plus a full stop."""
    return " ".join(rng.choice(_WORDS) for _ in range(num_words)).capitalize() + "."


def write_image(path: str, size: tuple[int, int] = (32, 16), seed: int = 0) -> None:
    """Random RGB image of ``size`` = (height, width); the format follows the extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(path)


def write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def _counts(records: list[dict], splits: Iterable[str]) -> dict[str, dict[str, int]]:
    out = {}
    for split in splits:
        rs = [r for r in records if r["split"] == split]
        out[split] = {"ids": len({r["pid"] for r in rs}), "images": len(rs),
                      "captions": sum(len(r["captions"]) for r in rs)}
    return out


def _make(root: str, folder: str, annotation: str, path_key: str, split_ids: dict[str, list[int]],
          images_per_id: int, captions_per_image: int, size: tuple[int, int], seed: int,
          rel_path, extra_fields: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    dataset_dir = os.path.join(root, folder)
    image_dir = os.path.join(dataset_dir, "imgs")
    entries, records = [], []
    n = 0
    for split, ids in split_ids.items():
        for pid in ids:
            for k in range(images_per_id):
                rel = rel_path(split, pid, k, ".png" if (n % 2 == 0) else ".jpg")
                write_image(os.path.join(image_dir, rel), size, seed * 100003 + n)
                n += 1
                captions = [random_caption(rng, rng.randint(4, 12)) for _ in range(captions_per_image)]
                entry = {"split": split, "captions": captions, path_key: rel, "id": pid}
                if extra_fields:
                    entry["processed_tokens"] = [c.lower().rstrip(".").split() for c in captions]
                entries.append(entry)
                records.append({"split": split, "path": os.path.join(image_dir, rel), "pid": pid,
                                "captions": list(captions)})
    rng.shuffle(entries)
    ann = os.path.join(dataset_dir, annotation)
    write_json(ann, entries)
    out: dict[str, Any] = {"dataset_dir": dataset_dir, "annotation": ann, "image_dir": image_dir, "records": records}
    out.update(_counts(records, split_ids))
    return out


def make_cuhk_pedes(root: str, num_ids: int = 4, images_per_id: int = 2, captions_per_image: int = 2,
                    size: tuple[int, int] = (32, 16), seed: int = 0) -> dict[str, Any]:
    """``<root>/CUHK-PEDES/reid_raw.json`` + ``imgs/CUHK0x/...``: train / val / test, ``num_ids`` each.

    Ids are 1-based and non-contiguous (3, 7, 11, ...), distinct across splits.
    """
    ids = [3 + 4 * i for i in range(3 * num_ids)]
    split_ids = {"train": ids[:num_ids], "val": ids[num_ids:2 * num_ids], "test": ids[2 * num_ids:]}
    return _make(root, "CUHK-PEDES", "reid_raw.json", "file_path", split_ids, images_per_id, captions_per_image,
                 size, seed, lambda s, pid, k, ext: f"CUHK0{1 + (pid + k) % 3}/{pid:04d}{k:03d}{ext}", True)


def make_icfg_pedes(root: str, num_ids: int = 4, images_per_id: int = 2, size: tuple[int, int] = (32, 16),
                    seed: int = 1) -> dict[str, Any]:
    """``<root>/ICFG-PEDES/ICFG-PEDES.json`` + ``imgs/{train,test}/<id>/...``: one caption per image.

    Train ids 0..num_ids-1 listed in shuffled order, test ids follow.
    """
    split_ids = {"train": list(range(num_ids))[::-1], "test": list(range(num_ids, 2 * num_ids))}
    return _make(root, "ICFG-PEDES", "ICFG-PEDES.json", "file_path", split_ids, images_per_id, 1, size, seed,
                 lambda s, pid, k, ext: f"{s}/{pid:04d}/{pid:04d}_{k:03d}_01_0303morning_0015_1{ext}", True)


def make_rstpreid(root: str, num_ids: int = 4, images_per_id: int = 2, captions_per_image: int = 2,
                  size: tuple[int, int] = (32, 16), seed: int = 2) -> dict[str, Any]:
    """``<root>/RSTPReid/data_captions.json`` (key ``img_path``) + flat ``imgs/``: train / val / test."""
    ids = [10 * i + 5 for i in range(3 * num_ids)]
    split_ids = {"train": ids[:num_ids], "val": ids[num_ids:2 * num_ids], "test": ids[2 * num_ids:]}
    return _make(root, "RSTPReid", "data_captions.json", "img_path", split_ids, images_per_id, captions_per_image,
                 size, seed, lambda s, pid, k, ext: f"{pid:04d}_c{k + 1}_{k:04d}{ext}", False)


def make_luperson_t(root: str, num_images: int = 6, captions_per_image: int = 1, size: tuple[int, int] = (32, 16),
                    annotation: str = "luperson_t.json", image_dir: str = "imgs", seed: int = 3) -> dict[str, Any]:
    """``<root>/LUPerson-T/<annotation>``: JSON list of {"file_path", "captions"}; images under ``image_dir``.

    Records carry ``pid`` = the image's index (each image its own identity) and split "train".
    """
    rng = random.Random(seed)
    dataset_dir = os.path.join(root, "LUPerson-T")
    img_root = os.path.join(dataset_dir, image_dir)
    entries, records = [], []
    for i in range(num_images):
        rel = f"{i // 4:03d}/{i:06d}" + (".jpg" if i % 2 else ".png")
        write_image(os.path.join(img_root, rel), size, seed * 100003 + i)
        captions = [random_caption(rng, rng.randint(4, 12)) for _ in range(captions_per_image)]
        entries.append({"file_path": rel, "captions": captions})
        records.append({"split": "train", "path": os.path.join(img_root, rel), "pid": i, "captions": list(captions)})
    ann = os.path.join(dataset_dir, annotation)
    write_json(ann, entries)
    out: dict[str, Any] = {"dataset_dir": dataset_dir, "annotation": ann, "image_dir": img_root, "records": records}
    out.update(_counts(records, ["train"]))
    return out
