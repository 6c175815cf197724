"""A small stack of cross-attention layers: one token stream attends to another.

PLIP's IAP fuses the (masked) caption with the image: the text tokens are the queries, the image
tokens the keys and values. TIC's decoder does the reverse: the gray image's patch tokens attend
to the caption's tokens. Both use :class:`CrossAttentionStack`, torch's
``nn.TransformerDecoder``: per layer self-attention over the queries, cross-attention to the
memory, a GELU feed-forward of 4 x the width (BERT's ratio), pre-norm, and a final LayerNorm.
Queries and memory come in at their encoders' widths and are projected to the stack's width
(the queries by identity when the widths are equal).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["CrossAttentionStack", "default_heads"]

# Feed-forward width / model width (BERT's and ViT's ratio).
_FFN_RATIO = 4
# Width per attention head when the number of heads is left to the width (BERT-base: 768 / 12).
_HEAD_WIDTH = 64


def default_heads(width: int, heads: int, key: str) -> int:
    """``heads``, or ``max(1, width // 64)`` when it is 0; ValueError naming ``key`` (the config
    key of the heads) when it does not divide the width."""
    heads = int(heads) or max(1, int(width) // _HEAD_WIDTH)
    if heads < 1 or int(width) % heads:
        raise ValueError(f"{key} = {heads} attention heads must divide the width {width} (0 = width / {_HEAD_WIDTH})")
    return heads


class CrossAttentionStack(nn.Module):
    """``layers`` pre-norm decoder layers (self-attention, cross-attention, feed-forward).

    Args:
        query_width, memory_width: widths of the incoming query and memory tokens.
        width: the stack's width; heads: attention heads (dividing ``width``); layers: >= 1;
        dropout: of the attention weights and the residual branches.
    forward: queries (B, Lq, query_width), memory (B, Lm, memory_width), optional bool masks
        ``query_padding`` (B, Lq) / ``memory_padding`` (B, Lm), True at padding -> (B, Lq, width).
    """

    def __init__(self, query_width: int, memory_width: int, width: int, heads: int, layers: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if int(layers) < 1:
            raise ValueError(f"a cross-attention stack needs >= 1 layer, got {layers}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"cross-attention dropout must be in [0, 1), got {dropout}")
        self.width = int(width)
        self.query_in = nn.Identity() if int(query_width) == self.width else nn.Linear(int(query_width), self.width)
        self.memory_in = nn.Linear(int(memory_width), self.width)
        layer = nn.TransformerDecoderLayer(self.width, int(heads), _FFN_RATIO * self.width, float(dropout),
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, int(layers), norm=nn.LayerNorm(self.width))

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, query_padding: torch.Tensor | None = None,
                memory_padding: torch.Tensor | None = None) -> torch.Tensor:
        return self.layers(self.query_in(queries), self.memory_in(memory), tgt_key_padding_mask=query_padding,
                           memory_key_padding_mask=memory_padding)
