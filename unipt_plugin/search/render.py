"""Showing search results: a PNG grid (OpenCV) and a self-contained HTML page (base64 images).

Hits cut from scene photos and video frames (``Hit.source`` and ``Hit.box`` set) are shown
with, beside the crop, their source photo or frame (read back with
``unipt_plugin.search.video.read_source_frame``, downscaled) with the box drawn in red, and the
frame's time in the video.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import os
import textwrap
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from ..data.image_files import display_path, read_image_rgb
from ..utils.io import atomic_open, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["Hit", "QueryResult", "render_grid_png", "render_html", "results_to_json", "format_time",
           "source_with_box"]


@dataclass
class Hit:
    """One retrieved gallery image: its path (or name), score and 1-based rank; ``correct``
    (when known, e.g. on a labeled test split) marks whether it shows the described person.

    For an entry cut from a scene: ``source`` (the photo or video), ``frame`` (0-based frame
    index in the video; None for a photo), ``time_s`` (seconds into the video), ``box``
    ``(x, y, w, h)`` in source pixels and ``det_score`` (the detector's score); all None for an
    image indexed whole.
    """

    path: str
    score: float
    rank: int
    correct: bool | None = None
    source: str | None = None
    frame: int | None = None
    time_s: float | None = None
    box: tuple[int, int, int, int] | None = None
    det_score: float | None = None


@dataclass
class QueryResult:
    """A query and its top-k hits, best first."""

    query: str
    hits: list[Hit] = field(default_factory=list)
    truncated: bool = False
    num_tokens: int = 0


def _hit_json(h: Hit) -> dict:
    out = {"rank": h.rank, "path": h.path, "score": float(h.score)}
    if h.source is not None:
        out.update(source=h.source, frame=h.frame, time_s=h.time_s,
                   box=None if h.box is None else [int(v) for v in h.box], det_score=h.det_score)
    return out


def results_to_json(results: Sequence[QueryResult]) -> list[dict]:
    """Plain-JSON form: ``[{"query", "truncated", "num_tokens", "results": [{"rank", "path", "score"}]}]``;
    hits cut from scenes also carry ``"source", "frame", "time_s", "box", "det_score"``."""
    return [{"query": r.query, "truncated": r.truncated, "num_tokens": r.num_tokens,
             "results": [_hit_json(h) for h in r.hits]}
            for r in results]


def format_time(seconds: float) -> str:
    """``h:mm:ss.s`` (or ``m:ss.s`` under an hour) of a time in seconds."""
    tenths = int(round(float(seconds) * 10))
    h, rest = divmod(tenths, 36000)
    m, rest = divmod(rest, 600)
    text = f"{m:02d}:{rest // 10:02d}.{rest % 10}" if h else f"{m}:{rest // 10:02d}.{rest % 10}"
    return f"{h}:{text}" if h else text


def _where(h: Hit) -> str:
    """Short text of where a scene hit comes from: ``name t=m:ss.s (frame f)`` or ``name``."""
    name = os.path.basename(display_path(h.source or ""))
    if h.time_s is not None:
        return f"{name} t={format_time(h.time_s)}" + (f" (frame {h.frame})" if h.frame is not None else "")
    return name


def _has_context(h: Hit) -> bool:
    return h.source is not None and h.box is not None


def source_with_box(hit: Hit, max_side: int, cache: dict | None = None) -> np.ndarray | None:
    """(h, w, 3) uint8 BGR of the hit's source photo / frame, downscaled to ``max_side``, with the
    box drawn in red; None when the hit has no source or it cannot be read (logged)."""
    if not _has_context(hit):
        return None
    from .video import read_source_frame  # (render is imported by the lighter modules too)

    key = (hit.source, hit.frame)
    if cache is not None and key in cache:
        got = cache[key]
    else:
        try:
            got = read_source_frame(hit.source, hit.frame, max_side=max_side)
        except Exception as e:  # noqa: BLE001  (moved or deleted since indexing: shown as missing)
            logger.warning("cannot show the source %s (frame %s): %s", display_path(hit.source), hit.frame, e)
            got = None
        if cache is not None:
            cache[key] = got
    if got is None:
        return None
    rgb, (sw, _) = got
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    s = bgr.shape[1] / sw
    x, y, w, h = (float(v) * s for v in hit.box)
    thick = max(2, round(max(bgr.shape[:2]) / 200))
    cv2.rectangle(bgr, (int(round(x)), int(round(y))), (int(round(x + w)) - 1, int(round(y + h)) - 1), (0, 0, 255),
                  thick)
    return bgr


def _fit(bgr: np.ndarray, height: int, width: int) -> np.ndarray:
    """``bgr`` resized into a (height, width) tile, aspect kept, padded with light grey."""
    tile = np.full((height, width, 3), 235, np.uint8)
    h, w = bgr.shape[:2]
    scale = min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA)
    y, x = (height - nh) // 2, (width - nw) // 2
    tile[y:y + nh, x:x + nw] = img
    return tile


def _thumbnail(path: str, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8 BGR tile of the image (aspect kept, padded), or a grey
    'unreadable' tile when the file cannot be read."""
    tile = np.full((height, width, 3), 235, np.uint8)
    try:
        rgb = np.asarray(read_image_rgb(path)[0])
    except Exception as e:  # show the failure in place of the image
        logger.warning("cannot show %s: %s", display_path(path), e)
        cv2.putText(tile, "unreadable", (4, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 200), 1)
        return tile
    h, w = rgb.shape[:2]
    scale = min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (nw, nh), interpolation=cv2.INTER_AREA)
    y, x = (height - nh) // 2, (width - nw) // 2
    tile[y:y + nh, x:x + nw] = img
    return tile


def render_grid_png(results: Sequence[QueryResult], out_path: str | os.PathLike,
                    thumb_height: int = 192, thumb_width: int = 96, context_width: int = 256) -> np.ndarray:
    """Write a PNG with one row per query: the query text, then the top-k images with
    rank and score under each; a hit cut from a scene also shows, right of its crop, the source
    photo / frame (``context_width`` x ``thumb_height``) with the box drawn and, under it, the
    source's name and the frame's time. Returns the (H, W, 3) uint8 BGR canvas that was written."""
    if not results:
        raise ValueError("no results to render")
    k = max(1, max(len(r.hits) for r in results))
    scenes = any(_has_context(h) for r in results for h in r.hits)
    font, pad, line_h, label_h = cv2.FONT_HERSHEY_SIMPLEX, 8, 16, 30
    text_w = 260
    chars = max(10, text_w // 8)
    row_h = thumb_height + label_h + 2 * pad
    cell_w = thumb_width + pad + ((context_width + pad) if scenes else 0)
    width = text_w + k * cell_w + pad
    cache: dict = {}
    rows = []
    for r in results:
        row = np.full((row_h, width, 3), 255, np.uint8)
        lines = textwrap.wrap(r.query, chars)
        max_lines = max(1, (row_h - 2 * pad) // line_h - (1 if r.truncated else 0))
        if len(lines) > max_lines:
            lines = lines[:max_lines - 1] + [lines[max_lines - 1][: chars - 3] + "..."]
        for i, line in enumerate(lines):
            cv2.putText(row, line, (pad, pad + line_h * (i + 1)), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        if r.truncated:
            cv2.putText(row, "(query truncated)", (pad, pad + line_h * (len(lines) + 1)), font, 0.4,
                        (0, 0, 200), 1, cv2.LINE_AA)
        for j, hit in enumerate(r.hits):
            x = text_w + j * cell_w
            row[pad:pad + thumb_height, x:x + thumb_width] = _thumbnail(hit.path, thumb_height, thumb_width)
            if hit.correct is not None:  # green frame: the described person; red: someone else
                color = (40, 170, 40) if hit.correct else (40, 40, 220)
                cv2.rectangle(row, (x, pad), (x + thumb_width - 1, pad + thumb_height - 1), color, 3)
            cv2.putText(row, f"#{hit.rank} {hit.score:.3f}", (x, pad + thumb_height + 18), font, 0.4,
                        (0, 0, 0), 1, cv2.LINE_AA)
            context = source_with_box(hit, max(context_width, thumb_height) * 2, cache)
            if context is not None:
                cx = x + thumb_width + pad
                row[pad:pad + thumb_height, cx:cx + context_width] = _fit(context, thumb_height, context_width)
                where = _where(hit)
                max_chars = max(8, context_width // 7)
                if len(where) > max_chars:
                    where = "..." + where[-(max_chars - 3):]
                cv2.putText(row, where, (cx, pad + thumb_height + 18), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(row)
    canvas = np.concatenate(rows, axis=0)
    ok, buf = cv2.imencode(".png", canvas)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the grid for {out_path}")
    with atomic_open(out_path, "wb") as f:
        f.write(buf.tobytes())
    return canvas


def _data_uri(path: str, max_height: int) -> str | None:
    """The image as a ``data:image/jpeg;base64,...`` URI, resized to at most ``max_height``."""
    try:
        img = read_image_rgb(path)[0]
    except Exception as e:
        logger.warning("cannot embed %s: %s", display_path(path), e)
        return None
    if img.height > max_height:
        img = img.resize((max(1, round(img.width * max_height / img.height)), max_height), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _bgr_data_uri(bgr: np.ndarray) -> str:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
section {{ margin-bottom: 2em; }}
.hits {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure {{ margin: 0; text-align: center; font-size: 12px; max-width: 140px; }}
figure.scene {{ max-width: 480px; }}
figure img {{ height: {height}px; border: 1px solid #ccc; }}
figure img.source {{ max-width: 340px; object-fit: contain; margin-left: 4px; }}
figcaption {{ word-break: break-all; }}
.warn {{ color: #b00; }}
</style></head><body>
<h1>{title}</h1>
{sections}
</body></html>
"""


def render_html(results: Sequence[QueryResult], out_path: str | os.PathLike, max_height: int = 256,
                title: str = "unipt-reid search results") -> str:
    """Write a self-contained HTML page (images embedded as base64 data URIs, no external
    file or network access) with each query, its hits, ranks and scores; a hit cut from a
    scene also shows its source photo / frame (longer side at most 2 * ``max_height``) with the
    box drawn, the time and frame, the box and the detector's score. Returns the HTML."""
    sections = []
    cache: dict = {}
    for r in results:
        figs = []
        for h in r.hits:
            uri = _data_uri(h.path, max_height)
            img = (f'<img src="{uri}" alt="{html.escape(os.path.basename(display_path(h.path)))}">' if uri
                   else '<div class="warn">unreadable</div>')
            context = source_with_box(h, max_height * 2, cache)
            if context is None:
                figs.append(f'<figure>{img}<figcaption>#{h.rank} score {h.score:.4f}<br>'
                            f'{html.escape(display_path(h.path))}</figcaption></figure>')
                continue
            src = (f'<img class="source" src="{_bgr_data_uri(context)}" '
                   f'alt="source of #{h.rank}: {html.escape(_where(h))}">')
            details = [f"#{h.rank} score {h.score:.4f}", html.escape(_where(h)),
                       "box " + ", ".join(str(int(v)) for v in h.box)
                       + (f" &middot; detector score {h.det_score:.3f}" if h.det_score is not None else ""),
                       html.escape(display_path(h.source))]
            figs.append(f'<figure class="scene">{img}{src}<figcaption>{"<br>".join(details)}</figcaption></figure>')
        warn = (f'<p class="warn">query truncated ({r.num_tokens} tokens)</p>' if r.truncated else "")
        sections.append(f'<section><h2>{html.escape(r.query)}</h2>{warn}<div class="hits">{"".join(figs)}'
                        f'</div></section>')
    page = _PAGE.format(title=html.escape(title), height=max_height // 2, sections="\n".join(sections))
    atomic_write_text(out_path, page)
    return page
