"""Position-embedding grids: patch grid of an image size, and resizing a checkpoint's grid.

The authors build ViT-B/16's position embeddings for the 24x24 grid of a 384x384 checkpoint and
resize them bilinearly (``align_corners=True``) to the 24x8 grid of a 384x128 person image; the
prefix tokens' embeddings (class token) are kept as they are. The interpolation is timm's
``resample_abs_pos_embed`` with ``interpolation="bilinear", align_corners=True, antialias=False``
(timm's defaults, bicubic with antialiasing, would give other values than the grid resize used
so far; ``tests/test_library_equivalence.py`` shows the chosen settings reproduce it exactly).
"""
from __future__ import annotations

import math

import torch
from timm.layers import resample_abs_pos_embed

__all__ = ["patch_grid", "resize_pos_embed"]


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
        old_grid: source (rows, cols); None = a square grid inferred from the length.

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
        if side * side != n:
            if n == new_grid[0] * new_grid[1]:
                return pos_embed
            raise ValueError(
                f"cannot infer the patch grid of a position embedding with {n} grid rows (not a square); "
                f"target grid {new_grid[0]}x{new_grid[1]}"
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"position embedding has {n} grid rows, not {old_grid[0]}x{old_grid[1]}")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    out = resample_abs_pos_embed(pe, list(new_grid), list(old_grid), num_prefix_tokens=num_prefix_tokens,
                                 interpolation="bilinear", antialias=False, align_corners=True)
    return out.squeeze(0) if squeeze else out
