"""Image reading and the paper's image transforms (resize to 384x128, random horizontal flip).

``read_image(path)`` returns an 8-bit RGB PIL image whatever the file holds (grayscale,
16-bit grayscale, RGBA / LA, palette with or without transparency, CMYK); alpha is dropped
(the colour values are kept). A missing, zero-byte, corrupt or truncated file raises an error
naming the file.

``build_image_transform(cfg, is_train)`` maps such an image to a uint8 tensor (3, H, W), 0-255:
resizing, flipping and fast-reid's other geometric / colour augmentations happen on the 8-bit
PIL image, so the pixel values are integers anyway, and uint8 batches are 4x smaller than
float32 ones in the workers' shared memory and in the host-to-device copy. The model converts
to float32 on its device and normalises with MODEL.PIXEL_MEAN / PIXEL_STD (``ImageNormalizer``):
exactly the values a float32 0-255 tensor of the same image gives.

Training augmentations are fast-reid's keys with fast-reid's meaning and order
(``fastreid/data/transforms/build.py``): resize, INPUT.CROP, INPUT.PADDING, INPUT.FLIP,
INPUT.CJ, INPUT.AFFINE on the PIL image, then the tensor, then INPUT.REA on the uint8 tensor.
Every random draw comes from torch's global RNG (torchvision's RandomResizedCrop, RandomCrop,
RandomHorizontalFlip, RandomApply, ColorJitter, RandomAffine and RandomErasing draw with
``torch.rand`` / ``torch.randint`` / ``torch.randperm`` / ``Tensor.uniform_``, never Python's
``random``), which the training set seeds per sample, so a resumed run draws what an
uninterrupted one does. AutoAugment, AugMix and random patch (INPUT.AUTOAUG / AUGMIX / RPT)
are refused; colour jitter needs INPUT.CJ.WITH_TEXT, as captions describe colours.
"""
from __future__ import annotations

import logging
import numbers
import io
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

logger = logging.getLogger(__name__)

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
        from .datasets.arrow_layout import read_packed_image  # (circular: arrow_layout imports this module)

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


_PADDING_MODES = ("constant", "edge", "reflect", "symmetric")
# fast-reid's keys that are refused for text-image training, with the reason.
_REFUSED = {
    "AUTOAUG": "AutoAugment changes the colours and contrast that the captions describe; not available for "
               "text-image training",
    "AUGMIX": "AugMix changes the colours and contrast that the captions describe; not available for "
              "text-image training",
    "RPT": "fast-reid's random patch (patches of other images pasted in, which the captions do not describe, "
           "drawn with Python's random) is not implemented for text-image training",
}


def _probability(key: str, value: Any) -> float:
    if not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{key} = {value!r}: expected a probability in [0, 1]")
    return float(value)


def _pair(key: str, value: Any, high: float | None = None) -> tuple[float, float]:
    """``value`` as (min, max) with 0 < min <= max (<= high)."""
    ok = isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, numbers.Real) for v in value)
    if ok:
        a, b = float(value[0]), float(value[1])
        ok = 0.0 < a <= b and (high is None or b <= high)
    if not ok:
        bound = f" and max <= {high}" if high is not None else ""
        raise ValueError(f"{key} = {value!r}: expected [min, max] with 0 < min <= max{bound}")
    return a, b


def _random_resized_crop(inp: Any, size: tuple[int, int], interpolation: InterpolationMode) -> Callable:
    """INPUT.CROP: fast-reid's RandomResizedCrop (scale CROP.SCALE of the area, aspect ratio
    width / height in CROP.RATIO), resized back with INPUT.INTERPOLATION (fast-reid: bicubic)."""
    crop = [int(v) for v in inp.CROP.SIZE]
    crop_hw = (crop[0], crop[0]) if len(crop) == 1 else tuple(crop)
    if crop_hw != size:
        raise ValueError(f"INPUT.CROP.SIZE = {list(inp.CROP.SIZE)}: must be INPUT.SIZE_TRAIN = {list(size)} "
                         f"(the visual encoder is built for SIZE_TRAIN, and test images are resized to "
                         f"SIZE_TEST without fast-reid's centre crop)")
    scale = _pair("INPUT.CROP.SCALE", inp.CROP.SCALE, 1.0)
    ratio = _pair("INPUT.CROP.RATIO", inp.CROP.RATIO)
    return T.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=interpolation)


def _pad_and_crop(pad: Any, size: tuple[int, int]) -> list[Callable]:
    """INPUT.PADDING: pad PADDING.SIZE pixels (an int, or [left/right, top/bottom], or [left,
    top, right, bottom]) in PADDING.MODE (zeros for "constant"), then crop SIZE_TRAIN at random."""
    amount = pad.SIZE
    ints = [amount] if isinstance(amount, numbers.Integral) else list(amount) if isinstance(amount, Sequence) else []
    if len(ints) not in (1, 2, 4) or not all(isinstance(v, numbers.Integral) and v >= 0 for v in ints):
        raise ValueError(f"INPUT.PADDING.SIZE = {amount!r}: expected a pixel count >= 0 or a list of 2 or 4")
    if pad.MODE not in _PADDING_MODES:
        raise ValueError(f"INPUT.PADDING.MODE = {pad.MODE!r}: expected one of {list(_PADDING_MODES)}")
    padding = int(ints[0]) if len(ints) == 1 else [int(v) for v in ints]
    return [T.Pad(padding, padding_mode=pad.MODE), T.RandomCrop(size)]


def _colour_jitter(cj: Any) -> Callable:
    """INPUT.CJ: with probability CJ.PROB, torchvision's ColorJitter(BRIGHTNESS, CONTRAST,
    SATURATION, HUE) (factors drawn in [1 - x, 1 + x], hue shift in [-HUE, HUE])."""
    if not cj.WITH_TEXT:
        raise ValueError("INPUT.CJ.ENABLED True: colour jitter changes the colours the captions describe ('a man "
                         "in a red coat'), so image and caption would disagree; set INPUT.CJ.WITH_TEXT True to "
                         "apply it anyway")
    prob = _probability("INPUT.CJ.PROB", cj.PROB)
    factors = {}
    for key in ("BRIGHTNESS", "CONTRAST", "SATURATION", "HUE"):
        value = cj[key]
        limit = 0.5 if key == "HUE" else None
        if not isinstance(value, numbers.Real) or value < 0 or (limit is not None and value > limit):
            raise ValueError(f"INPUT.CJ.{key} = {value!r}: expected a number >= 0"
                             + (f" and <= {limit}" if limit is not None else ""))
        factors[key.lower()] = float(value)
    logger.warning("INPUT.CJ (colour jitter) is on for text-image training (INPUT.CJ.WITH_TEXT True): it "
                   "changes the colours the captions describe ('a red coat'), so some image-caption pairs "
                   "no longer agree; p = %g, %s", prob, factors)
    return T.RandomApply([T.ColorJitter(**factors)], p=prob)


def _random_erasing(rea: Any) -> Callable:
    """INPUT.REA: torchvision's RandomErasing with probability REA.PROB and fast-reid's area and
    aspect ranges, filling with REA.VALUE (0-255 scale, 1 or 3 values) rounded to the nearest
    integer (ties to even): the image is a uint8 tensor, and torch would truncate a float fill (123.675 -> 123)."""
    prob = _probability("INPUT.REA.PROB", rea.PROB)
    value = rea.VALUE
    vals = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []
    if len(vals) not in (1, 3) or not all(isinstance(v, numbers.Real) and 0 <= v <= 255 for v in vals):
        raise ValueError(f"INPUT.REA.VALUE = {value!r}: expected 1 or 3 fill values on the 0-255 scale")
    return T.RandomErasing(p=prob, value=[int(round(float(v))) for v in vals])


def build_image_transform(cfg: Any, is_train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """8-bit PIL RGB image -> uint8 tensor (3, H, W), 0-255.

    Resize to INPUT.SIZE_TRAIN (training) or INPUT.SIZE_TEST ([H, W]) with INPUT.INTERPOLATION;
    that is all at test time. When training, fast-reid's augmentations follow in fast-reid's
    order, each when its ENABLED key is True:

    * INPUT.CROP: RandomResizedCrop (CROP.SCALE, CROP.RATIO) back to CROP.SIZE, which must be
      SIZE_TRAIN; interpolation INPUT.INTERPOLATION;
    * INPUT.PADDING: pad PADDING.SIZE pixels in PADDING.MODE, then a random SIZE_TRAIN crop;
    * INPUT.FLIP: horizontal flip with probability FLIP.PROB;
    * INPUT.CJ: colour jitter with probability CJ.PROB (only with INPUT.CJ.WITH_TEXT True,
      logged as a warning: it changes the colours the captions describe);
    * INPUT.AFFINE: fast-reid's RandomAffine (rotation up to 10 degrees, scale 0.9-1.1, shear
      0.1 degrees, no translation, nearest-neighbour, black fill);
    * the conversion to a uint8 tensor;
    * INPUT.REA: random erasing with probability REA.PROB, fill REA.VALUE (0-255, rounded).

    INPUT.AUTOAUG, INPUT.AUGMIX and INPUT.RPT enabled raise ValueError. With every augmentation
    key at its default this is resize, flip and the conversion, as before.
    """
    size = cfg.INPUT.SIZE_TRAIN if is_train else cfg.INPUT.SIZE_TEST
    if len(size) != 2 or min(int(s) for s in size) <= 0:
        key = "SIZE_TRAIN" if is_train else "SIZE_TEST"
        raise ValueError(f"INPUT.{key} = {list(size)}: expected [height, width] with positive values")
    name = str(cfg.INPUT.INTERPOLATION).lower()
    if name not in _INTERPOLATIONS:
        raise ValueError(f"INPUT.INTERPOLATION = {cfg.INPUT.INTERPOLATION!r}: expected one of {sorted(_INTERPOLATIONS)}")
    hw = (int(size[0]), int(size[1]))
    steps: list[Callable] = [T.Resize(hw, interpolation=_INTERPOLATIONS[name])]
    if not is_train:
        steps.append(ToTensor255())
        return T.Compose(steps)
    inp = cfg.INPUT
    for key, why in _REFUSED.items():
        if inp[key].ENABLED:
            raise ValueError(f"INPUT.{key}.ENABLED True: {why}")
    if inp.CROP.ENABLED:
        steps.append(_random_resized_crop(inp, hw, _INTERPOLATIONS[name]))
    if inp.PADDING.ENABLED:
        steps.extend(_pad_and_crop(inp.PADDING, hw))
    if inp.FLIP.ENABLED:
        steps.append(T.RandomHorizontalFlip(p=_probability("INPUT.FLIP.PROB", inp.FLIP.PROB)))
    if inp.CJ.ENABLED:
        steps.append(_colour_jitter(inp.CJ))
    if inp.AFFINE.ENABLED:
        # fast-reid: RandomAffine(degrees=10, translate=None, scale=[0.9, 1.1], shear=0.1,
        # resample=False, fillcolor=0), in torchvision's current spelling.
        steps.append(T.RandomAffine(degrees=10, translate=None, scale=(0.9, 1.1), shear=0.1,
                                    interpolation=InterpolationMode.NEAREST, fill=0))
    steps.append(ToTensor255())
    if inp.REA.ENABLED:
        steps.append(_random_erasing(inp.REA))
    return T.Compose(steps)
