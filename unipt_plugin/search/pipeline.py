"""The search workflows behind ``tools/search.py``: index a folder of crops, scene photos and
videos; query an index or a dataset.

Indexing (:func:`index_folder`) takes every image and video under ``--images``
(``unipt_plugin.data.image_files.scan_media``) that the index does not hold yet:

* images with the detector ``none`` are encoded whole (a folder of person crops);
* images with a person detector (``unipt_plugin.search.detectors``) are read upright and at
  most ``max_side`` pixels on their longer side (``read_image_rgb``), the detector's boxes
  (in source pixels) are cut out of them, saved as JPEGs under ``<index>/crops/`` and encoded;
* videos are sampled at ``fps`` frames per second (``unipt_plugin.search.video``), each frame
  handled like a scene photo, and near-duplicate crops of a person who stays put are kept once
  (``Deduplicator``). The index is saved after each video, so an interrupted run redoes only the
  video it was in; videos already complete are skipped.

The detector ``auto`` (the default) is ``none`` for images and ``hog`` for videos. Files that
cannot be read are skipped and listed with the reason (the report and the manifest's
``skipped``); they are tried again on the next run.
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..data import build_t2i_test_loader
from ..data.image_files import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, display_path, list_images, read_image_rgb,
                                scan_media)
from ..utils.io import atomic_open
from .detectors import Detection, Detector, DetectorOptions, build_detector
from .encoder import SearchEncoder
from .fingerprint import config_hash, weights_hash
from .index import GalleryIndex
from .render import Hit, QueryResult
from .video import Deduplicator, sample_frames, video_info

logger = logging.getLogger(__name__)

__all__ = ["IndexReport", "SceneOptions", "index_folder", "search_texts", "dataset_gallery", "list_images",
           "resolve_detectors", "CROPS_DIR"]

#: sub-folder of an index that holds the crops cut from scenes
CROPS_DIR = "crops"


@dataclass(frozen=True)
class SceneOptions:
    """How :func:`index_folder` finds people (the ``tools/search.py index`` flags, defaults there).

    Attributes:
        detector: ``auto`` (``none`` for images, ``hog`` for videos), ``none``, ``hog``,
            ``onnx:<file>`` or ``boxes:<file>`` (``--detector``).
        detector_options: the detectors' settings (``--min-box``, ``--det-threshold``, ...).
        max_side: images and frames larger than this (longer side, pixels) are downscaled before
            detection and cropping; boxes stay in source pixels (``--max-side``).
        fps: video frames sampled per second of video; 0 = every frame (``--fps``).
        dedup_iou: box IoU above which a video crop may repeat a kept one (``--dedup-iou``).
        dedup_sim: feature cosine above which it does (``--dedup-sim``); both must hold.
        crop_quality: JPEG quality of the saved crops.
    """

    detector: str = "auto"
    detector_options: DetectorOptions = field(default_factory=DetectorOptions)
    max_side: int = 1280
    fps: float = 2.0
    dedup_iou: float = 0.7
    dedup_sim: float = 0.9
    crop_quality: int = 95

    def __post_init__(self) -> None:
        if int(self.max_side) < 32:
            raise ValueError(f"--max-side must be at least 32 pixels; got {self.max_side}")
        if not float(self.fps) >= 0:
            raise ValueError(f"--fps must be >= 0 (0 = every frame); got {self.fps}")
        if not 1 <= int(self.crop_quality) <= 100:
            raise ValueError(f"crop JPEG quality must be in 1..100; got {self.crop_quality}")


@dataclass
class IndexReport:
    """What :func:`index_folder` did.

    ``found``: images and videos found; ``encoded``: entries added this run; ``skipped``:
    ``{"path", "reason"}`` per file not indexed; ``total``: entries in the index; ``rebuilt``:
    the faiss index was rebuilt with another kind; ``videos``: videos indexed this run;
    ``frames``: video frames sampled; ``detections``: person boxes found (photos and frames);
    ``duplicates``: video crops dropped as near-duplicates; ``detectors``: the detector used for
    images and for videos; ``already``: images and videos found that the index held already
    (kept as they were indexed, not read again).
    """

    found: int
    encoded: int
    skipped: list[dict[str, str]]
    total: int
    rebuilt: bool
    videos: int = 0
    frames: int = 0
    detections: int = 0
    duplicates: int = 0
    detectors: dict[str, str] = field(default_factory=dict)
    already: int = 0


def resolve_detectors(spec: str, num_images: int, num_videos: int) -> tuple[str, str]:
    """(detector spec for images, for videos) of ``--detector spec``: ``auto`` = ("none", "hog").

    ``boxes:<file>`` describes one sequence: refused (ValueError) for more than one video, or
    for videos and images together.
    """
    spec = str(spec).strip()
    if spec.lower() == "auto":
        return "none", "hog"
    if spec.lower().startswith("boxes:") and (num_videos > 1 or (num_videos and num_images)):
        raise ValueError(f"--detector {spec}: a MOT box file describes one sequence, but --images holds "
                         f"{num_videos} video(s) and {num_images} image(s); index one video, or one folder "
                         f"of images (frames 1..N in sorted order), at a time")
    return spec, spec


class _Indexer:
    """Holds the index being extended (created on the first features) and saves it."""

    def __init__(self, encoder: SearchEncoder, gi: GalleryIndex | None, index_dir: str, chash: str, whash: str,
                 kind: str | None, params: dict[str, int] | None, dirty: bool = False):
        self.encoder, self.gi, self.index_dir = encoder, gi, index_dir
        self.chash, self.whash, self.kind, self.params = chash, whash, kind, params
        self.added = 0
        self.dirty = dirty  # changed since loaded / last saved
        self.sources_done: dict[str, dict[str, Any]] = {}  # completed, not in ``gi.sources`` yet
        self.crops_dir = os.path.join(os.path.abspath(index_dir), CROPS_DIR)
        self._names: set[str] = set(gi.files) if gi is not None else set()

    def complete(self, source: str, record: dict[str, Any]) -> None:
        """Mark ``source`` (a scene photo or a video) completely processed (saved with the next save)."""
        self.sources_done[source] = record
        self.dirty = True

    def add(self, paths: Sequence[str], features: np.ndarray, entries: Sequence[dict | None]) -> None:
        if not len(paths):
            return
        if self.gi is None:
            cfg = self.encoder.cfg
            self.gi = GalleryIndex(dim=features.shape[1], config_hash=self.chash, weights_hash=self.whash,
                                   kind=self.kind or "flat", params=self.params or {},
                                   info={"weights": str(cfg.MODEL.WEIGHTS or ""),
                                         "meta_architecture": cfg.MODEL.META_ARCHITECTURE})
        self.gi.add(paths, features, entries)
        self.added += len(paths)
        self.dirty = True

    def crop_path(self, source: str, frame: int | None, box: Sequence[int]) -> str:
        """A new file name under ``crops/`` for this source, frame and box (unique in the index)."""
        digest = hashlib.sha1(os.fsencode(source)).hexdigest()
        stem = f"{digest[:16]}_{'p' if frame is None else f'f{frame:07d}'}_{box[0]}_{box[1]}_{box[2]}_{box[3]}"
        path, n = os.path.join(self.crops_dir, digest[:2], stem + ".jpg"), 1
        while path in self._names:
            n += 1
            path = os.path.join(self.crops_dir, digest[:2], f"{stem}_{n}.jpg")
        self._names.add(path)
        return path

    def save(self, skipped: list[dict[str, str]], force: bool = False) -> None:
        """Save the index when it exists and changed (or ``force``), with ``skipped`` as its list."""
        if self.gi is None or not (force or self.dirty or skipped != self.gi.skipped):
            return
        self.gi.sources.update(self.sources_done)
        self.sources_done.clear()
        self.gi.skipped = list(skipped)
        self.gi.save(self.index_dir)
        self.dirty = False


def _int_box(det: Detection) -> tuple[int, int, int, int]:
    x, y, w, h = det.box
    x0, y0 = int(round(x)), int(round(y))
    return (x0, y0, max(1, int(round(x + w)) - x0), max(1, int(round(y + h)) - y0))


def _cut(image: Image.Image, box: tuple[int, int, int, int], source_size: tuple[int, int]) -> Image.Image:
    """The ``box`` (source pixels) of ``image`` (the source, possibly downscaled)."""
    s = image.width / source_size[0]
    x0, y0 = int(round(box[0] * s)), int(round(box[1] * s))
    x1 = max(x0 + 1, int(round((box[0] + box[2]) * s)))
    y1 = max(y0 + 1, int(round((box[1] + box[3]) * s)))
    return image.crop((x0, y0, min(x1, image.width), min(y1, image.height)))


def _save_jpeg(image: Image.Image, path: str, quality: int) -> None:
    with atomic_open(path, "wb") as f:
        image.save(f, format="JPEG", quality=int(quality))


@dataclass
class _Crop:
    image: Image.Image
    entry: dict[str, Any]
    tensor: torch.Tensor | None = None


def _encode_crops(encoder: SearchEncoder, crops: Sequence[_Crop]) -> np.ndarray:
    """(len(crops), D) features of the crops' images, in batches of ``encoder.batch_size``."""
    feats = []
    for start in range(0, len(crops), encoder.batch_size):
        chunk = crops[start:start + encoder.batch_size]
        feats.append(encoder.encode_image_tensor(torch.stack([encoder.transform(c.image) for c in chunk])))
    return np.concatenate(feats, axis=0) if feats else np.zeros((0, 0), np.float32)


def _index_whole_images(ix: _Indexer, paths: Sequence[str], max_side: int, skipped: list, bar) -> None:
    """Encode images whole (detector ``none``), read in ``encoder.num_threads`` threads."""
    encoder = ix.encoder

    def load(path: str) -> tuple[torch.Tensor | None, str]:
        try:
            return encoder.transform(read_image_rgb(path, max_side=max_side)[0]), ""
        except Exception as e:  # noqa: BLE001  (any decoding failure: skipped, reported)
            return None, f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(encoder.num_threads) as pool:
        for start in range(0, len(paths), encoder.batch_size):
            chunk = list(paths[start:start + encoder.batch_size])
            kept, tensors = [], []
            for path, (tensor, reason) in zip(chunk, pool.map(load, chunk)):
                if tensor is None:
                    logger.warning("skipping unreadable image %s (%s)", display_path(path), reason)
                    skipped.append({"path": path, "reason": reason})
                else:
                    kept.append(path)
                    tensors.append(tensor)
            if tensors:
                ix.add(kept, encoder.encode_image_tensor(torch.stack(tensors)), [None] * len(kept))
            if bar is not None:
                bar.update(len(chunk))


def _detect_crops(ix: _Indexer, detector: Detector, image: Image.Image, source_size: tuple[int, int],
                  source: str, frame: int | None, time_s: float | None, order: int | None) -> list[_Crop]:
    """Run the detector on one photo / frame and cut its boxes out (not saved yet)."""
    dets = detector.detect(np.asarray(image), frame if frame is not None else order, source_size)
    crops = []
    for det in dets:
        box = _int_box(det)
        crops.append(_Crop(_cut(image, box, source_size),
                           {"source": source, "frame": frame, "time_s": time_s, "box": list(box),
                            "det_score": None if det.score is None else float(det.score)}))
    return crops


def _store(ix: _Indexer, crops: Sequence[_Crop], quality: int) -> list[str]:
    """Save the crops under ``crops/`` (each atomically); their paths."""
    paths = []
    for c in crops:
        path = ix.crop_path(c.entry["source"], c.entry["frame"], c.entry["box"])
        _save_jpeg(c.image, path, quality)
        paths.append(path)
    return paths


def _index_scene_images(ix: _Indexer, detector: Detector, paths: Sequence[str], order: dict[str, int],
                        opts: SceneOptions, skipped: list, bar, report: IndexReport) -> None:
    pending: list[_Crop] = []
    done: list[tuple[str, int]] = []  # sources whose crops are all in `pending` or added

    def flush() -> None:
        if pending:
            ix.add(_store(ix, pending, opts.crop_quality), _encode_crops(ix.encoder, pending),
                   [c.entry for c in pending])
            pending.clear()
        for source, n in done:
            ix.complete(source, {"kind": "image", "detector": detector.spec, "entries": n})
        done.clear()

    for path in paths:
        try:
            image, size = read_image_rgb(path, max_side=opts.max_side)
            crops = _detect_crops(ix, detector, image, size, path, None, None, order.get(path))
        except (OSError, ValueError) as e:
            logger.warning("skipping %s (%s)", display_path(path), e)
            skipped.append({"path": path, "reason": f"{type(e).__name__}: {e}"})
            crops = None
        if crops is not None:
            pending.extend(crops)
            done.append((path, len(crops)))
            report.detections += len(crops)
        if len(pending) >= ix.encoder.batch_size:
            flush()
        if bar is not None:
            bar.update(1)
    flush()


def _index_video(ix: _Indexer, detector: Detector, path: str, opts: SceneOptions, report: IndexReport,
                 progress: bool) -> None:
    """Sample, detect, encode, de-duplicate and add one video (saved by the caller). Its entries
    join the index only once the whole video went through: a video that fails part-way adds
    nothing (its crop files written so far are overwritten when it is redone)."""
    info = video_info(path)
    dedup = Deduplicator(opts.dedup_iou, opts.dedup_sim)
    frames: list[tuple[int, list[_Crop]]] = []
    kept_paths: list[str] = []
    kept_feats: list[np.ndarray] = []
    kept_entries: list[dict[str, Any]] = []
    bar = tqdm(total=None, unit="frame", desc=os.path.basename(display_path(path))) if progress else None

    def flush() -> None:
        crops = [c for _, cs in frames for c in cs]
        feats = _encode_crops(ix.encoder, crops) if crops else np.zeros((0, 1), np.float32)
        row = 0
        for _, cs in frames:
            n = len(cs)
            mask = dedup.filter([c.entry["box"] for c in cs], feats[row:row + n])
            keep = [c for c, k in zip(cs, mask) if k]
            if keep:
                kept_paths.extend(_store(ix, keep, opts.crop_quality))
                kept_feats.append(feats[row:row + n][np.asarray(mask, bool)])
                kept_entries.extend(c.entry for c in keep)
            row += n
        frames.clear()

    sampled = 0
    for vf in sample_frames(path, opts.fps):
        sampled += 1
        report.frames += 1
        image = Image.fromarray(vf.image)
        size = (image.width, image.height)
        if max(size) > opts.max_side:
            f = opts.max_side / max(size)
            image = image.resize((max(1, round(size[0] * f)), max(1, round(size[1] * f))), Image.BILINEAR,
                                 reducing_gap=2.0)
        crops = _detect_crops(ix, detector, image, size, path, vf.index, round(vf.time_s, 6), None)
        report.detections += len(crops)
        frames.append((vf.index, crops))
        if sum(len(cs) for _, cs in frames) >= ix.encoder.batch_size:
            flush()
        if bar is not None:
            bar.update(1)
    flush()
    if bar is not None:
        bar.close()
    if kept_paths:
        ix.add(kept_paths, np.concatenate(kept_feats, axis=0), kept_entries)
    report.duplicates += dedup.dropped
    ix.complete(path, {"kind": "video", "detector": detector.spec, "entries": len(kept_paths),
                       "fps_video": info.fps, "fps_sampled": float(opts.fps), "frames_sampled": sampled,
                       "duplicates_dropped": dedup.dropped})


def index_folder(encoder: SearchEncoder, cfg: Any, images_dir: str | os.PathLike, index_dir: str | os.PathLike,
                 kind: str | None = None, params: dict[str, int] | None = None,
                 progress: bool = False, options: SceneOptions | None = None) -> IndexReport:
    """Index the images and videos under ``images_dir`` that ``index_dir`` does not hold yet.

    A new index gets ``kind`` (default "flat") and ``params``. An existing one must have been
    made with the same config and weights (IndexMismatchError otherwise); a different ``kind``
    or ``params`` rebuilds its faiss index from the stored features without re-encoding.
    ``options`` chooses the detector and the video settings (module docstring; default
    :class:`SceneOptions`). Unreadable files are skipped and listed in the report and the
    manifest ("skipped"); they are tried again on the next run.

    Raises ValueError when nothing readable was found for a new index.
    """
    opts = options or SceneOptions()
    chash, whash = config_hash(cfg), weights_hash(encoder.model.state_dict())
    scan = scan_media(images_dir, what="--images")
    index_dir = os.fspath(index_dir)
    gi: GalleryIndex | None = None
    rebuilt = False
    if GalleryIndex.exists(index_dir):
        gi = GalleryIndex.load(index_dir, chash, whash)
        new_kind = kind or gi.kind
        new_params = {**(gi.params if new_kind == gi.kind else {}), **(params or {})}
        if new_kind != gi.kind or any(gi.params.get(k) != v for k, v in new_params.items()):
            logger.info("rebuilding the %s index as %s %s", gi.kind, new_kind, new_params)
            gi = GalleryIndex(dim=gi.dim, config_hash=chash, weights_hash=whash, kind=new_kind,
                              params=new_params, files=gi.files, features=gi.features, info=gi.info,
                              entries=gi.entries, sources=gi.sources)
            rebuilt = True
    image_spec, video_spec = resolve_detectors(opts.detector, len(scan.images), len(scan.videos))
    ix = _Indexer(encoder, gi, index_dir, chash, whash, kind, params, dirty=rebuilt)
    skipped: list[dict[str, str]] = list(scan.skipped)
    report = IndexReport(found=len(scan.images) + len(scan.videos), encoded=0, skipped=skipped, total=0,
                         rebuilt=rebuilt, detectors={"images": image_spec, "videos": video_spec})
    present = set(gi.files) if gi is not None else set()
    done_sources = dict(gi.sources) if gi is not None else {}

    # ---------------------------------------------------------------- images
    todo = [p for p in scan.images if p not in present and p not in done_sources]
    if todo:
        bar = tqdm(total=len(todo), unit="img", desc="images") if progress else None
        detector = build_detector(image_spec, opts.detector_options)
        try:
            if image_spec == "none":
                _index_whole_images(ix, todo, opts.max_side, skipped, bar)
            else:
                order = {p: i for i, p in enumerate(scan.images)}  # boxes: the sorted images are frames 1..N
                _index_scene_images(ix, detector, todo, order, opts, skipped, bar, report)
                _warn_unused_box_frames(detector, len(scan.images))
        finally:
            detector.close()
            if bar is not None:
                bar.close()
    ix.save(skipped)

    # ---------------------------------------------------------------- videos
    videos = [v for v in scan.videos if v not in done_sources]
    report.already = len(scan.images) - len(todo) + len(scan.videos) - len(videos)
    if videos:
        detector = build_detector(video_spec, opts.detector_options)
        try:
            for path in videos:
                try:
                    _index_video(ix, detector, path, opts, report, progress)
                except (OSError, ValueError) as e:
                    logger.warning("skipping video %s (%s)", display_path(path), e)
                    skipped.append({"path": path, "reason": f"{type(e).__name__}: {e}"})
                    continue
                report.videos += 1
                ix.save(skipped)  # one video complete: the next run skips it
        finally:
            detector.close()
    if ix.gi is None:
        raise ValueError(f"--images {display_path(images_dir)}: nothing indexed: {len(scan.images)} image(s) and "
                         f"{len(scan.videos)} video(s) found, {len(skipped)} skipped, no person crop kept "
                         f"(images: {', '.join(e[1:] for e in IMAGE_EXTENSIONS)}; videos: "
                         f"{', '.join(e[1:] for e in VIDEO_EXTENSIONS)})")
    ix.save(skipped)
    report.encoded, report.total = ix.added, len(ix.gi)
    return report


def _warn_unused_box_frames(detector: Detector, num_images: int) -> None:
    unused = getattr(detector, "unused_frames", None)
    if unused is None:
        return
    beyond = [f for f in unused() if f > num_images]
    if beyond:
        logger.warning("%s: %d frame number(s) beyond the %d images found (e.g. %s): their boxes were not used",
                       detector.spec, len(beyond), num_images, beyond[:5])


def search_texts(encoder: SearchEncoder, gallery: GalleryIndex, texts: Sequence[str], topk: int,
                 names: Sequence[str] | None = None) -> list[QueryResult]:
    """Encode ``texts`` and return their top-``topk`` gallery entries, best first.

    ``names`` (default ``gallery.files``) gives what each hit's ``path`` shows; each hit carries
    its entry's ``source``, ``frame``, ``time_s``, ``box`` and ``det_score`` (None for images
    indexed whole).
    """
    enc = encoder.encode_texts(texts)
    scores, ids = gallery.search(enc.features, topk)
    names = gallery.files if names is None else names
    entries = gallery.entries if len(gallery.entries) == len(gallery.files) else [None] * len(gallery.files)
    results = []
    for text, n, cut, srow, irow in zip(texts, enc.num_tokens, enc.truncated, scores, ids):
        hits = [_hit(names[int(i)], float(s), r + 1, entries[int(i)])
                for r, (s, i) in enumerate(zip(srow, irow)) if i >= 0]
        results.append(QueryResult(query=text, hits=hits, truncated=cut, num_tokens=n))
    return results


def _hit(path: str, score: float, rank: int, entry: dict[str, Any] | None) -> Hit:
    if not entry:
        return Hit(path=path, score=score, rank=rank)
    box = entry.get("box")
    return Hit(path=path, score=score, rank=rank, source=entry.get("source"),
               frame=None if entry.get("frame") is None else int(entry["frame"]),
               time_s=None if entry.get("time_s") is None else float(entry["time_s"]),
               box=None if box is None else tuple(int(v) for v in box),
               det_score=None if entry.get("det_score") is None else float(entry["det_score"]))


@torch.no_grad()
def dataset_gallery(encoder: SearchEncoder, cfg: Any, dataset_name: str) -> GalleryIndex:
    """An in-memory exact index of a registered dataset's test gallery (every test image once).

    Uses ``build_t2i_test_loader(cfg, dataset_name)``: its image batches ("images", "img_ids")
    are encoded (the caption batches are not used); hits show the gallery image paths.
    """
    loader, _ = build_t2i_test_loader(cfg, dataset_name)
    feats, img_ids = [], []
    for batch in loader:
        if "images" not in batch:
            continue
        feats.append(encoder.encode_image_tensor(batch["images"]))
        img_ids.extend(int(i) for i in batch["img_ids"])
    if not feats:
        raise ValueError(f"dataset {dataset_name}: its test loader yielded no gallery image")
    names = _gallery_names(loader.dataset, img_ids, dataset_name)
    features = np.concatenate(feats, axis=0)
    gi = GalleryIndex(dim=features.shape[1], config_hash=config_hash(cfg),
                      weights_hash=weights_hash(encoder.model.state_dict()), kind="flat")
    gi.add(names, features)
    return gi


def _gallery_names(dataset: Any, img_ids: Sequence[int], dataset_name: str) -> list[str]:
    """Image paths for the loader's ``img_ids``: the test set's ``gallery`` holds
    ``(path, person id, image id)`` tuples; ``<dataset>:<img_id>`` when it exposes none."""
    gallery = getattr(dataset, "gallery", None) or []
    by_id = {int(item[2]): str(item[0]) for item in gallery}
    return [by_id.get(int(i), f"{dataset_name}:{int(i)}") for i in img_ids]
