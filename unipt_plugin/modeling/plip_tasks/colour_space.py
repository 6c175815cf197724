"""TIC's colour space: ITU-R BT.601 luma and the full-range (JFIF) YCbCr chroma.

The grayscale view is the BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B (the weights of PIL's
``convert("L")``; torchvision's ``rgb_to_grayscale`` uses 0.2989 for R), copied to the three
channels, unrounded. Its colour is the pair of JFIF chroma channels of the same standard,

    Cb = 128 - 0.168736 R - 0.331264 G + 0.5 B,    Cr = 128 + 0.5 R - 0.418688 G - 0.081312 B,

whose luma is exactly that gray image: a prediction of (Cb, Cr) and the gray input give back the
colour image (``ycbcr_to_rgb``, the exact inverse). All on the 0-255 scale, float32.
"""
from __future__ import annotations

import torch

__all__ = ["BT601_LUMA", "luma", "gray_image", "rgb_to_chroma", "ycbcr_to_rgb"]

#: (R, G, B) weights of the BT.601 luma
BT601_LUMA = (0.299, 0.587, 0.114)
_CB = (-0.168736, -0.331264, 0.5)
_CR = (0.5, -0.418688, -0.081312)
_OFFSET = 128.0


def _weighted(images: torch.Tensor, weights: tuple[float, float, float]) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (B, 3, H, W), got {tuple(images.shape)}")
    x = images.float()
    return weights[0] * x[:, 0:1] + weights[1] * x[:, 1:2] + weights[2] * x[:, 2:3]


def luma(images: torch.Tensor) -> torch.Tensor:
    """RGB (B, 3, H, W) 0-255 (uint8 or float) -> BT.601 luma (B, 1, H, W) float32 0-255."""
    return _weighted(images, BT601_LUMA)


def gray_image(images: torch.Tensor) -> torch.Tensor:
    """RGB (B, 3, H, W) 0-255 -> the grayscale view (B, 3, H, W) float32: the luma in every channel."""
    return luma(images).expand(-1, 3, -1, -1).contiguous()


def rgb_to_chroma(images: torch.Tensor) -> torch.Tensor:
    """RGB (B, 3, H, W) 0-255 -> (Cb, Cr) (B, 2, H, W) float32 0-255 (128 = no colour)."""
    return torch.cat([_weighted(images, _CB), _weighted(images, _CR)], dim=1) + _OFFSET


def ycbcr_to_rgb(y: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Luma (B, 1, H, W) and (Cb, Cr) (B, 2, H, W), 0-255 -> RGB (B, 3, H, W) float32 (not
    clipped): R = Y + 1.402 Cr', G = Y - 0.344136 Cb' - 0.714136 Cr', B = Y + 1.772 Cb' with
    Cb' = Cb - 128, Cr' = Cr - 128 (the inverse of ``luma`` / ``rgb_to_chroma``)."""
    y = y.float()
    cb, cr = chroma.float()[:, 0:1] - _OFFSET, chroma.float()[:, 1:2] - _OFFSET
    return torch.cat([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1)
