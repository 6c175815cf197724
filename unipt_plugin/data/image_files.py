"""Finding and reading image (and video) files in folders as they come: the one lister and the one
image reader that every tool uses (pseudo-texts, search indexing, person detection, rendering).

Listing (:func:`scan_media`, :func:`list_images`):

* recursive, sorted, extensions compared in lower case (:data:`IMAGE_EXTENSIONS`,
  :data:`VIDEO_EXTENSIONS`);
* symbolic links to folders are followed, each real folder once: a link that points back to a
  folder being walked (a loop) or to one already listed is skipped with a reason, never walked
  again; a dangling link named like an image or video is skipped with a reason;
* a folder that cannot be listed (permissions) is skipped with a reason;
* file names that are not valid UTF-8 (any bytes on Linux) come back as ``str`` decoded the
  way the OS layer decodes them (``os.fsdecode``: undecodable bytes become lone surrogates,
  "surrogateescape"), so ``open`` / ``os.fsencode`` give the exact bytes back.
  :func:`json_dumps` writes such names into JSON as ``\\udcXX`` escapes (valid JSON, read
  back by ``json.load`` to the same ``str``); :func:`display_path` shows them as ``\\xXX``.

Reading (:func:`read_image_rgb`): 8-bit RGB whatever the file holds (the mode conversion of
``unipt_plugin.data.transforms.read_image``: 16-bit grayscale scaled by 1/257, CMYK, palette,
alpha dropped), turned upright by its EXIF orientation, optionally downscaled so that its
longest side is at most ``max_side`` (JPEGs are decoded at a reduced scale directly, so a huge
photo never needs its full-size pixels in memory). Images over PIL's decompression-bomb limit
(``2 * PIL.Image.MAX_IMAGE_PIXELS`` pixels, about 179 million) are refused with an
:class:`ImageReadError` naming the size; those between PIL's warning and error limits are read
(downscaled when ``max_side`` asks) without PIL's warning.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from .transforms import ImageReadError, _to_rgb

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "MediaScan", "scan_media", "list_images", "read_image_rgb",
           "ImageReadError", "display_path", "json_dumps", "is_video"]

#: File name endings (compared in lower case) of the images the tools collect; PIL reads each.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: File name endings of the videos ``tools/search.py index`` reads (OpenCV's FFmpeg back-end).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")

def is_video(path: str | os.PathLike) -> bool:
    """True when ``path`` ends with one of :data:`VIDEO_EXTENSIONS` (any case)."""
    return os.fspath(path).lower().endswith(VIDEO_EXTENSIONS)


def display_path(path: str | os.PathLike) -> str:
    """``path`` printable anywhere: bytes that are not UTF-8 shown as ``\\xXX``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_dumps(obj: Any, indent: int | None = None) -> str:
    """JSON text of ``obj`` with non-ASCII characters kept as they are and the lone surrogates of
    undecodable file names (see the module docstring) written as ``\\uXXXX`` escapes, so the text
    is valid UTF-8 and ``json.loads`` gives the same strings back."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@dataclass
class MediaScan:
    """What :func:`scan_media` found: absolute image and video paths (sorted, each real file once)
    and ``skipped`` ``{"path", "reason"}`` entries for what could not be listed."""

    images: list[str] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def _walk(folder: str, skipped: list[dict[str, str]]) -> list[str]:
    """Files (paths under ``folder`` as walked) of every folder reachable from ``folder``,
    symbolic links to folders followed once per real folder."""
    files: list[str] = []
    seen: dict[str, str] = {}  # real path of every folder walked -> the path it was walked as
    ancestors: list[str] = []

    def visit(path: str, real: str) -> None:
        seen[real] = path
        ancestors.append(real)
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append({"path": path, "reason": f"folder cannot be listed: {type(e).__name__}: {e.strerror or e}"})
            ancestors.pop()
            return
        for entry in entries:
            full = os.path.join(path, entry.name)
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir()  # follows links
                is_file = entry.is_file()
            except OSError as e:
                skipped.append({"path": full, "reason": f"cannot stat: {type(e).__name__}: {e.strerror or e}"})
                continue
            if is_dir:
                target = os.path.realpath(full)
                if target in ancestors:
                    skipped.append({"path": full, "reason": f"symbolic link loop: points back to "
                                                            f"{display_path(seen[target])}, not followed"})
                elif target in seen:
                    skipped.append({"path": full, "reason": f"folder already listed as "
                                                            f"{display_path(seen[target])}, not walked twice"})
                else:
                    visit(full, target)
            elif is_file:
                files.append(full)
            elif is_link and entry.name.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS):
                try:
                    os.stat(full)
                    reason = "not a regular file"
                except OSError as e:
                    reason = f"broken symbolic link ({type(e).__name__}: {e.strerror or e})"
                skipped.append({"path": full, "reason": reason})
        ancestors.pop()

    visit(folder, os.path.realpath(folder))
    return files


def scan_media(root: str | os.PathLike, what: str = "image folder") -> MediaScan:
    """Every image and video file under ``root`` (a folder, searched recursively, or one file).

    Paths are absolute and resolved (symbolic links followed), sorted, each real file once.
    Raises NotADirectoryError naming ``what`` (e.g. "--images") when ``root`` is neither a folder
    nor an image or video file.
    """
    root = os.fspath(root)
    out = MediaScan()
    if os.path.isfile(root) and root.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS):
        (out.videos if is_video(root) else out.images).append(os.path.realpath(root))
        return out
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{what}: {display_path(root)} is not a directory (nor an image or video file)")
    images, videos = set(), set()
    for path in _walk(root, out.skipped):
        name = path.lower()
        if name.endswith(IMAGE_EXTENSIONS):
            images.add(os.path.realpath(path))
        elif name.endswith(VIDEO_EXTENSIONS):
            videos.add(os.path.realpath(path))
    out.images, out.videos = sorted(images), sorted(videos)
    for s in out.skipped:
        logger.warning("%s: skipped %s (%s)", what, display_path(s["path"]), s["reason"])
    return out


def list_images(root: str | os.PathLike, absolute: bool = False, what: str = "image folder") -> list[str]:
    """Every image file under ``root`` (recursively, by :data:`IMAGE_EXTENSIONS`), sorted: POSIX
    paths relative to ``root``, or resolved absolute paths with ``absolute``. Symbolic links
    are followed as :func:`scan_media` follows them (loops skipped, with a warning logged).

    Raises NotADirectoryError naming ``what`` (e.g. "--images") when ``root`` is not a directory.
    """
    folder = os.fspath(root)
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{what}: {display_path(root)} is not a directory")
    skipped: list[dict[str, str]] = []
    found = [p for p in _walk(folder, skipped) if p.lower().endswith(IMAGE_EXTENSIONS)]
    for s in skipped:
        logger.warning("%s: skipped %s (%s)", what, display_path(s["path"]), s["reason"])
    if absolute:
        return sorted({os.path.realpath(p) for p in found})
    return sorted(Path(os.path.relpath(p, folder)).as_posix() for p in found)


def _orientation(img: Image.Image, path: str) -> int:
    """The EXIF orientation (1-8) of an open image; 1 when absent or unreadable (logged)."""
    try:
        value = int(img.getexif().get(0x0112, 1))
    except Exception as e:  # noqa: BLE001  (damaged EXIF: the pixels may still be fine)
        logger.warning("%s: unreadable EXIF data ignored (%s: %s)", display_path(path), type(e).__name__, e)
        return 1
    return value if 1 <= value <= 8 else 1


def read_image_rgb(path: str | os.PathLike, max_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Read an image file upright as 8-bit RGB, optionally downscaled.

    Args:
        path: the image file (any extension PIL reads; the name may hold any bytes).
        max_side: when given and the upright image's longer side exceeds it, the image is
            downscaled (aspect kept) so that its longer side is ``max_side``.
    Returns:
        ``(image, (width, height))``: the RGB PIL image (decoded, file closed; its size is
        (width * s, height * s) with s = image.width / width <= 1) and the upright source size
        in pixels, the coordinates that boxes are given in.
    Raises:
        FileNotFoundError: no such file.
        ImageReadError (an OSError): empty, corrupt, truncated, unreadable (permissions) or
            over the decompression-bomb limit; the message names the file and the cause.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {display_path(path)}")
    try:
        if os.stat(path).st_size == 0:
            raise ImageReadError(f"image file is empty (0 bytes): {display_path(path)}")
        with warnings.catch_warnings():
            # images between PIL's warning and error limits are read (downscaled when asked);
            # over the error limit, PIL's DecompressionBombError becomes our ImageReadError below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            orientation = _orientation(img, path)  # EXIF Orientation; 5-8 swap width and height
            w, h = img.size
            src = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
            scale = 1.0 if not max_side or max(src) <= max_side else max_side / max(src)
            if scale < 1.0 and img.format == "JPEG":
                # decode at 1/2, 1/4 or 1/8 scale, never below the size asked for
                img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            img.load()
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"image too large to decode safely: {display_path(path)} ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot decode image {display_path(path)}: {type(e).__name__}: {e}") from e
    if scale < 1.0:
        size = (max(1, round(src[0] * scale)), max(1, round(src[1] * scale)))
        if rgb.size != size:
            rgb = rgb.resize(size, Image.BILINEAR, reducing_gap=2.0)
    return rgb, src
