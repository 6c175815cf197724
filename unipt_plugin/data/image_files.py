"""Finding image files in a folder: the one lister every tool uses (pseudo-texts, search)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["IMAGE_EXTENSIONS", "list_images"]

#: File name endings (compared in lower case) of the images the tools collect; PIL reads each.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(root: str | os.PathLike, absolute: bool = False, what: str = "image folder") -> list[str]:
    """Every image file under ``root`` (recursively, by :data:`IMAGE_EXTENSIONS`), sorted: POSIX
    paths relative to ``root``, or resolved absolute paths with ``absolute``.

    Raises NotADirectoryError naming ``what`` (e.g. "--images") when ``root`` is not a directory.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise NotADirectoryError(f"{what}: {root} is not a directory")
    found = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if absolute:
        return sorted(str(p.resolve()) for p in found)
    return sorted(p.relative_to(folder).as_posix() for p in found)
