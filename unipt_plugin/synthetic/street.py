"""A procedural street background (numpy + OpenCV) for the synthetic scenes: sky, a row of
buildings with windows and doors, a tiled pavement with lamp posts, trees, bins and bollards,
a kerb and a road with lane markings. Deterministic given its generator."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Street", "render_street"]

_FACADES = ((150, 72, 52), (160, 158, 150), (205, 188, 150), (92, 96, 108), (178, 120, 88), (120, 130, 120))


@dataclass
class Street:
    """A rendered street: ``image`` uint8 RGB (H, W, 3); ``horizon`` the row where the buildings
    meet the pavement; ``kerb`` the row where the pavement meets the road. People stand with
    their feet between ``horizon`` and the bottom row."""

    image: np.ndarray
    horizon: int
    kerb: int


def _c(rgb) -> tuple[int, int, int]:
    return tuple(int(np.clip(v, 0, 255)) for v in rgb)


def _jitter(rgb, rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    return _c(np.asarray(rgb) + rng.integers(-amount, amount + 1, 3))


def _buildings(img: np.ndarray, horizon: int, rng: np.random.Generator) -> None:
    H, W = img.shape[:2]
    x = -int(rng.integers(0, max(1, W // 20)))
    while x < W:
        bw = max(8, int(W * rng.uniform(0.08, 0.22)))
        top = int(horizon * rng.uniform(0.02, 0.55))
        facade = _jitter(_FACADES[int(rng.integers(len(_FACADES)))], rng, 18)
        cv2.rectangle(img, (x, top), (x + bw - 1, horizon), facade, -1)
        cv2.rectangle(img, (x, top), (x + bw - 1, top + max(1, H // 180)), _c(np.subtract(facade, 40)), -1)  # cornice
        cell = max(4, int(bw * rng.uniform(0.16, 0.26)))
        win_w, win_h = max(2, int(cell * 0.6)), max(2, int(cell * 0.8))
        door_h = max(3, int((horizon - top) * 0.12))
        for wy in range(top + cell // 2, horizon - door_h - win_h, int(cell * 1.4)):
            for wx in range(x + cell // 3, x + bw - win_w - cell // 3, cell):
                lit = rng.random() < 0.2
                glass = _jitter((235, 215, 140) if lit else (60, 75, 95), rng, 12)
                cv2.rectangle(img, (wx, wy), (wx + win_w, wy + win_h), glass, -1)
                cv2.line(img, (wx, wy + win_h // 2), (wx + win_w, wy + win_h // 2), _c(np.subtract(facade, 30)), 1)
        if bw > 16:  # a door at the base
            dx = x + int(bw * rng.uniform(0.25, 0.6))
            cv2.rectangle(img, (dx, horizon - door_h), (dx + max(3, bw // 7), horizon), _jitter((70, 50, 35), rng, 15), -1)
        x += bw + (int(rng.integers(0, max(1, W // 60))) if rng.random() < 0.3 else 0)


def _pavement(img: np.ndarray, horizon: int, kerb: int, rng: np.random.Generator) -> None:
    H, W = img.shape[:2]
    stone = _jitter((172, 166, 156), rng, 14)
    img[horizon:kerb] = stone
    joint = _c(np.subtract(stone, 28))
    y, step = float(horizon), max(2.0, (kerb - horizon) / 10)
    while y < kerb:  # tile rows, wider towards the camera
        cv2.line(img, (0, int(y)), (W, int(y)), joint, 1)
        y += step
        step *= 1.18
    vp = W / 2 + rng.uniform(-0.2, 0.2) * W
    for xt in np.arange(-W, 2 * W, max(6, W / 24)):
        xb = vp + (xt - vp) * 1.7
        cv2.line(img, (int(xt), horizon), (int(xb), kerb), joint, 1)


def _road(img: np.ndarray, kerb: int, rng: np.random.Generator) -> None:
    H, W = img.shape[:2]
    kerb_h = max(2, H // 120)
    cv2.rectangle(img, (0, kerb), (W, kerb + kerb_h), _jitter((205, 205, 200), rng, 10), -1)
    asphalt = _jitter((72, 72, 76), rng, 10)
    img[kerb + kerb_h:] = asphalt
    lane_y = kerb + kerb_h + int((H - kerb - kerb_h) * rng.uniform(0.45, 0.65))
    dash, gap = max(6, W // 16), max(4, W // 24)
    paint = (235, 235, 225) if rng.random() < 0.7 else (230, 200, 60)
    for x in range(-int(rng.integers(0, dash + gap)), W, dash + gap):
        cv2.rectangle(img, (x, lane_y), (x + dash, lane_y + max(1, H // 150)), paint, -1)


def _clutter(img: np.ndarray, horizon: int, kerb: int, rng: np.random.Generator) -> None:
    H, W = img.shape[:2]
    for _ in range(int(rng.integers(2, 6))):
        x = int(rng.integers(0, W))
        base = int(rng.uniform(horizon + 0.1 * (kerb - horizon), kerb))
        size = max(4, int((base - horizon + H * 0.1) * rng.uniform(0.5, 0.9)))
        kind = int(rng.integers(4))
        if kind == 0:  # lamp post
            t = max(1, size // 40)
            cv2.line(img, (x, base), (x, base - int(size * 1.6)), (45, 48, 52), t)
            cv2.ellipse(img, (x + t * 3, base - int(size * 1.6)), (t * 4, t * 2), 0, 0, 360, (235, 225, 170), -1)
        elif kind == 1:  # tree
            cv2.rectangle(img, (x - max(1, size // 24), base - size), (x + max(1, size // 24), base), (90, 60, 35), -1)
            cv2.circle(img, (x, base - size), max(3, size // 3), _jitter((60, 120, 55), rng, 20), -1)
        elif kind == 2:  # bin
            cv2.rectangle(img, (x, base - size // 4), (x + max(2, size // 7), base), _jitter((40, 90, 60), rng, 20), -1)
        else:  # bollards
            for k in range(int(rng.integers(2, 5))):
                bx = x + k * max(4, size // 5)
                cv2.rectangle(img, (bx, base - size // 6), (bx + max(1, size // 30), base), (50, 50, 55), -1)


def render_street(size: tuple[int, int], rng: np.random.Generator) -> Street:
    """Draw a street of ``size`` (H, W) from ``rng``."""
    H, W = size
    horizon = int(H * rng.uniform(0.36, 0.46))
    kerb = horizon + int((H - horizon) * rng.uniform(0.3, 0.45))
    top, bottom = np.array(_jitter((150, 185, 230), rng, 25)), np.array(_jitter((215, 225, 235), rng, 15))
    t = np.linspace(0.0, 1.0, max(1, horizon))[:, None, None]
    img = np.empty((H, W, 3), np.uint8)
    img[:horizon] = (top * (1 - t) + bottom * t).astype(np.uint8)
    _buildings(img, horizon, rng)
    _pavement(img, horizon, kerb, rng)
    _road(img, kerb, rng)
    _clutter(img, horizon, kerb, rng)
    return Street(img, horizon, kerb)
