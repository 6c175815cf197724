"""MOTChallenge box files (``gt/gt.txt``, ``det/det.txt``) and sequence descriptions
(``seqinfo.ini``): reading with errors that name the file and line, atomic writing.

A row is ``frame, id, x, y, w, h, score, ...``: ``frame`` 1-based, ``id`` the track / identity
(``-1`` in detection files), the box's top-left corner ``(x, y)`` and size ``(w, h)`` in pixels,
``score`` the detector confidence (in ground truth, 1 = consider the box), then optional further
columns (``-1, -1, -1`` world coordinates in MOT15-style files, class and visibility in MOT17
ground truth), kept as they are.
"""
from __future__ import annotations

import configparser
import io
import math
import os
from dataclasses import dataclass
from typing import Iterable

from ..utils.io import atomic_open, atomic_write_text

__all__ = ["MotRow", "read_mot", "write_mot", "read_seqinfo", "write_seqinfo", "SEQINFO_KEYS"]

SEQINFO_KEYS = ("name", "imDir", "frameRate", "seqLength", "imWidth", "imHeight", "imExt")


@dataclass(frozen=True)
class MotRow:
    """One box of a MOT file. ``x, y`` is the top-left corner in pixels, (0, 0) being the image's
    top-left pixel as numpy / OpenCV index it; ``extra`` holds the columns after ``score``."""

    frame: int
    id: int
    x: float
    y: float
    w: float
    h: float
    score: float = 1.0
    extra: tuple[float, ...] = (-1.0, -1.0, -1.0)

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        """The box as ``(x0, y0, x1, y1)`` (``x1 = x + w``, exclusive)."""
        return (self.x, self.y, self.x + self.w, self.y + self.h)


def _number(text: str) -> float:
    return float(text.strip())


def read_mot(path: str | os.PathLike) -> list[MotRow]:
    """Parse a MOT ``gt.txt`` / ``det.txt``: one row per non-empty line, at least 6 comma-separated
    numbers ``frame, id, x, y, w, h``, then optionally ``score`` (1.0 when absent) and more.

    Raises:
        FileNotFoundError: no such file (named).
        ValueError: a line that is not such a row; the message gives ``file:line``, the line and
            what was expected (integer frame >= 1, integer id, finite numbers, w > 0 and h > 0).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MOT box file not found: {path}")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            where = f"{path}:{lineno}"
            parts = text.split(",")
            if len(parts) < 6:
                raise ValueError(f"{where}: expected at least 6 comma-separated numbers (frame, id, x, y, w, h"
                                 f"[, score, ...]), got {len(parts)} field(s): {text!r}")
            try:
                values = [_number(p) for p in parts]
            except ValueError:
                raise ValueError(f"{where}: every field must be a number (frame, id, x, y, w, h[, score, ...]), "
                                 f"got {text!r}") from None
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{where}: non-finite number (nan/inf) in {text!r}")
            frame, ident, x, y, w, h = values[:6]
            if frame != int(frame) or frame < 1:
                raise ValueError(f"{where}: frame must be an integer >= 1 (MOT frames are 1-based), got {parts[0].strip()!r}")
            if ident != int(ident):
                raise ValueError(f"{where}: id must be an integer (-1 for detections), got {parts[1].strip()!r}")
            if w <= 0 or h <= 0:
                raise ValueError(f"{where}: box width and height must be > 0, got w={parts[4].strip()}, h={parts[5].strip()}")
            score = values[6] if len(values) > 6 else 1.0
            rows.append(MotRow(int(frame), int(ident), x, y, w, h, score, tuple(values[7:])))
    return rows


def _fmt(v: float) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else format(v, ".10g")


def write_mot(path: str | os.PathLike, rows: Iterable[MotRow]) -> None:
    """Write ``rows`` (:class:`MotRow`) as a MOT file, atomically (``frame,id,x,y,w,h,score,extra...``)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(",".join([str(int(r.frame)), str(int(r.id))] + [_fmt(v) for v in (r.x, r.y, r.w, r.h, r.score, *r.extra)]) + "\n")


def write_seqinfo(path: str | os.PathLike, name: str, im_dir: str, frame_rate: float, seq_length: int,
                  im_width: int, im_height: int, im_ext: str = ".jpg", **extra) -> None:
    """Write MOT's ``seqinfo.ini`` (section ``[Sequence]``, keys :data:`SEQINFO_KEYS` then ``extra``)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # MOT's keys are camelCase
    parser["Sequence"] = {"name": name, "imDir": im_dir, "frameRate": _fmt(frame_rate), "seqLength": str(int(seq_length)),
                          "imWidth": str(int(im_width)), "imHeight": str(int(im_height)), "imExt": im_ext,
                          **{k: str(v) for k, v in extra.items()}}
    buf = io.StringIO()
    parser.write(buf, space_around_delimiters=False)
    atomic_write_text(path, buf.getvalue())


def read_seqinfo(path: str | os.PathLike) -> dict:
    """Read a ``seqinfo.ini``: the ``[Sequence]`` keys, ``frameRate`` as float and ``seqLength``,
    ``imWidth``, ``imHeight`` as int. Raises ``ValueError`` naming the file and the missing or bad key."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"seqinfo.ini not found: {path}")
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as e:
        raise ValueError(f"{path}: not an INI file ({e})") from None
    if "Sequence" not in parser:
        raise ValueError(f"{path}: no [Sequence] section")
    info = dict(parser["Sequence"])
    for key in SEQINFO_KEYS:
        if key not in info:
            raise ValueError(f"{path}: [Sequence] lacks the key {key!r} (expected {', '.join(SEQINFO_KEYS)})")
    try:
        info["frameRate"] = float(info["frameRate"])
        for key in ("seqLength", "imWidth", "imHeight"):
            info[key] = int(info[key])
    except ValueError as e:
        raise ValueError(f"{path}: bad number in [Sequence] ({e})") from None
    return info
