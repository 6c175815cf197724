"""Videos for the search index: frames sampled at a fixed rate, near-duplicate crops dropped, and
the source frame of an entry read back for display.

* :func:`sample_frames` reads a video with ``cv2.VideoCapture`` (OpenCV's FFmpeg back-end: .mp4,
  .avi, .mkv, .mov, .webm, ... whatever FFmpeg decodes) and yields one frame every ``1 / fps``
  seconds of video time: frame ``i`` (0-based, time ``i / video_fps``) is taken when it is the
  first frame at or after the next sampling time ``k / fps`` (k = 0, 1, ...). Frames that are not
  taken are only grabbed, not decoded into images. ``fps <= 0`` or ``fps >=`` the video's rate
  takes every frame. When the container gives no frame rate, the decoder's timestamps
  (``CAP_PROP_POS_MSEC``) are used instead.
* :class:`Deduplicator` keeps a crop once while the same person stays put: a crop is a duplicate
  of an entry already kept when the two boxes overlap by IoU above ``dedup_iou`` and the
  features' cosine similarity is above ``dedup_sim``; a kept entry stays the reference for as
  long as every sampled frame holds a duplicate of it (so a person standing still for a while
  gives one entry, a walking person one per sampled frame, or fewer when they walk slowly).
* :func:`read_source_frame` returns the pixels an entry's box refers to: the upright photo, or
  the video frame at the entry's 0-based frame index.

File names that are not valid UTF-8 are opened through a temporary symbolic link with an ASCII
name (OpenCV takes UTF-8 file names only).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Iterator, Sequence

import cv2
import numpy as np

from ..data.image_files import display_path, is_video, read_image_rgb
from .detectors import box_iou

logger = logging.getLogger(__name__)

__all__ = ["VideoFrame", "VideoInfo", "video_info", "sample_frames", "sampled_indices", "Deduplicator",
           "read_source_frame", "open_video"]


@dataclass
class VideoFrame:
    """One sampled frame: 0-based ``index``, ``time_s`` (seconds from the start) and the (H, W, 3)
    uint8 RGB ``image``."""

    index: int
    time_s: float
    image: np.ndarray


@dataclass
class VideoInfo:
    """What the container says: frames per second (0 when unknown), frame count (0 when unknown),
    (width, height)."""

    fps: float
    num_frames: int
    size: tuple[int, int]


@contextlib.contextmanager
def open_video(path: str) -> Iterator[cv2.VideoCapture]:
    """A ``cv2.VideoCapture`` of ``path``, released on exit; OSError naming the file when OpenCV
    cannot open it."""
    link_dir = None
    name = path
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8: OpenCV gets an ASCII link to the file
        link_dir = tempfile.mkdtemp(prefix="unipt-video-")
        name = os.path.join(link_dir, "video" + os.path.splitext(path)[1].encode("ascii", "replace").decode())
        os.symlink(os.fsencode(os.path.abspath(path)), os.fsencode(name))
    cap = cv2.VideoCapture(name)
    try:
        if not cap.isOpened():
            raise OSError(f"OpenCV cannot open the video {display_path(path)} (not a video, or a codec its "
                          f"FFmpeg lacks)")
        yield cap
    finally:
        cap.release()
        if link_dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(name)
                os.rmdir(link_dir)


def _info(cap: cv2.VideoCapture) -> VideoInfo:
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if not math.isfinite(fps) or fps <= 0 or fps > 1000:
        fps = 0.0
    n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    n = int(n) if n and math.isfinite(n) and n > 0 else 0
    return VideoInfo(fps, n, (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))))


def video_info(path: str) -> VideoInfo:
    """Frame rate, frame count and size of a video (as its container reports them)."""
    with open_video(path) as cap:
        return _info(cap)


def sampled_indices(num_frames: int, video_fps: float, fps: float) -> list[int]:
    """0-based indices of the frames :func:`sample_frames` takes from a video of ``num_frames``
    frames at ``video_fps`` (the same rule, for a known frame count)."""
    if fps <= 0 or fps >= video_fps:
        return list(range(num_frames))
    out, k = [], 0
    for i in range(num_frames):
        if i / video_fps + 1e-9 >= k / fps:
            out.append(i)
            k = math.floor(i / video_fps * fps + 1e-9) + 1
    return out


def sample_frames(path: str, fps: float = 2.0) -> Iterator[VideoFrame]:
    """Frames of the video ``path`` sampled at ``fps`` per second of video time (module docstring).

    Raises OSError naming the file when it cannot be opened; a read error part-way ends the
    iteration with a warning (the frames before it were yielded).
    """
    with open_video(path) as cap:
        info = _info(cap)
        every = fps <= 0 or (info.fps > 0 and fps >= info.fps)
        i, k = 0, 0
        while True:
            if not cap.grab():
                if info.num_frames and i < info.num_frames:
                    logger.warning("%s: decoding stopped at frame %d of the %d the container announces",
                                   display_path(path), i, info.num_frames)
                return
            t = i / info.fps if info.fps > 0 else float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
            if every or t + 1e-9 >= k / fps:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    logger.warning("%s: frame %d cannot be decoded; stopping there", display_path(path), i)
                    return
                if not every:
                    k = math.floor(t * fps + 1e-9) + 1
                yield VideoFrame(i, float(t), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            i += 1


def read_source_frame(source: str, frame: int | None = None, max_side: int | None = None
                      ) -> tuple[np.ndarray, tuple[int, int]]:
    """The pixels an index entry's box refers to: (H, W, 3) uint8 RGB and the source (width, height).

    ``source`` is a photo (read upright with ``read_image_rgb``) or a video (frame ``frame``,
    0-based); ``max_side`` downscales the result (boxes then scale by ``image width / width``).
    Raises OSError naming the file and the frame when it cannot be read.
    """
    if is_video(source):
        with open_video(source) as cap:
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(frame or 0))
            ok, bgr = cap.read()
        if not ok or bgr is None:
            raise OSError(f"video {display_path(source)}: frame {frame} cannot be read")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        if max_side and max(h, w) > max_side:
            f = max_side / max(h, w)
            rgb = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        return rgb, (w, h)
    img, size = read_image_rgb(source, max_side=max_side)
    return np.asarray(img), size


class Deduplicator:
    """Drops consecutive near-duplicate crops of one video (module docstring).

    Call :meth:`filter` once per sampled frame, in frame order, with that frame's boxes and
    features; it returns which of them to keep.
    """

    def __init__(self, dedup_iou: float = 0.7, dedup_sim: float = 0.9):
        if not 0.0 <= dedup_iou <= 1.0:
            raise ValueError(f"--dedup-iou must be in [0, 1]; got {dedup_iou}")
        if not -1.0 <= dedup_sim <= 1.0:
            raise ValueError(f"--dedup-sim must be in [-1, 1]; got {dedup_sim}")
        self.dedup_iou, self.dedup_sim = float(dedup_iou), float(dedup_sim)
        self._refs: list[tuple[Sequence[float], np.ndarray]] = []  # (box, L2-normalised feature) kept
        self.dropped = 0

    def filter(self, boxes: Sequence[Sequence[float]], features: np.ndarray) -> list[bool]:
        """Per crop of this frame: True = keep (a new entry), False = a duplicate of a kept one.

        Args:
            boxes: the frame's (x, y, w, h) boxes.
            features: (len(boxes), D) features of their crops.
        """
        if not len(boxes):  # nobody in this frame: every chain ends
            self._refs = []
            return []
        feats = np.asarray(features, np.float64).reshape(len(boxes), -1)
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        feats = feats / np.where(norms > 0, norms, 1.0)
        keep, refs, used = [], [], set()
        for box, feat in zip(boxes, feats):
            match = None
            for j, (rbox, rfeat) in enumerate(self._refs):
                if j in used:
                    continue
                if box_iou(box, rbox) > self.dedup_iou and float(feat @ rfeat) > self.dedup_sim:
                    match = j
                    break
            if match is None:
                keep.append(True)
                refs.append((tuple(box), feat))
            else:
                used.add(match)
                keep.append(False)
                refs.append(self._refs[match])  # the kept entry stays the reference
                self.dropped += 1
        self._refs = refs  # references not matched in this frame end here
        return keep
