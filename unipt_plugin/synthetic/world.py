"""Writes the synthetic world: an unlabeled pool (LUPerson-like, no text) and a labeled set in
CUHK-PEDES's own raw format, with ground-truth attributes in sidecar files."""
from __future__ import annotations

import json
import logging
import os
import re

import cv2
import numpy as np
from tqdm import tqdm

from ..utils.io import atomic_open, atomic_write_json
from .attributes import sample_identity
from .captions import describe
from .renderer import render_person

logger = logging.getLogger(__name__)

__all__ = ["generate_world"]


def _write_jpg(path: str, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    with atomic_open(path, "wb") as f:
        f.write(buf.tobytes())


def generate_world(out_root: str, num_labeled_ids: int = 240, images_per_id: int = 4, num_pool_images: int = 3000,
                   size: tuple[int, int] = (128, 64), seed: int = 0, split_fractions=(0.6, 0.2, 0.2),
                   pool_views_per_id: int = 2, show_progress: bool = True) -> dict:
    """Render and write the world under ``out_root``; returns counts per part.

    * ``<out_root>/CUHK-PEDES/reid_raw.json`` + ``imgs/synthetic/<id>_<view>.jpg``: ids 1-based,
      splits train / val / test by identity, two captions per image; ``attributes.json`` maps each
      ``file_path`` to its attribute class ids.
    * ``<out_root>/LUPerson-T/imgs/<k>.jpg``: the unlabeled pool (new identities,
      ``pool_views_per_id`` views each); ``attributes.json`` the same mapping for the pool.

    Deterministic in ``seed``; images already on disk are not rendered again, so a re-run with the
    same arguments resumes and yields identical files.
    """
    rng = np.random.default_rng(seed)
    n_train = int(round(num_labeled_ids * split_fractions[0]))
    n_val = int(round(num_labeled_ids * split_fractions[1]))
    labeled_dir, pool_dir = os.path.join(out_root, "CUHK-PEDES"), os.path.join(out_root, "LUPerson-T")
    records, truth, jobs = [], {}, []
    for pid in range(1, num_labeled_ids + 1):
        ident = sample_identity(rng)
        split = "train" if pid <= n_train else "val" if pid <= n_train + n_val else "test"
        for v in range(images_per_id):
            rel = f"synthetic/{pid:05d}_{v:02d}.jpg"
            view_seed = int(rng.integers(2 ** 31))
            captions = [describe(ident, rng) for _ in range(2)]
            records.append({"split": split, "captions": captions, "file_path": rel, "id": pid,
                            "processed_tokens": [re.findall(r"[a-z]+", c.lower()) for c in captions]})
            truth[rel] = dict(ident.attributes)
            jobs.append((ident, view_seed, os.path.join(labeled_dir, "imgs", rel)))
    pool_truth = {}
    num_pool_ids = (num_pool_images + pool_views_per_id - 1) // pool_views_per_id
    k = 0
    for _ in range(num_pool_ids):
        ident = sample_identity(rng)
        for _ in range(pool_views_per_id):
            if k == num_pool_images:
                break
            rel = f"{k // 1000:03d}/{k:06d}.jpg"
            pool_truth[rel] = dict(ident.attributes)
            jobs.append((ident, int(rng.integers(2 ** 31)), os.path.join(pool_dir, "imgs", rel)))
            k += 1
    todo = [j for j in jobs if not os.path.exists(j[2])]
    for ident, view_seed, path in tqdm(todo, desc="rendering", disable=not show_progress or not todo, unit="img"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_jpg(path, render_person(ident, view_seed, size))
    atomic_write_json(os.path.join(labeled_dir, "reid_raw.json"), records)
    atomic_write_json(os.path.join(labeled_dir, "attributes.json"), truth)
    atomic_write_json(os.path.join(pool_dir, "attributes.json"), pool_truth)
    counts = {"labeled_images": len(records), "labeled_ids": num_labeled_ids, "pool_images": k, "rendered": len(todo)}
    logger.info("synthetic world in %s: %s", out_root, json.dumps(counts))
    return counts
