"""Synthetic street scenes: several people of the synthetic world composed on a street
background, as still images and as a short video, with their true boxes and identities in
MOTChallenge layout. They let the scene detectors, the video sampler and the search be tested
end to end without downloads.

Layout written by :func:`render_scene_images` (``out_dir``)::

    img1/000001.jpg ...   one independent scene per image (MOT numbering: 1-based, 6 digits)
    gt/gt.txt             frame,id,x,y,w,h,1,-1,-1,-1 per person (frame = image number)
    det/det.txt           the same boxes as a perfect detector: frame,-1,x,y,w,h,1.0,-1,-1,-1
    identities.json       {"<mot id>": {"caption": ..., "world_pid": ...}}
    seqinfo.ini           MOT's [Sequence] description (frameRate 1: the images are stills)

and by :func:`render_scene_video`: ``video.avi`` (MJPG) instead of ``img1/`` (also written with
``write_frames``), the same ``gt``, ``det``, ``identities.json``, and ``seqinfo.ini`` with the
video's ``frameRate`` and ``video=video.avi``.

Boxes are in pixels, (0, 0) the top-left pixel (numpy / OpenCV indexing); each is the person's
full extent (occluded parts included), clipped to the image where the person is cut by the frame
edge. MOT id ``k`` is ``identities[k - 1]``. People are the world's renderer's people at a larger
scale (drawn at their box size by :func:`render_person` and pasted with its person mask); each
box keeps at least ``min_visibility`` of its person's pixels visible (``SceneSet.visibility``).
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from typing import Sequence

import cv2
import numpy as np

from ..utils.io import atomic_open, atomic_write_json
from .attributes import PersonIdentity, sample_identity
from .captions import describe
from .mot import MotRow, read_mot, read_seqinfo, write_mot, write_seqinfo
from .renderer import render_person
from .street import render_street

logger = logging.getLogger(__name__)

__all__ = ["MotRow", "SceneSet", "read_mot", "write_mot", "read_seqinfo", "render_scene_images",
           "render_scene_video", "scene_identities_from_world"]

JPEG_QUALITY = 92  # as the world's crops (unipt_plugin/synthetic/world.py)
_CANVAS = 0.94  # a person spans at most this fraction of the canvas they are drawn on
# random streams, each seeded by (seed, stream, index), so that e.g. the background of image k
# does not depend on how many people it holds
_BACKGROUND, _PEOPLE, _NOISE, _CAPTIONS = range(4)


@dataclass
class SceneSet:
    """What a scene renderer wrote.

    Attributes:
        root: the output folder.
        files: image paths in frame order (``files[k - 1]`` is frame ``k``), or ``[video path]``.
        rows: the ground-truth boxes (``gt/gt.txt``), sorted by frame then id.
        identities: MOT id -> caption of the people who appear.
        world_pids: MOT id -> the world's person id (``PersonIdentity.extra["world_pid"]``) or None.
        visibility: per row, the fraction of the person's pixels visible in the frame (not covered
            by a nearer person, not outside the image).
        fps: frames per second of the video; None for images.
        size: (H, W) of the frames.
        num_frames: number of images or video frames.
    """

    root: str
    files: list[str]
    rows: list[MotRow]
    identities: dict[int, str]
    world_pids: dict[int, int | None] = field(default_factory=dict)
    visibility: list[float] = field(default_factory=list)
    fps: float | None = None
    size: tuple[int, int] = (0, 0)
    num_frames: int = 0

    def rows_of(self, frame: int) -> list[MotRow]:
        """The ground-truth rows of ``frame`` (1-based)."""
        return [r for r in self.rows if r.frame == frame]


@dataclass
class _Sprite:
    """A person cut out of its render: ``rgb`` (h, w, 3), ``mask`` (h, w) bool, and the crop's
    top-left ``(dx, dy)`` in the canvas it was drawn on (poses drawn with the same view seed
    share the canvas, so they line up)."""

    rgb: np.ndarray
    mask: np.ndarray
    dx: int
    dy: int

    @property
    def h(self) -> int:
        return self.mask.shape[0]

    @property
    def w(self) -> int:
        return self.mask.shape[1]


def _cut(img: np.ndarray, mask: np.ndarray) -> _Sprite:
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return _Sprite(img[y0:y1, x0:x1].copy(), mask[y0:y1, x0:x1].copy(), x0, y0)


def _render_sprites(identity: PersonIdentity, rng: np.random.Generator, height: int,
                    poses: Sequence[str | None] = (None,)) -> list[_Sprite]:
    """The person drawn so that an adult's box is about ``height`` px tall, once per pose
    (``None``: the identity's own action), all from one view seed. Views whose legs the
    renderer's occlusion corruption hides are redrawn with another seed (a cut-off person would
    float in the street)."""
    side = max(16, int(round(height / _CANVAS)))
    for _ in range(32):
        view_seed = int(rng.integers(2 ** 31))
        sprites = []
        for pose in poses:
            ident = identity if pose is None else replace(identity, attributes={**identity.attributes, "action": pose})
            img, mask = render_person(ident, view_seed, (side, side), return_mask=True)
            rows = np.nonzero(mask.any(axis=1))[0]
            if len(rows) == 0 or rows[-1] + 1 < 0.94 * side:
                break
            sprites.append(_cut(img, mask))
        if len(sprites) == len(poses):
            return sprites
    raise RuntimeError(f"could not render an unoccluded view of a person at height {height} px in 32 tries")


def _place_order(placements: list[tuple[_Sprite, int, int]]) -> list[int]:
    """Painter's order: people whose feet are higher in the image (farther away) first."""
    return sorted(range(len(placements)), key=lambda i: (placements[i][2] + placements[i][0].h, i))


def _clip(size, x: int, y: int, w: int, h: int):
    H, W = size
    x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
    return x0, y0, x1, y1


def _visibility(size: tuple[int, int], placements: list[tuple[_Sprite, int, int]]) -> list[float]:
    """Fraction of each placed sprite's mask pixels visible in the composed frame.
    ``placements``: (sprite, x, y) with (x, y) the sprite's top-left corner in the frame."""
    label = np.full(size, -1, np.int16)
    for i in _place_order(placements):
        s, x, y = placements[i]
        x0, y0, x1, y1 = _clip(size, x, y, s.w, s.h)
        if x1 > x0 and y1 > y0:
            region = label[y0:y1, x0:x1]
            region[s.mask[y0 - y:y1 - y, x0 - x:x1 - x]] = i
    vis = []
    for i, (s, x, y) in enumerate(placements):
        x0, y0, x1, y1 = _clip(size, x, y, s.w, s.h)
        seen = int(np.count_nonzero(label[y0:y1, x0:x1] == i)) if x1 > x0 and y1 > y0 else 0
        vis.append(seen / max(1, int(np.count_nonzero(s.mask))))
    return vis


def _compose(background: np.ndarray, placements: list[tuple[_Sprite, int, int]]) -> np.ndarray:
    out = background.copy()
    for i in _place_order(placements):
        s, x, y = placements[i]
        x0, y0, x1, y1 = _clip(out.shape[:2], x, y, s.w, s.h)
        if x1 > x0 and y1 > y0:
            m = s.mask[y0 - y:y1 - y, x0 - x:x1 - x]
            out[y0:y1, x0:x1][m] = s.rgb[y0 - y:y1 - y, x0 - x:x1 - x][m]
    return out


class _SensorNoise:
    """Gaussian sensor noise, cheap per frame: one field of rounded N(0, std) values drawn once,
    a different random window of it added to each frame (saturating uint8 arithmetic)."""

    _PAD = 32

    def __init__(self, size: tuple[int, int], std: float, rng: np.random.Generator):
        self.size, self.rng = size, rng
        if std > 0:
            field_ = np.rint(rng.standard_normal((size[0] + self._PAD, size[1] + self._PAD, 3), dtype=np.float32) * std)
            self.pos = np.clip(field_, 0, 255).astype(np.uint8)
            self.neg = np.clip(-field_, 0, 255).astype(np.uint8)
        else:
            self.pos = None

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """``img`` (H, W, 3) uint8 plus noise (a new array)."""
        if self.pos is None:
            return img
        H, W = self.size
        oy, ox = (int(v) for v in self.rng.integers(0, self._PAD + 1, 2))
        out = cv2.add(img, np.ascontiguousarray(self.pos[oy:oy + H, ox:ox + W]))
        return cv2.subtract(out, np.ascontiguousarray(self.neg[oy:oy + H, ox:ox + W]))


def _encode(img: np.ndarray, ext: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode an {ext} image")
    return buf.tobytes()


def _box_row(frame: int, mot_id: int, size, s: _Sprite, x: int, y: int) -> MotRow | None:
    x0, y0, x1, y1 = _clip(size, x, y, s.w, s.h)
    if x1 <= x0 or y1 <= y0:
        return None
    return MotRow(frame, mot_id, float(x0), float(y0), float(x1 - x0), float(y1 - y0), 1.0, (-1.0, -1.0, -1.0))


def _check_common(identities, captions, size, seed, noise_std) -> tuple[list[PersonIdentity], list[str]]:
    identities = list(identities)
    if not identities:
        raise ValueError("identities is empty: the scenes need at least one PersonIdentity")
    bad = [i for i, p in enumerate(identities) if not isinstance(p, PersonIdentity)]
    if bad:
        raise TypeError(f"identities[{bad[0]}] is a {type(identities[bad[0]]).__name__}, expected a PersonIdentity")
    if captions is None:
        captions = [describe(p, np.random.default_rng([seed, _CAPTIONS, i])) for i, p in enumerate(identities)]
    captions = [str(c) for c in captions]
    if len(captions) != len(identities):
        raise ValueError(f"captions has {len(captions)} entries but identities has {len(identities)}; give one caption "
                         "per identity, or None to write them with unipt_plugin/synthetic/captions.py")
    if len(size) != 2 or min(int(v) for v in size) < 32:
        raise ValueError(f"size must be (H, W) with both >= 32 pixels, got {tuple(size)}")
    if not (np.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be a number >= 0 (0: no noise), got {noise_std}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return identities, captions


def _check_heights(person_height, size) -> tuple[int, int]:
    lo, hi = (int(v) for v in person_height)
    if not 8 <= lo <= hi <= size[0]:
        raise ValueError(f"person_height must be (min, max) with 8 <= min <= max <= image height {size[0]}, "
                         f"got {tuple(person_height)}")
    return lo, hi


def _height_at(feet: float, street, size, heights) -> int:
    """Perspective: an adult's height grows linearly from ``heights[0]`` at the horizon to
    ``heights[1]`` at the bottom row."""
    t = (feet - street.horizon) / max(1.0, size[0] - street.horizon)
    return int(round(heights[0] + (heights[1] - heights[0]) * float(np.clip(t, 0.0, 1.0))))


def _write_common(out_dir: str, rows: list[MotRow], identities, captions, used_ids) -> tuple[dict, dict]:
    write_mot(os.path.join(out_dir, "gt", "gt.txt"), rows)
    write_mot(os.path.join(out_dir, "det", "det.txt"), [replace(r, id=-1, score=1.0) for r in rows])
    ids = {k: captions[k - 1] for k in sorted(used_ids)}
    pids = {k: identities[k - 1].extra.get("world_pid") for k in sorted(used_ids)}
    atomic_write_json(os.path.join(out_dir, "identities.json"),
                      {str(k): {"caption": ids[k], "world_pid": pids[k]} for k in ids}, indent=1)
    return ids, pids


def _remove_stale_images(img_dir: str, keep: set[str]) -> None:
    for path in glob.glob(os.path.join(img_dir, "*")):
        if re.fullmatch(r"\d{6}\.(jpg|png)", os.path.basename(path)) and os.path.abspath(path) not in keep:
            os.unlink(path)


def render_scene_images(out_dir, identities: Sequence[PersonIdentity], captions: Sequence[str] | None = None,
                        num_images: int = 8, size: tuple[int, int] = (720, 1280), people_per_image: tuple[int, int] = (2, 4),
                        person_height: tuple[int, int] = (180, 360), seed: int = 0, min_visibility: float = 0.6,
                        noise_std: float = 2.0, image_ext: str = ".jpg") -> SceneSet:
    """Render ``num_images`` independent street scenes with ``people_per_image`` (min, max) people
    each, drawn from ``identities`` (distinct within an image; people recur across images).

    Args:
        captions: one per identity (None: one written for each by ``captions.describe``).
        size: (H, W) of the images.
        person_height: an adult's box height in pixels at the horizon and at the bottom row
            (perspective in between; children are down to ~0.6 of it).
        min_visibility: each person keeps at least this fraction of their pixels visible; a
            placement that breaks it is redrawn (30 tries), then the image holds one person less.
        noise_std: standard deviation of the Gaussian sensor noise added to each image (0: none).
        image_ext: ``.jpg`` (quality 92) or ``.png`` (lossless).
    Returns:
        the :class:`SceneSet`; the files are written under ``out_dir`` (module docstring).
    """
    identities, captions = _check_common(identities, captions, size, seed, noise_std)
    size = (int(size[0]), int(size[1]))
    heights = _check_heights(person_height, size)
    lo, hi = (int(v) for v in people_per_image)
    if not 0 <= lo <= hi:
        raise ValueError(f"people_per_image must be (min, max) with 0 <= min <= max, got {tuple(people_per_image)}")
    if hi > len(identities):
        raise ValueError(f"people_per_image allows {hi} people in an image but only {len(identities)} identities were given")
    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if image_ext not in (".jpg", ".png"):
        raise ValueError(f"image_ext must be '.jpg' or '.png', got {image_ext!r}")
    if not 0.0 <= float(min_visibility) <= 1.0:
        raise ValueError(f"min_visibility must be in [0, 1], got {min_visibility}")
    out_dir = os.fspath(out_dir)
    H, W = size
    noise = _SensorNoise(size, float(noise_std), np.random.default_rng([seed, _NOISE]))
    files, rows, vis_of = [], [], {}
    for k in range(1, int(num_images) + 1):
        street = render_street(size, np.random.default_rng([seed, _BACKGROUND, k]))
        rng = np.random.default_rng([seed, _PEOPLE, k])
        n = int(rng.integers(lo, hi + 1))
        chosen = [int(i) for i in rng.choice(len(identities), n, replace=False)] if n else []
        people = []  # (mot id, sprite, feet row)
        for i in chosen:
            feet = float(rng.uniform(street.horizon + 0.03 * H, H))
            sprite = _render_sprites(identities[i], rng, _height_at(feet, street, size, heights))[0]
            people.append((i + 1, sprite, int(np.clip(round(feet), sprite.h, H))))
        placements, vis = [], []
        while people:
            for _ in range(30):
                placements = [(s, int(rng.integers(0, max(0, W - s.w) + 1)), feet - s.h) for _, s, feet in people]
                vis = _visibility(size, placements)
                if min(vis) >= min_visibility:
                    break
            else:
                logger.info("image %d: %d people do not fit with %.0f%% visible each; one fewer", k, len(people),
                            100 * min_visibility)
                people.pop()
                continue
            break
        frame = noise(_compose(street.image, placements))
        path = os.path.join(out_dir, "img1", f"{k:06d}{image_ext}")
        with atomic_open(path, "wb") as f:
            f.write(_encode(frame, image_ext))
        files.append(path)
        for (mot_id, _, _), (s, x, y), v in zip(people, placements, vis):
            row = _box_row(k, mot_id, size, s, x, y)
            rows.append(row)
            vis_of[(k, mot_id)] = v
    _remove_stale_images(os.path.join(out_dir, "img1"), {os.path.abspath(p) for p in files})
    rows.sort(key=lambda r: (r.frame, r.id))
    ids, pids = _write_common(out_dir, rows, identities, captions, {r.id for r in rows})
    write_seqinfo(os.path.join(out_dir, "seqinfo.ini"), os.path.basename(os.path.abspath(out_dir)), "img1", 1,
                  len(files), W, H, image_ext)
    logger.info("%d scene images with %d people in %s", len(files), len(rows), out_dir)
    return SceneSet(out_dir, files, rows, ids, pids, [vis_of[(r.frame, r.id)] for r in rows], None, size, len(files))


@dataclass
class _Walker:
    mot_id: int
    sprites: list[_Sprite]  # [walking pose, standing pose]
    feet: int
    x_start: float  # left edge of the walking pose's box at frame 1
    direction: int
    speed: float  # px per moving frame
    pause: tuple[int, int]  # 0-based frames [start, stop) at which the person stands still

    def at(self, f: int) -> tuple[_Sprite, int, int]:
        """Sprite and its top-left corner at 0-based frame ``f``."""
        moved = f - max(0, min(f, self.pause[1] - 1) - self.pause[0] + 1)  # steps 1..f outside the pause
        still = self.pause[0] <= f < self.pause[1]
        walk, stand = self.sprites
        s = stand if still or (moved // 2) % 2 else walk  # gait: the pose changes every two steps
        x = int(round(self.x_start + self.direction * self.speed * moved)) - walk.dx + s.dx
        return s, x, self.feet - (walk.dy + walk.h) + s.dy


def _plan_walkers(rng, people, size, num_frames) -> list[_Walker]:
    H, W = size
    walkers = []
    for mot_id, sprites, feet in people:
        bw = sprites[0].w
        lo_x, hi_x = -0.4 * bw, W - 0.6 * bw  # at least 60% of the box width inside the frame
        span = max(0.0, hi_x - lo_x)
        p_len = min(int(rng.integers(max(3, num_frames // 7), max(3, num_frames * 3 // 10) + 1)), max(0, num_frames - 2))
        p_start = int(rng.integers(1, max(2, num_frames - p_len)))
        last = num_frames - 1
        steps = max(1, last - max(0, min(last, p_start + p_len - 1) - p_start + 1))
        dist = span * float(rng.uniform(0.45, 0.9))
        direction = 1 if rng.random() < 0.5 else -1
        offset = float(rng.uniform(0.0, span - dist))
        x_start = lo_x + offset if direction == 1 else hi_x - offset
        walkers.append(_Walker(mot_id, sprites, feet, x_start, direction, dist / steps, (p_start, p_start + p_len)))
    return walkers


def render_scene_video(out_dir, identities: Sequence[PersonIdentity], captions: Sequence[str] | None = None,
                       num_frames: int = 48, fps: float = 8.0, size: tuple[int, int] = (720, 1280), num_people: int = 3,
                       seed: int = 0, person_height: tuple[int, int] | None = None, min_visibility: float = 0.6,
                       noise_std: float = 2.0, write_frames: bool = False) -> SceneSet:
    """Render a street video ``video.avi`` (MJPG, ``fps``) of ``num_frames`` frames in which
    ``num_people`` distinct people (the first MOT ids drawn from ``identities``) walk across the
    frame at constant speed, each standing still for a stretch of frames (15-30% of the video, at least 3 frames)
    somewhere in between; while walking their pose alternates every two frames.

    Args:
        person_height: as in :func:`render_scene_images`; None = (H / 4, H / 2).
        min_visibility: every person keeps at least this fraction of their pixels visible in every
            frame (occlusion and the frame edge); trajectories are redrawn (30 tries) until so.
        noise_std: per-frame Gaussian sensor noise (standing people give near-duplicate crops).
        write_frames: also write the frames as ``img1/000001.jpg ...``.
    Returns:
        the :class:`SceneSet` (``files = [video path]``, ``fps``). The frame count is checked by
        reading the video back with OpenCV before it replaces any previous ``video.avi``.
    """
    identities, captions = _check_common(identities, captions, size, seed, noise_std)
    size = (int(size[0]), int(size[1]))
    H, W = size
    heights = _check_heights(person_height if person_height is not None else (H // 4, H // 2), size)
    num_frames, num_people = int(num_frames), int(num_people)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if not 1 <= num_people <= len(identities):
        raise ValueError(f"num_people must be between 1 and the number of identities ({len(identities)}), got {num_people}")
    if not 0.0 <= float(min_visibility) <= 1.0:
        raise ValueError(f"min_visibility must be in [0, 1], got {min_visibility}")
    out_dir = os.fspath(out_dir)
    street = render_street(size, np.random.default_rng([seed, _BACKGROUND, 0]))
    rng = np.random.default_rng([seed, _PEOPLE, 0])
    chosen = [int(i) for i in rng.choice(len(identities), num_people, replace=False)]
    band = (street.horizon + 0.03 * H, float(H))
    lanes = rng.permutation(num_people)  # one depth band per person, so they rarely hide each other
    people = []
    for lane, i in zip(lanes, chosen):
        feet = band[0] + (band[1] - band[0]) * (lane + float(rng.uniform(0.1, 0.9))) / num_people
        walk, stand = _render_sprites(identities[i], rng, _height_at(feet, street, size, heights), (None, "standing"))
        people.append((i + 1, [walk, stand], int(np.clip(round(feet), max(walk.h, stand.h), H))))
    for _ in range(30):
        walkers = _plan_walkers(rng, people, size, num_frames)
        frames = [[w.at(f) for w in walkers] for f in range(num_frames)]
        vis = [_visibility(size, placed) for placed in frames]
        if min(min(v) for v in vis) >= min_visibility:
            break
    else:
        raise RuntimeError(f"could not lay out {num_people} people in a {W}x{H} video with {100 * min_visibility:.0f}% "
                           "of each visible in every frame after 30 tries; use fewer people or a larger size")
    noise = _SensorNoise(size, float(noise_std), np.random.default_rng([seed, _NOISE]))
    os.makedirs(out_dir, exist_ok=True)
    video = os.path.join(out_dir, "video.avi")
    tmp = os.path.join(out_dir, f".video.{os.getpid()}.tmp.avi")  # OpenCV picks the container by extension
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (W, H))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open a MJPG video writer for {tmp}")
    rows, vis_rows, frame_files = [], [], []
    try:
        for f, placed in enumerate(frames):
            img = noise(_compose(street.image, placed))
            writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            if write_frames:
                path = os.path.join(out_dir, "img1", f"{f + 1:06d}.jpg")
                with atomic_open(path, "wb") as fh:
                    fh.write(_encode(img, ".jpg"))
                frame_files.append(path)
            for w, (s, x, y), v in zip(walkers, placed, vis[f]):
                row = _box_row(f + 1, w.mot_id, size, s, x, y)
                if row is not None:
                    rows.append(row)
                    vis_rows.append(v)
        writer.release()
        cap = cv2.VideoCapture(tmp)
        n_read = 0
        while cap.grab():  # counts frames without decoding them
            n_read += 1
        cap.release()
        if n_read != num_frames:
            raise RuntimeError(f"{tmp}: wrote {num_frames} frames but OpenCV reads back {n_read}")
        os.replace(tmp, video)
    except BaseException:
        writer.release()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if write_frames:
        _remove_stale_images(os.path.join(out_dir, "img1"), {os.path.abspath(p) for p in frame_files})
    order = sorted(range(len(rows)), key=lambda j: (rows[j].frame, rows[j].id))
    rows, vis_rows = [rows[j] for j in order], [vis_rows[j] for j in order]
    ids, pids = _write_common(out_dir, rows, identities, captions, {w.mot_id for w in walkers})
    write_seqinfo(os.path.join(out_dir, "seqinfo.ini"), os.path.basename(os.path.abspath(out_dir)), "img1", fps,
                  num_frames, W, H, ".jpg", video="video.avi")
    logger.info("scene video %s: %d frames at %g fps, %d people", video, num_frames, fps, num_people)
    return SceneSet(out_dir, [video], rows, ids, pids, vis_rows, float(fps), size, num_frames)


def scene_identities_from_world(world_root, split: str = "test", n: int | None = None,
                                seed: int = 0) -> tuple[list[PersonIdentity], list[str]]:
    """The people of a world written by :func:`~unipt_plugin.synthetic.world.generate_world`, with
    one caption each (the first caption of their first image in ``reid_raw.json``).

    The world stores attributes and captions but not the traits the renderer needs (exact
    shades, proportions, mark), so the identities are re-sampled by replaying the world's
    random draws with ``seed`` (the ``seed`` given to ``generate_world``; the demo's
    ``--world-seed``, default 0) in ``generate_world``'s order; the replay is checked against the
    stored attributes and captions of every labeled image. ``extra["world_pid"]`` holds the
    world's person id.

    Args:
        split: ``train``, ``val`` or ``test``.
        n: the first ``n`` people of the split by id (None: all).
    Raises:
        FileNotFoundError: ``<world_root>/CUHK-PEDES/reid_raw.json`` or ``attributes.json`` missing.
        ValueError: bad split / n, or a world not generated with ``seed`` (the first file whose
            attributes or captions differ is named).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    base = os.path.join(os.fspath(world_root), "CUHK-PEDES")
    raw_path, attr_path = os.path.join(base, "reid_raw.json"), os.path.join(base, "attributes.json")
    for p in (raw_path, attr_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} not found: is {world_root} a world written by generate_world?")
    with open(raw_path, encoding="utf-8") as f:
        records = json.load(f)
    with open(attr_path, encoding="utf-8") as f:
        truth = json.load(f)
    by_id: dict[int, list[dict]] = {}
    for r in records:
        by_id.setdefault(int(r["id"]), []).append(r)
    num_ids = len(by_id)
    if sorted(by_id) != list(range(1, num_ids + 1)):
        raise ValueError(f"{raw_path}: person ids are not 1..{num_ids}; not a world written by generate_world")
    views = {len(v) for v in by_id.values()}
    if len(views) != 1:
        raise ValueError(f"{raw_path}: people have different numbers of images {sorted(views)}; not a world "
                         "written by generate_world")
    rng = np.random.default_rng(seed)
    wanted = [pid for pid in sorted(by_id) if by_id[pid][0]["split"] == split]
    if n is not None and not 1 <= int(n) <= len(wanted):
        raise ValueError(f"n must be between 1 and the {len(wanted)} people of split {split!r}, got {n}")
    if not wanted:
        raise ValueError(f"{raw_path}: the world has no people in split {split!r}")
    keep = set(wanted[:n] if n is not None else wanted)
    identities, captions = [], []
    for pid in range(1, max(keep) + 1):
        ident = sample_identity(rng)
        for r in sorted(by_id[pid], key=lambda r: r["file_path"]):
            rng.integers(2 ** 31)  # the view seed
            replayed = [describe(ident, rng) for _ in range(2)]
            if truth.get(r["file_path"]) != ident.attributes or replayed != list(r["captions"]):
                raise ValueError(f"{raw_path}: the replay with seed {seed} does not reproduce {r['file_path']} "
                                 f"({'attributes' if truth.get(r['file_path']) != ident.attributes else 'captions'} "
                                 "differ); pass the seed the world was generated with")
        if pid in keep:
            ident.extra["world_pid"] = pid
            identities.append(ident)
            captions.append(sorted(by_id[pid], key=lambda r: r["file_path"])[0]["captions"][0])
    return identities, captions
