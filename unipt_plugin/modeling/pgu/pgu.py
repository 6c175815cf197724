"""Prototype-based Granularity Unification (PGU; LGUR, used by UniPT's fine-tuning).

Learnable prototypes, shared by both modalities, attend to a modality's token features through
a small decoder of cross-attention layers (no self-attention, no positional embedding); one
bias-free projection per prototype turns the prototypes into parts, and the concatenated parts,
L2-normalised, are the PGU feature (docs/choices.md, Fine-tuning: the PGU rows).

Choices of ours (the authors' fine-tuning code is not public):
* each modality's tokens enter through its own Linear(token width, DIM) with bias, always
  (LGUR fed 384-d DeiT-small tokens directly; BERT-base and ViT-B give 768-d tokens);
* no LayerNorm after the last decoder layer (only the per-layer pre-norms).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from fastreid.config import configurable
from torch import nn

__all__ = ["PGU", "PGUDecoderLayer"]

_MODALITIES = ("image", "text")


class PGUDecoderLayer(nn.Module):
    """Pre-norm cross-attention + feed-forward, queries updated residually.

    ``norm`` (one LayerNorm) normalises both the queries and the key/value tokens before the
    attention; the feed-forward Linear-ReLU-Linear has its own pre-norm and residual."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.drop_attn = nn.Dropout(dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))
        self.drop_ffn = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """queries (B, P, dim), tokens (B, L, dim), key_padding_mask bool (B, L) True = ignore."""
        q = self.norm(queries)
        kv = self.norm(tokens)
        attended, _ = self.attn(q, kv, kv, key_padding_mask=key_padding_mask, need_weights=False)
        queries = queries + self.drop_attn(attended)
        return queries + self.drop_ffn(self.ffn(self.norm_ffn(queries)))


class PGU(nn.Module):
    """PGU module shared by image and text.

    fast-reid ``@configurable``: ``PGU(cfg, image_dim=..., text_dim=...)`` reads MODEL.PGU.* (the
    token widths come from the encoders, not the config); ``PGU(image_dim=..., text_dim=...,
    num_prototypes=..., ...)`` takes plain arguments.

    Args:
        image_dim, text_dim: token widths of the visual and text encoders.
        dim: decoder width (0 = ``image_dim``). num_prototypes, num_layers, num_heads, ffn_dim,
        dropout: decoder sizes. part_dim: output width of each prototype's projection.
    forward(tokens (B, L, C_modality), modality "image" | "text", attention_mask (B, L) 1 = real
    token or None) -> (parts (B, P, part_dim), feature (B, P * part_dim) L2-normalised, float32).
    Under autocast, ``parts`` has autocast's dtype (the output of a matmul); the queries between
    the decoder layers and ``feature`` are float32.
    """

    @configurable
    def __init__(self, image_dim: int, text_dim: int, dim: int = 384, num_prototypes: int = 6,
                 num_layers: int = 2, num_heads: int = 8, ffn_dim: int = 1536,
                 dropout: float = 0.1, part_dim: int = 512) -> None:
        super().__init__()
        dim = dim or image_dim
        if dim % num_heads != 0:
            raise ValueError(f"MODEL.PGU.DIM={dim} must be divisible by MODEL.PGU.NUM_HEADS={num_heads}")
        if num_prototypes <= 0 or num_layers <= 0:
            raise ValueError(f"MODEL.PGU.NUM_PROTOTYPES={num_prototypes} and NUM_LAYERS={num_layers} must be > 0")
        self.dim, self.num_prototypes, self.part_dim = dim, num_prototypes, part_dim
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim))
        self.input_proj = nn.ModuleDict({"image": nn.Linear(image_dim, dim), "text": nn.Linear(text_dim, dim)})
        self.layers = nn.ModuleList(PGUDecoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        # One bias-free Linear(dim, part_dim) per prototype, stored batched (P, part_dim, dim).
        bound = 1.0 / math.sqrt(dim)
        self.part_proj = nn.Parameter(torch.empty(num_prototypes, part_dim, dim).uniform_(-bound, bound))

    @classmethod
    def from_config(cls, cfg, image_dim: int, text_dim: int) -> dict[str, Any]:
        """``__init__`` arguments: the token widths as given, the rest from ``cfg.MODEL.PGU``."""
        p = cfg.MODEL.PGU
        return {"image_dim": image_dim, "text_dim": text_dim, "dim": p.DIM, "num_prototypes": p.NUM_PROTOTYPES,
                "num_layers": p.NUM_LAYERS, "num_heads": p.NUM_HEADS, "ffn_dim": p.FFN_DIM,
                "dropout": p.DROPOUT, "part_dim": p.PART_DIM}

    @property
    def out_dim(self) -> int:
        """Width of the concatenated feature."""
        return self.num_prototypes * self.part_dim

    def forward(self, tokens: torch.Tensor, modality: str,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if modality not in _MODALITIES:
            raise ValueError(f"PGU modality must be one of {_MODALITIES}, got {modality!r}")
        if tokens.dim() != 3:
            raise ValueError(f"PGU expects tokens (B, L, C), got {tuple(tokens.shape)}")
        x = self.input_proj[modality](tokens)
        pad = None if attention_mask is None else ~attention_mask.bool()
        # The residual stream (the queries) stays in the prototypes' dtype, float32: under
        # autocast the matmuls inside the layers run in float16 / bfloat16 and their outputs are
        # added to float32 queries (type promotion), as in a transformer's float32 residual.
        q = self.prototypes.unsqueeze(0).expand(x.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, x, pad)
        parts = torch.einsum("bpd,pkd->bpk", q, self.part_proj)  # autocast picks its precision
        feature = F.normalize(parts.float().flatten(1), dim=-1)
        return parts, feature
