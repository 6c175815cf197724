"""Showing search results: a PNG grid (OpenCV) and a self-contained HTML page (base64 images)."""
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

from ..data.transforms import read_image
from ..utils.io import atomic_open, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["Hit", "QueryResult", "render_grid_png", "render_html", "results_to_json"]


@dataclass
class Hit:
    """One retrieved gallery image: its path (or name), score and 1-based rank; ``correct``
    (when known, e.g. on a labeled test split) marks whether it shows the described person."""

    path: str
    score: float
    rank: int
    correct: bool | None = None


@dataclass
class QueryResult:
    """A query and its top-k hits, best first."""

    query: str
    hits: list[Hit] = field(default_factory=list)
    truncated: bool = False
    num_tokens: int = 0


def results_to_json(results: Sequence[QueryResult]) -> list[dict]:
    """Plain-JSON form: ``[{"query", "truncated", "num_tokens", "results": [{"rank","path","score"}]}]``."""
    return [{"query": r.query, "truncated": r.truncated, "num_tokens": r.num_tokens,
             "results": [{"rank": h.rank, "path": h.path, "score": float(h.score)} for h in r.hits]}
            for r in results]


def _thumbnail(path: str, height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8 BGR tile of the image (aspect kept, padded), or a grey
    'unreadable' tile when the file cannot be read."""
    tile = np.full((height, width, 3), 235, np.uint8)
    try:
        rgb = np.asarray(read_image(path))
    except Exception as e:  # show the failure in place of the image
        logger.warning("cannot show %s: %s", path, e)
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
                    thumb_height: int = 192, thumb_width: int = 96) -> np.ndarray:
    """Write a PNG with one row per query: the query text, then the top-k images with
    rank and score under each. Returns the (H, W, 3) uint8 BGR canvas that was written."""
    if not results:
        raise ValueError("no results to render")
    k = max(1, max(len(r.hits) for r in results))
    font, pad, line_h, label_h = cv2.FONT_HERSHEY_SIMPLEX, 8, 16, 30
    text_w = 260
    chars = max(10, text_w // 8)
    row_h = thumb_height + label_h + 2 * pad
    width = text_w + k * (thumb_width + pad) + pad
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
            x = text_w + j * (thumb_width + pad)
            row[pad:pad + thumb_height, x:x + thumb_width] = _thumbnail(hit.path, thumb_height, thumb_width)
            if hit.correct is not None:  # green frame: the described person; red: someone else
                color = (40, 170, 40) if hit.correct else (40, 40, 220)
                cv2.rectangle(row, (x, pad), (x + thumb_width - 1, pad + thumb_height - 1), color, 3)
            cv2.putText(row, f"#{hit.rank} {hit.score:.3f}", (x, pad + thumb_height + 18), font, 0.4,
                        (0, 0, 0), 1, cv2.LINE_AA)
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
        img = read_image(path)
    except Exception as e:
        logger.warning("cannot embed %s: %s", path, e)
        return None
    if img.height > max_height:
        img = img.resize((max(1, round(img.width * max_height / img.height)), max_height), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
section {{ margin-bottom: 2em; }}
.hits {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure {{ margin: 0; text-align: center; font-size: 12px; max-width: 140px; }}
figure img {{ height: {height}px; border: 1px solid #ccc; }}
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
    file or network access) with each query, its hits, ranks and scores. Returns the HTML."""
    sections = []
    for r in results:
        figs = []
        for h in r.hits:
            uri = _data_uri(h.path, max_height)
            img = (f'<img src="{uri}" alt="{html.escape(os.path.basename(h.path))}">' if uri
                   else '<div class="warn">unreadable</div>')
            figs.append(f'<figure>{img}<figcaption>#{h.rank} score {h.score:.4f}<br>'
                        f'{html.escape(h.path)}</figcaption></figure>')
        warn = (f'<p class="warn">query truncated ({r.num_tokens} tokens)</p>' if r.truncated else "")
        sections.append(f'<section><h2>{html.escape(r.query)}</h2>{warn}<div class="hits">{"".join(figs)}'
                        f'</div></section>')
    page = _PAGE.format(title=html.escape(title), height=max_height // 2, sections="\n".join(sections))
    atomic_write_text(out_path, page)
    return page
