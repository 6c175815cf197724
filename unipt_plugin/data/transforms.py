"""Image reading and the paper's image transforms (resize to 384x128, random horizontal flip).

``read_image(path)`` returns an 8-bit RGB PIL image whatever the file holds (grayscale,
16-bit grayscale, RGBA / LA, palette with or without transparency, CMYK); alpha is dropped
(the colour values are kept). A missing, zero-byte, corrupt or truncated file raises an error
naming the file.

``build_image_transform(cfg, is_train)`` maps such an image to a uint8 tensor (3, H, W), 0-255:
resizing and flipping happen on the 8-bit PIL image, so the pixel values are integers anyway,
and uint8 batches are 4x smaller than float32 ones in the workers' shared memory and in the
host-to-device copy. The model converts to float32 on its device and normalises with
MODEL.PIXEL_MEAN / PIXEL_STD (``ImageNormalizer``): exactly the values a float32 0-255 tensor
of the same image gives.
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
    """Open ``path`` and return an 8-bit RGB PIL image (decoded in full, file closed).

    ``path`` may also name a row of a packed LUPerson-T file, ``"arrow:<file>#<row>"``
    (``unipt_plugin.data.datasets.arrow_layout.PACKED_PREFIX``): the row's image bytes are read
    from that file, opened once per process, and decoded the same way; errors name the file and
    the row.
    """
    if isinstance(path, str) and path.startswith("arrow:"):
        import io

        from .datasets.arrow_layout import read_packed_image

        source: Any = io.BytesIO(read_packed_image(path))
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path}")
        if os.path.getsize(path) == 0:
            raise ImageReadError(f"image file is empty (0 bytes): {path}")
        source = path
    try:
        with Image.open(source) as img:
            img.load()
            return _to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e


class ToTensor255:
    """PIL RGB image -> tensor (3, H, W) with the pixel values 0-255, ``dtype`` uint8 (default) or
    a float dtype (the same integer values).

    The array is copied (C order), so the tensor never shares memory with the PIL image.
    """

    def __init__(self, dtype: torch.dtype = torch.uint8) -> None:
        if dtype != torch.uint8 and not dtype.is_floating_point:
            raise ValueError(f"ToTensor255 dtype must be torch.uint8 or a float dtype, got {dtype}")
        self.dtype = dtype

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"expected an 8-bit RGB image (H, W, 3) uint8, got array of shape {arr.shape} "
                             f"and dtype {arr.dtype}")
        tensor = torch.from_numpy(arr.transpose(2, 0, 1).copy())
        return tensor if self.dtype == torch.uint8 else tensor.to(self.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dtype={self.dtype})"


def build_image_transform(cfg: Any, is_train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """8-bit PIL RGB image -> uint8 tensor (3, H, W), 0-255.

    Resize to INPUT.SIZE_TRAIN (training) or INPUT.SIZE_TEST ([H, W]) with INPUT.INTERPOLATION;
    when training and INPUT.FLIP.ENABLED, flip horizontally with probability INPUT.FLIP.PROB.
    Both steps work on the PIL image (8-bit results); the conversion to a tensor comes last.
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
