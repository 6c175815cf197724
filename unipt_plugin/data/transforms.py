"""Image reading and the paper's image transforms (resize to 384x128, random horizontal flip).

``read_image(path)`` returns an 8-bit RGB PIL image whatever the file holds (grayscale,
16-bit grayscale, RGBA / LA, palette with or without transparency, CMYK); alpha is dropped
(the colour values are kept). A missing, zero-byte, corrupt or truncated file raises an error
naming the file.

``build_image_transform(cfg, is_train)`` maps such an image to a float tensor (3, H, W) on the
0-255 scale (fast-reid's convention: the model normalises with MODEL.PIXEL_MEAN / PIXEL_STD).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

__all__ = ["ImageReadError", "read_image", "build_image_transform", "ToTensor255"]

_INTERPOLATIONS = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
}


class ImageReadError(OSError):
    """An image file that exists but cannot be decoded (empty, corrupt or truncated)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I"):  # 16/32-bit integer grayscale: 0..65535 -> 0..255
        arr = np.asarray(img).astype(np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":  # float grayscale, assumed on the 0-255 scale
        arr = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def read_image(path: str) -> Image.Image:
    """Open ``path`` and return an 8-bit RGB PIL image (decoded in full, file closed)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ImageReadError(f"image file is empty (0 bytes): {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e


class ToTensor255:
    """PIL RGB image -> float32 tensor (3, H, W) with values on the 0-255 scale."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got array of shape {arr.shape}")
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_image_transform(cfg: Any, is_train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> float tensor (3, H, W), 0-255.

    Resize to INPUT.SIZE_TRAIN (training) or INPUT.SIZE_TEST ([H, W]) with INPUT.INTERPOLATION;
    when training and INPUT.FLIP.ENABLED, flip horizontally with probability INPUT.FLIP.PROB.
    """
    size = cfg.INPUT.SIZE_TRAIN if is_train else cfg.INPUT.SIZE_TEST
    if len(size) != 2 or min(int(s) for s in size) <= 0:
        key = "SIZE_TRAIN" if is_train else "SIZE_TEST"
        raise ValueError(f"INPUT.{key} = {list(size)}: expected [height, width] with positive values")
    name = str(cfg.INPUT.INTERPOLATION).lower()
    if name not in _INTERPOLATIONS:
        raise ValueError(f"INPUT.INTERPOLATION = {cfg.INPUT.INTERPOLATION!r}: expected one of {sorted(_INTERPOLATIONS)}")
    steps: list[Callable] = [T.Resize((int(size[0]), int(size[1])), interpolation=_INTERPOLATIONS[name])]
    if is_train and cfg.INPUT.FLIP.ENABLED:
        prob = float(cfg.INPUT.FLIP.PROB)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"INPUT.FLIP.PROB = {prob}: expected a probability in [0, 1]")
        steps.append(T.RandomHorizontalFlip(p=prob))
    steps.append(ToTensor255())
    return T.Compose(steps)
