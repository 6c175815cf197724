"""The local search page and JSON API behind ``tools/search.py serve`` (FastAPI).

:class:`SearchService` holds what is loaded once at start-up (the :class:`SearchEncoder`, its
model in eval mode, and the :class:`GalleryIndex`) and answers one query at a time;
:func:`create_app` wraps it in a FastAPI app:

* ``GET /``: a self-contained page (inline script and style, no CDN, nothing fetched from
  anywhere but this server) with a text box, ``k`` and the results grid;
* ``GET /api/search?q=...&k=...``: the hits as JSON (rank, score, entry id, image URL, metadata);
* ``GET /api/info``: index size, kind, feature dimension and the server's limits;
* ``GET /image/{id}``: the image of index entry ``id`` (the crop that was encoded);
* ``GET /source/{id}``: the entry's source photo or video frame, downscaled, with its box drawn.

Images are served by **entry id** only: the path served is looked up in the index loaded at
start-up, never taken from the request; a request that is not a plain decimal id of an
existing entry is answered 404 without touching the file system. Every error is JSON
``{"error": message, "status": code}``.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import ipaddress
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

import cv2
import numpy as np
import torch

from ..data.image_files import display_path, read_image_rgb
from .encoder import SearchEncoder
from .index import GalleryIndex
from .pipeline import search_texts
from .render import Hit, source_with_box

logger = logging.getLogger(__name__)

__all__ = ["SearchService", "QueryError", "create_app", "running_server", "is_loopback_host",
           "render_page", "WEB_IMAGE_TYPES",
           "DEFAULT_MAX_QUERY_CHARS", "DEFAULT_MAX_TOPK", "DEFAULT_TOPK", "SOURCE_MAX_SIDE"]

DEFAULT_MAX_QUERY_CHARS = 500
DEFAULT_MAX_TOPK = 100
DEFAULT_TOPK = 10
#: Longest side (pixels) of the source frames ``/source/{id}`` sends (larger ones are downscaled).
SOURCE_MAX_SIDE = 960
#: Image files sent as they are on disk (browsers show these); other indexed images (.tif, .tiff)
#: are decoded upright and sent as PNG.
WEB_IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                   ".bmp": "image/bmp", ".gif": "image/gif"}


class QueryError(ValueError):
    """A request the service refuses: ``status`` is the HTTP status, ``str(self)`` the message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)


def is_loopback_host(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


@dataclass
class _Entry:
    """What the service may serve for one index entry (all taken from the index, never a request)."""

    image: str
    source: str | None = None
    frame: int | None = None
    time_s: float | None = None
    box: tuple[int, int, int, int] | None = None
    det_score: float | None = None


class SearchService:
    """The model and index loaded once; :meth:`search` answers a query with plain JSON data.

    Args:
        encoder: a :class:`SearchEncoder` (its model is put in eval mode).
        gallery: the :class:`GalleryIndex` to search (already checked against the model).
        index_dir: the index folder; relative entry paths are resolved against it.
        max_query_chars: longest query accepted (characters).
        max_topk: largest ``k`` accepted.
        default_topk: the page's initial ``k`` (1..max_topk).
    """

    def __init__(self, encoder: SearchEncoder, gallery: GalleryIndex, index_dir: str | os.PathLike | None = None,
                 max_query_chars: int = DEFAULT_MAX_QUERY_CHARS, max_topk: int = DEFAULT_MAX_TOPK,
                 default_topk: int = DEFAULT_TOPK):
        if int(max_query_chars) < 1:
            raise ValueError(f"--max-query-chars must be at least 1; got {max_query_chars}")
        if int(max_topk) < 1:
            raise ValueError(f"--max-topk must be at least 1; got {max_topk}")
        if not 1 <= int(default_topk) <= int(max_topk):
            raise ValueError(f"--topk must be between 1 and --max-topk ({max_topk}); got {default_topk}")
        if not len(gallery):
            raise ValueError(f"index {index_dir or '<memory>'} is empty: nothing to search")
        self.encoder = encoder
        self.encoder.model.eval()
        self.gallery = gallery
        self.index_dir = os.path.abspath(index_dir) if index_dir is not None else None
        self.max_query_chars = int(max_query_chars)
        self.max_topk = int(max_topk)
        self.default_topk = int(default_topk)
        # entry id of each indexed path (GalleryIndex refuses duplicate paths)
        self._id_of = {p: i for i, p in enumerate(gallery.files)}
        self._lock = threading.Lock()  # one query at a time: the model and faiss parameters are shared
        self.num_queries = 0
        self._source_jpeg = lru_cache(maxsize=128)(self._render_source)

    # ------------------------------------------------------------------ queries
    def parse(self, q: str | None, k: str | int | None) -> tuple[str, int]:
        """Validate the request's ``q`` and ``k`` -> (query, k); QueryError (400/422) otherwise."""
        if q is None or not q.strip():
            raise QueryError(400, "empty query: give a description of the person, e.g. "
                                  "/api/search?q=a+woman+in+a+red+coat&k=10")
        if len(q) > self.max_query_chars:
            raise QueryError(422, f"query is {len(q)} characters long; this server accepts at most "
                                  f"{self.max_query_chars} (--max-query-chars)")
        if k is None or (isinstance(k, str) and not k.strip()):
            return q, self.default_topk
        try:
            kk = int(k)
        except (TypeError, ValueError):
            raise QueryError(422, f"k must be a whole number from 1 to {self.max_topk}; got {str(k)[:40]!r}") from None
        if not 1 <= kk <= self.max_topk:
            raise QueryError(422, f"k={kk} is out of range: this server returns 1 to {self.max_topk} "
                                  f"results (--max-topk)")
        return q, kk

    def search(self, q: str | None, k: str | int | None = None) -> dict[str, Any]:
        """Answer one query: ``{"query", "k", "truncated", "num_tokens", "max_tokens", "num_entries",
        "elapsed_ms", "hits": [{"rank", "score", "id", "path", "name", "image_url", "source_url",
        "source", "frame", "time_s", "box", "det_score"}]}``, hits best first (at most ``k``).

        The text is encoded under ``torch.inference_mode`` with the model loaded at start-up,
        then searched with ``pipeline.search_texts`` (the same ranking as ``tools/search.py query``).
        ``path`` and ``source`` are shown with undecodable bytes as ``\\xXX`` (``display_path``).
        """
        query, kk = self.parse(q, k)
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
            try:
                result = search_texts(self.encoder, self.gallery, [query], kk)[0]
            except ValueError as e:  # e.g. a query the tokeniser leaves empty
                raise QueryError(400, str(e)) from e
            self.num_queries += 1
        hits = []
        for h in result.hits:
            i = self._id_of.get(h.path)
            if i is None:
                raise RuntimeError(f"hit {display_path(h.path)!r} is not an entry of the index")
            entry = self.entry(i)
            score = float(h.score)
            hits.append({
                "rank": int(h.rank), "score": score if math.isfinite(score) else None, "id": i,
                "path": display_path(entry.image), "name": os.path.basename(display_path(entry.image)),
                "image_url": f"/image/{i}",
                "source_url": f"/source/{i}" if entry.source and entry.box is not None else None,
                "source": display_path(entry.source) if entry.source else None,
                "frame": entry.frame, "time_s": entry.time_s,
                "box": list(entry.box) if entry.box is not None else None, "det_score": entry.det_score,
            })
        return {"query": query, "k": kk, "truncated": bool(result.truncated), "num_tokens": int(result.num_tokens),
                "max_tokens": int(self.encoder.max_length), "num_entries": len(self.gallery),
                "elapsed_ms": round(1000.0 * (time.perf_counter() - t0), 2), "hits": hits}

    def warm_up(self) -> float:
        """One query through the model and index (first-call costs paid before serving); seconds."""
        t0 = time.perf_counter()
        self.search("a person", 1)
        self.num_queries -= 1
        return time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        """Index size, kind, parameters, feature dimension and the request limits."""
        return {"num_entries": len(self.gallery), "kind": self.gallery.kind, "params": dict(self.gallery.params),
                "dim": int(self.gallery.dim), "max_query_chars": self.max_query_chars,
                "max_topk": self.max_topk, "default_topk": self.default_topk,
                "max_tokens": int(self.encoder.max_length),
                "meta_architecture": str(self.gallery.info.get("meta_architecture", ""))}

    # ------------------------------------------------------------------ entries
    def _resolve(self, path: str) -> str:
        if path.startswith("arrow:") or os.path.isabs(path) or self.index_dir is None:
            return path
        return os.path.join(self.index_dir, path)

    def entry(self, entry_id: int) -> _Entry:
        """Entry ``entry_id``'s image and scene metadata, from the index (``files``, ``entries``);
        QueryError(404) when there is no such entry."""
        i = int(entry_id)
        if not 0 <= i < len(self.gallery):
            raise QueryError(404, f"no index entry {entry_id}: the index has entries 0 to {len(self.gallery) - 1}")
        entries = getattr(self.gallery, "entries", None)
        meta = entries[i] if entries is not None and len(entries) == len(self.gallery) else None
        meta = meta or {}
        box = meta.get("box")
        return _Entry(image=self._resolve(self.gallery.files[i]),
                      source=self._resolve(str(meta["source"])) if meta.get("source") else None,
                      frame=None if meta.get("frame") is None else int(meta["frame"]),
                      time_s=None if meta.get("time_s") is None else float(meta["time_s"]),
                      box=None if box is None else tuple(int(round(float(v))) for v in box),
                      det_score=None if meta.get("det_score") is None else float(meta["det_score"]))

    def image_file(self, entry_id: int) -> tuple[str | None, bytes | None, str]:
        """(path to send as is, or None; else encoded bytes; media type) of entry ``entry_id``'s image."""
        path = self.entry(entry_id).image
        ext = os.path.splitext(path)[1].lower()
        if ext in WEB_IMAGE_TYPES:
            if not os.path.isfile(path):
                raise QueryError(404, f"entry {entry_id}: its image file is no longer on disk")
            return path, None, WEB_IMAGE_TYPES[ext]
        try:  # .tif and other files browsers do not show: decoded upright, sent as PNG
            rgb = np.asarray(read_image_rgb(path)[0])
        except Exception as e:  # noqa: BLE001  (a file deleted or damaged since indexing)
            raise QueryError(404, f"entry {entry_id}: its image cannot be read ({type(e).__name__})") from e
        return None, _encode(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), ".png"), "image/png"

    def source_jpeg(self, entry_id: int) -> bytes:
        """JPEG of entry ``entry_id``'s source photo / video frame, at most SOURCE_MAX_SIDE pixels,
        with the entry's box drawn (``render.source_with_box``); QueryError(404) when the entry
        has no source (an image indexed whole) or it cannot be read any more."""
        entry = self.entry(entry_id)
        if not entry.source or entry.box is None:
            raise QueryError(404, f"entry {entry_id} has no source frame (it was indexed as a whole image)")
        return self._source_jpeg(entry.source, entry.frame, entry.box)

    def _render_source(self, source: str, frame: int | None, box: tuple[int, int, int, int]) -> bytes:
        bgr = source_with_box(Hit(path="", score=0.0, rank=0, source=source, frame=frame, box=box), SOURCE_MAX_SIDE)
        if bgr is None:  # logged by source_with_box
            raise QueryError(404, "the source of this entry cannot be read any more (moved or deleted?)")
        return _encode(bgr, ".jpg")


def _encode(bgr: np.ndarray, ext: str) -> bytes:
    """(H, W, 3) uint8 BGR -> the bytes of a ``.jpg`` or ``.png`` file."""
    ok, buf = cv2.imencode(ext, bgr, [cv2.IMWRITE_JPEG_QUALITY, 88] if ext == ".jpg" else [])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {ext} image")
    return buf.tobytes()


# ---------------------------------------------------------------------- the page
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2em 1.6em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em 0; }
.info { color: #666; margin: 0 0 1em 0; font-size: .9em; }
form { display: flex; gap: .6em; align-items: center; flex-wrap: wrap; margin-bottom: .8em; }
#q { flex: 1 1 28em; font-size: 1.05em; padding: .4em; }
#k { width: 4.5em; font-size: 1em; padding: .3em; }
button { font-size: 1em; padding: .4em 1.2em; }
#status { min-height: 1.3em; color: #444; }
#status.error { color: #b00; }
#results { display: flex; flex-wrap: wrap; gap: 12px; }
.hit { margin: 0; padding: 6px; border: 1px solid #ddd; border-radius: 6px; background: #fafafa;
       display: flex; flex-direction: column; align-items: center; font-size: 12px; }
.hit .pics { display: flex; gap: 6px; align-items: flex-end; }
.hit img.crop { height: 160px; min-width: 40px; image-rendering: auto; border: 1px solid #ccc; background: #eee; }
.hit img.source { max-height: 160px; max-width: 280px; border: 1px solid #ccc; background: #eee; }
.hit figcaption { text-align: center; margin-top: 4px; max-width: 360px; word-break: break-all; }
.hit .rank { font-weight: bold; }
.hit .where { color: #555; }
"""

_SCRIPT = """
const form = document.getElementById('search-form');
const qBox = document.getElementById('q');
const kBox = document.getElementById('k');
const statusLine = document.getElementById('status');
const grid = document.getElementById('results');

function clock(t) {
  const m = Math.floor(t / 60), s = t - 60 * m;
  return m + ':' + (s < 10 ? '0' : '') + s.toFixed(1);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function card(h) {
  const fig = el('figure', 'hit');
  fig.dataset.id = h.id;
  fig.dataset.rank = h.rank;
  const pics = el('div', 'pics');
  const crop = el('img', 'crop');
  crop.src = h.image_url;
  crop.alt = h.name;
  crop.title = h.path;
  pics.append(crop);
  if (h.source_url) {
    const src = el('img', 'source');
    src.src = h.source_url;
    src.alt = 'source of #' + h.rank;
    src.title = h.source;
    pics.append(src);
  }
  fig.append(pics);
  const cap = el('figcaption');
  cap.append(el('span', 'rank', '#' + h.rank), document.createTextNode(' '),
             el('span', 'score', h.score === null ? 'n/a' : h.score.toFixed(4)));
  cap.append(el('br'), el('span', 'name', h.name));
  if (h.source) {
    const parts = [h.source.split(/[\\\\/]/).pop()];
    if (h.time_s !== null) parts.push('t=' + clock(h.time_s));
    if (h.frame !== null) parts.push('frame ' + h.frame);
    cap.append(el('br'), el('span', 'where', parts.join(' · ')));
  }
  fig.append(cap);
  return fig;
}

async function run(q, k) {
  statusLine.className = '';
  statusLine.textContent = 'searching...';
  grid.replaceChildren();
  grid.removeAttribute('data-query');
  let resp, data;
  try {
    resp = await fetch('/api/search?' + new URLSearchParams({q: q, k: k}));
    data = await resp.json();
  } catch (e) {
    statusLine.className = 'error';
    statusLine.textContent = 'the server did not answer: ' + e;
    return;
  }
  if (!resp.ok) {
    statusLine.className = 'error';
    statusLine.textContent = data.error || ('error ' + resp.status);
    return;
  }
  grid.replaceChildren(...data.hits.map(card));
  grid.dataset.query = data.query;
  statusLine.textContent = data.hits.length + ' of ' + data.num_entries + ' entries, best first (' +
      data.elapsed_ms.toFixed(0) + ' ms)' +
      (data.truncated ? '; the query was cut to its first ' + data.max_tokens + ' tokens' : '');
  history.replaceState(null, '', '?' + new URLSearchParams({q: q, k: k}));
}

form.addEventListener('submit', (ev) => { ev.preventDefault(); run(qBox.value, kBox.value); });
const start = new URLSearchParams(location.search);
if (start.get('q')) {
  qBox.value = start.get('q');
  if (start.get('k')) kBox.value = start.get('k');
  run(qBox.value, kBox.value);
}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>unipt-reid person search</title>
<style>{style}</style></head>
<body>
<h1>Person search</h1>
<p class="info" id="info">{num} indexed entries &middot; {kind} index &middot; {arch}</p>
<form id="search-form" autocomplete="off">
<input id="q" name="q" type="search" maxlength="{max_chars}" required autofocus
 placeholder="describe the person, e.g. a woman in a red coat carrying a black bag" aria-label="description">
<label for="k">k</label><input id="k" name="k" type="number" min="1" max="{max_k}" value="{k}">
<button id="go" type="submit">Search</button>
</form>
<p id="status" role="status"></p>
<div id="results"></div>
<script>{script}</script>
</body></html>
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


#: Content-Security-Policy of every response: the page's own inline script and style (by hash),
#: images and fetches from this server only, nothing else from anywhere.
CONTENT_SECURITY_POLICY = (f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
                           "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
                           "frame-ancestors 'none'")


def render_page(service: SearchService) -> str:
    """The search page's HTML for ``service`` (its limits and index summary filled in)."""
    info = service.info()
    return _PAGE.format(style=_STYLE, script=_SCRIPT, num=f"{info['num_entries']:,}", kind=html.escape(info["kind"]),
                        arch=html.escape(info["meta_architecture"] or "model"), max_chars=service.max_query_chars,
                        max_k=service.max_topk, k=service.default_topk)


def create_app(service: SearchService) -> Any:
    """The FastAPI app serving ``service`` (see the module docstring for the routes)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="unipt-reid search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    page = render_page(service)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error(404, "not found: pages are /, /api/search?q=...&k=..., /api/info, /image/<entry id>, "
                              "/source/<entry id>")
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = ["/".join(str(p) for p in e.get("loc", ())) + ": " + str(e.get("msg", "")) for e in exc.errors()]
        return error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(QueryError)
    async def query_error(request: Request, exc: QueryError) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("error answering %s", request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); see the server's log")

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/favicon.ico")
    def favicon() -> Response:  # browsers ask for it; no icon, and no 404 in their console
        return Response(status_code=204)

    @app.get("/api/info")
    def api_info() -> dict[str, Any]:
        return service.info()

    @app.get("/api/search")
    def api_search(q: str | None = None, k: str | None = None) -> dict[str, Any]:
        return service.search(q, k)

    # ``:int`` matches decimal digits only: anything else (``..``, ``%2e%2e%2f``, absolute paths)
    # matches no route and is answered 404 before any handler runs.
    @app.get("/image/{entry_id:int}")
    def image(entry_id: int) -> Response:
        path, data, media_type = service.image_file(entry_id)
        if path is not None:
            return FileResponse(path, media_type=media_type)
        return Response(data, media_type=media_type)

    @app.get("/source/{entry_id:int}")
    def source(entry_id: int) -> Response:
        return Response(service.source_jpeg(entry_id), media_type="image/jpeg")

    return app


@contextlib.contextmanager
def running_server(app: Any, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields its base URL ("http://host:port").

    ``port=0`` takes a free port: the socket is bound here first, so no other process can take
    it between choosing and listening. The server is stopped when the block exits.
    """
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets whose proto says
    # TCP; without it every keep-alive response waits ~40 ms (Nagle + delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the search server did not start on {host}:{bound} within {timeout_s:.0f} s")
            time.sleep(0.02)
        yield f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
