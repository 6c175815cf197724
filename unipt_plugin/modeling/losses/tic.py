"""PLIP's text-guided image colourisation (TIC): its target and loss (docs/choices.md, PLIP).

The target of an RGB image (B, 3, H, W) on the 0-255 scale is its BT.601 chroma (Cb, Cr)
(``unipt_plugin.modeling.plip_tasks.colour_space``) averaged over SCALE x SCALE blocks (the
chroma is affine in RGB, so this is the chroma of the block-averaged image), on the [-1, 1]
scale: (C - 128) / 128. The loss is the smooth-L1 (Huber) distance with threshold ``beta`` to the
predicted chroma, averaged over pixels, both channels and the batch, in float32 with autocast off.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..plip_tasks.colour_space import luma, rgb_to_chroma

__all__ = ["CHROMA_SCALE", "chroma_target", "gray_target_size", "small_gray", "tic_loss"]

#: chroma on the 0-255 scale -> [-1, 1]: (C - 128) / CHROMA_SCALE
CHROMA_SCALE = 128.0


def gray_target_size(size: tuple[int, int], scale: int) -> tuple[int, int]:
    """(H / scale, W / scale) for an input of ``size`` (H, W); ValueError unless ``scale`` >= 1
    divides both (MODEL.PRETRAIN.TIC.SCALE and INPUT.SIZE_TRAIN)."""
    h, w = int(size[0]), int(size[1])
    if int(scale) < 1 or h % int(scale) or w % int(scale):
        raise ValueError(f"MODEL.PRETRAIN.TIC.SCALE = {scale} must be >= 1 and divide the input size {h}x{w} "
                         "(INPUT.SIZE_TRAIN)")
    return h // int(scale), w // int(scale)


def chroma_target(images: torch.Tensor, scale: int) -> torch.Tensor:
    """RGB (B, 3, H, W) 0-255 -> (B, 2, H / scale, W / scale) float32: the block-averaged (Cb, Cr)
    on [-1, 1]."""
    gray_target_size(images.shape[-2:], scale)
    chroma = rgb_to_chroma(images)
    if int(scale) > 1:
        chroma = F.avg_pool2d(chroma, int(scale))
    return (chroma - 128.0) / CHROMA_SCALE


def small_gray(images: torch.Tensor, scale: int) -> torch.Tensor:
    """RGB (B, 3, H, W) 0-255 -> the block-averaged luma (B, 1, H / scale, W / scale) on [-1, 1]
    (the decoder's view of the gray image at the target's size)."""
    y = luma(images)
    if int(scale) > 1:
        y = F.avg_pool2d(y, int(scale))
    return y / 127.5 - 1.0


def tic_loss(pred: torch.Tensor, target: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Mean smooth-L1 between predicted and target chroma, (B, 2, h, w) each on [-1, 1] -> 0-d float32."""
    if pred.shape != target.shape:
        raise ValueError(f"tic_loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    with torch.autocast(device_type=pred.device.type, enabled=False):
        return F.smooth_l1_loss(pred.float(), target.float(), beta=float(beta))
