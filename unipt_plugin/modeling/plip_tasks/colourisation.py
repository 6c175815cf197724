"""TIC's light decoder: the gray image's patch tokens, guided by the caption, -> chroma at 1/SCALE.

The visual encoder's tokens of the grayscale view (B, 1 + N, C_v) lose their first token (the
class / pooled token), the N = h x w patch tokens attend to the caption's tokens through a
:class:`~.fusion.CrossAttentionStack` (MODEL.PRETRAIN.TIC.{WIDTH, HEADS, LAYERS, DROPOUT}; the
caption's padding masked), are laid out on the encoder's h x w grid, resized bilinearly to the
target's H / SCALE x W / SCALE, joined by the gray image itself at that size (one channel,
scaled to [-1, 1], so the colours can follow its edges) and mapped by two 3x3 convolutions
(GELU between) and a tanh to the two chroma channels (Cb, Cr) on the [-1, 1] scale
(``unipt_plugin.modeling.losses.tic``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fusion import CrossAttentionStack

__all__ = ["ColourisationDecoder"]


class ColourisationDecoder(nn.Module):
    """Args:
        image_width, text_width: the visual / text encoders' token widths.
        grid_size: (h, w), the visual encoder's patch grid (its ``grid_size``).
        out_size: (H / SCALE, W / SCALE), the size of the predicted chroma.
        width, heads, layers, dropout: of the cross-attention stack.

    forward: gray tokens (B, 1 + h * w, image_width), text tokens (B, L, text_width), text mask
        (B, L) (1 = real token), gray image at ``out_size`` (B, 1, H', W') on [-1, 1]
        -> chroma (B, 2, H', W') on [-1, 1].
    """

    def __init__(self, image_width: int, text_width: int, grid_size: tuple[int, int], out_size: tuple[int, int],
                 width: int = 256, heads: int = 4, layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.fuse = CrossAttentionStack(image_width, text_width, width, heads, layers, dropout)
        self.head = nn.Sequential(nn.Conv2d(int(width) + 1, int(width) // 2, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(int(width) // 2, 2, 3, padding=1))

    def forward(self, gray_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                gray_small: torch.Tensor) -> torch.Tensor:
        h, w = self.grid_size
        if gray_tokens.shape[1] != 1 + h * w:
            raise ValueError(f"TIC decoder: {gray_tokens.shape[1]} visual tokens for the encoder's {h}x{w} grid "
                             f"(expected 1 + {h * w}: the first token, then the patches row-major)")
        x = self.fuse(gray_tokens[:, 1:], text_tokens, memory_padding=~text_mask.bool())  # (B, h * w, width)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        x = torch.cat([x, gray_small.to(x.dtype)], dim=1)
        return torch.tanh(self.head(x))
