"""The image list of a run and the Dataset that reads it for CLIP.

Unreadable images never stop a run: the Dataset returns a zero tensor and the error text, and the
driver lists the file as failed.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch
from open_clip import image_transform
from open_clip.model import get_model_preprocess_cfg
from PIL import Image
from torch.utils.data import Dataset

from ..data.image_files import list_images
from ..data.transforms import read_image

logger = logging.getLogger(__name__)

__all__ = ["list_images", "read_list_file", "ImageListDataset", "clip_transform"]

def read_list_file(path: str | os.PathLike) -> list[str]:
    """Relative image paths, one per line (blank lines and '#' comments ignored), sorted, unique."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list file not found: {path}")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    out = sorted({ln for ln in lines if ln and not ln.startswith("#")})
    absolute = [ln for ln in out if os.path.isabs(ln)]
    if absolute:
        raise ValueError(f"{path}: paths must be relative to the image root (--image-root), got {absolute[0]!r}")
    return out


def clip_transform(model: torch.nn.Module, resize_mode: str = "longest") -> Callable[[Image.Image], torch.Tensor]:
    """The model's evaluation transform (its image size, mean and std).

    ``resize_mode``: "longest" (resize the longer side and pad to a square: the whole person is
    kept; default), "shortest" (resize the shorter side and centre-crop: open_clip's default,
    which cuts head and feet off tall person crops) or "squash" (stretch to a square).
    """
    cfg = get_model_preprocess_cfg(model)
    return image_transform(cfg["size"], is_train=False, mean=cfg.get("mean"), std=cfg.get("std"),
                           resize_mode=resize_mode, interpolation=cfg.get("interpolation", "bicubic"))


class ImageListDataset(Dataset):
    """Items ``(image (3,H,W) float, index, error)``; ``error`` is "" when the image was read.

    A failed image yields a zero tensor of ``fallback_shape`` and its error message.
    """

    def __init__(self, root: str | os.PathLike, files: list[str], transform: Callable[[Image.Image], torch.Tensor],
                 fallback_shape: tuple[int, int, int]) -> None:
        self.root, self.files, self.transform, self.fallback_shape = Path(root), files, transform, fallback_shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        try:
            return self.transform(read_image(str(self.root / self.files[i]))), i, ""
        except Exception as e:  # noqa: BLE001  (any decoding failure is listed, never fatal)
            return torch.zeros(self.fallback_shape), i, str(e) or type(e).__name__
