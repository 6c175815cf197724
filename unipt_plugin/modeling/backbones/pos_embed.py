"""Position-embedding grids: patch grid of an image size, and resizing a checkpoint's grid.

The authors build ViT-B/16's position embeddings for the 24x24 grid of a 384x384 checkpoint and
resize them bilinearly (``align_corners=True``) to the 24x8 grid of a 384x128 person image; the
prefix tokens' embeddings (class token) are kept as they are. The interpolation is timm's
``resample_abs_pos_embed`` with ``interpolation="bilinear", align_corners=True, antialias=False``
(timm's defaults, bicubic with antialiasing, would give other values than the grid resize used
so far; ``tests/test_library_equivalence.py`` shows the chosen settings reproduce it exactly).
"""
from __future__ import annotations

import logging
import math

import torch
from timm.layers import resample_abs_pos_embed

__all__ = ["infer_grid", "patch_grid", "resize_pos_embed"]

logger = logging.getLogger(__name__)


def patch_grid(image_size: tuple[int, int], patch_size: int, stride: int) -> tuple[int, int]:
    """Rows x columns of patches for a (H, W) image: ``(H - patch) // stride + 1`` per side.

    With ``stride == patch_size`` this is ``(H // patch, W // patch)``.
    """
    h, w = image_size
    if stride <= 0 or stride > patch_size:
        raise ValueError(f"MODEL.VISUAL.STRIDE must be in 1..{patch_size} (the patch size), got {stride}")
    if h < patch_size or w < patch_size:
        raise ValueError(f"image size {h}x{w} is smaller than the patch size {patch_size}")
    return (h - patch_size) // stride + 1, (w - patch_size) // stride + 1


def infer_grid(n: int, like: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) with ``rows * cols == n`` closest in aspect (log rows/cols) to ``like``.

    A checkpoint stores its grid only as a length: 32 rows are 8x4 for a 64x32 person image
    with 8x8 patches (``like`` 15x7, stride 4), 128 rows are 16x8 for 256x128 with 16x16 patches
    (``like`` 24x8, 384x128), 196 rows are 14x14. Ties go to more rows (person images are tall).
    """
    if n <= 0:
        raise ValueError(f"a position-embedding grid needs at least one row, got {n}")
    target = math.log(like[0] / like[1])
    pairs = [(r, n // r) for r in range(n, 0, -1) if n % r == 0]
    return min(pairs, key=lambda rc: abs(math.log(rc[0] / rc[1]) - target))


def resize_pos_embed(
    pos_embed: torch.Tensor,
    num_prefix_tokens: int,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize the grid part of a position embedding; keep the prefix tokens' rows.

    Args:
        pos_embed: (1, P + h*w, C) (timm) or (P + h*w, C) (open_clip); rows in row-major
            grid order after the ``P = num_prefix_tokens`` prefix rows.
        num_prefix_tokens: rows that belong to class / distillation tokens (0, 1 or 2).
        new_grid: target (rows, cols).
        old_grid: source (rows, cols); None = square when the length is a square (ImageNet and
            CLIP checkpoints), else inferred from the length and the target (:func:`infer_grid`).

    Returns:
        A tensor of the same rank with ``P + new_grid[0] * new_grid[1]`` rows, interpolated
        bilinearly with ``align_corners=True`` (identity when the grids are equal).
    """
    squeeze = pos_embed.dim() == 2
    pe = pos_embed.unsqueeze(0) if squeeze else pos_embed
    if pe.dim() != 3 or pe.shape[0] != 1:
        raise ValueError(f"position embedding must be (1, L, C) or (L, C), got {tuple(pos_embed.shape)}")
    n = pe.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(n)
        if side * side == n:  # square: an ImageNet / CLIP checkpoint
            old_grid = (side, side)
        elif n == new_grid[0] * new_grid[1]:
            return pos_embed
        else:  # a person-shaped checkpoint (a pre-training of this project at another size or stride)
            old_grid = infer_grid(n, new_grid)
        logger.info("position embedding of %d grid rows read as a %dx%d grid (the factorisation closest in "
                    "aspect to the target %dx%d), resized to the target", n, *old_grid, *new_grid)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"position embedding has {n} grid rows, not {old_grid[0]}x{old_grid[1]}")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    out = resample_abs_pos_embed(pe, list(new_grid), list(old_grid), num_prefix_tokens=num_prefix_tokens,
                                 interpolation="bilinear", antialias=False, align_corners=True)
    return out.squeeze(0) if squeeze else out
