"""The synthetic world as an image-ReID set in Market-1501's layout, for fast-reid's own ``Market1501``.

``write_market1501(out_root, ...)`` renders people of the synthetic world (identities from
``attributes.sample_identity``, views from ``renderer.render_person``) seen by several cameras
and writes them where fast-reid's registered ``Market1501`` dataset reads them, with
DATASETS.ROOT = ``out_root``::

    <out_root>/Market-1501-v15.09.15/
        bounding_box_train/0001_c1s1_000001_01.jpg ...   training ids 1..T, every view
        query/                                           one view per test id
        bounding_box_test/                               the test ids' other views (+ distractors)
        attributes.json                                  file name -> the person's attribute ids

File names are Market-1501's ``<pid:04d>_c<camera>s<sequence>_<frame:06d>_<box:02d>.jpg``:
fast-reid parses the person id and camera from them (``([-\\d]+)_c(\\d)``). Each identity's
``images_per_id`` views are taken by distinct cameras (a random first camera, then the next
ones in turn), so every query has gallery views of its person from other cameras, which is
what Market-1501's evaluation counts (gallery views of the query's person from the query's own
camera are left out by fast-reid's ``ReidEvaluator``). Each camera has its own colour gain per
channel (drawn once per world), so a person looks a little different from camera to camera.
Distractors are people of no other split, written to the gallery with person id 0 (Market's
"0000" distractor label; fast-reid keeps them in the gallery as non-matching images).

Deterministic in ``seed``; files already on disk are not rendered again (a re-run with the
same arguments resumes and yields identical files); each file is written atomically.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
from tqdm import tqdm

from ..utils.io import atomic_write_json
from .attributes import sample_identity
from .renderer import render_person
from .world import _write_jpg

__all__ = ["MARKET_FOLDER", "MARKET_SUBSETS", "market_file_name", "write_market1501"]

logger = logging.getLogger(__name__)

#: the folder fast-reid's Market1501 looks for under DATASETS.ROOT
MARKET_FOLDER = "Market-1501-v15.09.15"
#: subset -> folder, as fast-reid's Market1501 reads them
MARKET_SUBSETS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_MAX_CAMERAS = 6  # fast-reid's Market1501 accepts cameras 1..6
_MAX_PID = 1501  # and person ids 0..1501
_CAMERA_GAIN = (0.85, 1.15)  # range of each camera's per-channel colour gain


def market_file_name(pid: int, camera: int, frame: int, sequence: int = 1, box: int = 1) -> str:
    """Market-1501's image name, e.g. ``market_file_name(1, 1, 151) == "0001_c1s1_000151_01.jpg"``."""
    return f"{int(pid):04d}_c{int(camera)}s{int(sequence)}_{int(frame):06d}_{int(box):02d}.jpg"


def _check(name: str, value: int, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        bound = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"write_market1501: {name} = {value!r}; expected {bound}")
    return int(value)


def write_market1501(out_root: str, num_train_ids: int = 100, num_test_ids: int = 100, images_per_id: int = 4,
                     num_cameras: int = 4, num_distractors: int = 0, size: tuple[int, int] = (128, 64),
                     seed: int = 0, show_progress: bool = True) -> dict:
    """Render and write the Market-1501-layout set under ``out_root`` (see the module docstring).

    Args:
        out_root: the folder to use as DATASETS.ROOT (``Market-1501-v15.09.15/`` is made in it).
        num_train_ids: training identities (person ids 1..num_train_ids).
        num_test_ids: test identities (the next ids): one query view each, the other
            ``images_per_id - 1`` views in the gallery.
        images_per_id: views per identity (2..num_cameras: each from another camera).
        num_cameras: cameras 1..num_cameras (<= 6, fast-reid's Market-1501 range).
        num_distractors: gallery images of other people, person id 0.
        size: (H, W) of every image.
        seed: the world's seed.
        show_progress: a tqdm bar while rendering.
    Returns:
        the counts written, computed while writing: {"train_ids", "train_images", "test_ids",
        "query_images", "gallery_images" (distractors included), "distractors", "cameras",
        "rendered" (files rendered by this call), "data_dir"}.
    Raises:
        ValueError: an argument out of its range, naming it.
    """
    num_train_ids = _check("num_train_ids", num_train_ids, 1)
    num_test_ids = _check("num_test_ids", num_test_ids, 1, _MAX_PID - num_train_ids)
    num_cameras = _check("num_cameras", num_cameras, 2, _MAX_CAMERAS)
    images_per_id = _check("images_per_id", images_per_id, 2, num_cameras)
    num_distractors = _check("num_distractors", num_distractors, 0)
    if len(size) != 2 or min(int(s) for s in size) < 16:
        raise ValueError(f"write_market1501: size = {size!r}; expected (height, width), each >= 16 pixels")
    size = (int(size[0]), int(size[1]))
    rng = np.random.default_rng(seed)
    gains = rng.uniform(*_CAMERA_GAIN, size=(num_cameras + 1, 3))  # row c: camera c (row 0 unused)
    data_dir = os.path.join(out_root, MARKET_FOLDER)
    jobs: list[tuple] = []  # (identity, view seed, camera, path)
    truth: dict[str, dict] = {}
    counts = {"train_images": 0, "query_images": 0, "gallery_images": 0}
    frame = 0

    def add(ident, pid: int, camera: int, subset: str) -> None:
        nonlocal frame
        frame += 1
        name = market_file_name(pid, camera, frame)
        jobs.append((ident, int(rng.integers(2 ** 31)), camera, os.path.join(data_dir, MARKET_SUBSETS[subset], name)))
        truth[f"{MARKET_SUBSETS[subset]}/{name}"] = dict(ident.attributes)
        counts[f"{subset}_images"] += 1

    for pid in range(1, num_train_ids + num_test_ids + 1):
        ident = sample_identity(rng)
        first = int(rng.integers(num_cameras))
        for v in range(images_per_id):
            camera = (first + v) % num_cameras + 1
            subset = "train" if pid <= num_train_ids else ("query" if v == 0 else "gallery")
            add(ident, pid, camera, subset)
    for _ in range(num_distractors):
        add(sample_identity(rng), 0, int(rng.integers(num_cameras)) + 1, "gallery")

    todo = [j for j in jobs if not os.path.exists(j[3])]
    for ident, view_seed, camera, path in tqdm(todo, desc="rendering Market-1501 layout", unit="img",
                                               disable=not show_progress or not todo):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img = render_person(ident, view_seed, size).astype(np.float32) * gains[camera]
        _write_jpg(path, np.clip(np.rint(img), 0, 255).astype(np.uint8))
    for folder in MARKET_SUBSETS.values():
        os.makedirs(os.path.join(data_dir, folder), exist_ok=True)
    atomic_write_json(os.path.join(data_dir, "attributes.json"), truth)
    out = {"train_ids": num_train_ids, "train_images": counts["train_images"], "test_ids": num_test_ids,
           "query_images": counts["query_images"], "gallery_images": counts["gallery_images"],
           "distractors": num_distractors, "cameras": num_cameras, "rendered": len(todo), "data_dir": data_dir}
    logger.info("synthetic Market-1501 layout in %s: %s", data_dir, json.dumps(out))
    return out
