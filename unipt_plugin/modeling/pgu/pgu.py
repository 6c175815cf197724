"""Prototype-based Granularity Unification (PGU; LGUR, used by UniPT's fine-tuning).

Learnable prototypes, shared by both modalities, attend to a modality's token features through
a small decoder of cross-attention layers (no self-attention, no positional embedding); one
bias-free projection per prototype turns the prototypes into parts, and the concatenated parts,
L2-normalised, are the PGU feature (docs/choices.md, Fine-tuning: the PGU rows).

Choices of ours (the authors' fine-tuning code is not public):
* each modality's tokens enter through its own Linear(token width, DIM) with bias, always
  (LGUR fed 384-d DeiT-small tokens directly; BERT-base and ViT-B give 768-d tokens);
* no LayerNorm after the last decoder layer (only the per-layer pre-norms).

Sizes and init (MODEL.PGU.*; docs/choices.md gives LGUR's values, which the paper configs use):
* the attention's head width is free (HEAD_DIM; 0 = DIM / NUM_HEADS): with the default width
  and bias-carrying query/key/value projections (QKV_BIAS) the attention is torch's
  ``nn.MultiheadAttention``; otherwise :class:`PGUCrossAttention` (LGUR: 6 heads x 512, an inner
  width of 3,072 against DIM 384, no bias in the q/k/v projections);
* IMAGE_TOKENS "patches" drops the image's class token (the first token) before the decoder,
  as LGUR does; "all" keeps it;
* PART_INIT "kaiming_normal" draws each part projection N(0, 2 / PART_DIM) (torch's
  ``kaiming_normal_``, fan-out mode, ReLU gain: LGUR's 1x1 convolutions); "default" is the
  uniform init of ``nn.Linear``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from fastreid.config import configurable
from torch import nn

__all__ = ["PGU", "PGUCrossAttention", "PGUDecoderLayer"]

_MODALITIES = ("image", "text")
_IMAGE_TOKENS = ("all", "patches")
_PART_INITS = ("default", "kaiming_normal")


class PGUCrossAttention(nn.Module):
    """Multi-head cross-attention whose head width is free of the model width.

    ``q_proj`` / ``k_proj`` / ``v_proj``: Linear(dim, num_heads * head_dim), with bias when
    ``qkv_bias``; ``out_proj``: Linear(num_heads * head_dim, dim) with bias; scores scaled by
    head_dim ** -0.5, ``dropout`` on the attention probabilities in training (as
    ``nn.MultiheadAttention``). The Linear layers keep PyTorch's default init, as LGUR's
    (``nn.MultiheadAttention`` instead draws its q/k/v weights Xavier-uniform, biases 0).

    Called like ``nn.MultiheadAttention`` with ``batch_first=True``: ``forward(query (B, P, dim),
    key (B, L, dim), value (B, L, dim), key_padding_mask bool (B, L) True = ignore or None,
    need_weights=False)`` -> (output (B, P, dim), None).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, qkv_bias: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if num_heads <= 0 or head_dim <= 0:
            raise ValueError(f"MODEL.PGU.NUM_HEADS={num_heads} and HEAD_DIM={head_dim} must be > 0 here")
        inner = num_heads * head_dim
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, float(dropout)
        self.q_proj = nn.Linear(dim, inner, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, inner, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, inner, bias=qkv_bias)
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, heads * head_dim) -> (B, heads, L, head_dim)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError("PGUCrossAttention does not return attention weights (need_weights=False)")
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        keep = None if key_padding_mask is None else ~key_padding_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).flatten(2)), None


class PGUDecoderLayer(nn.Module):
    """Pre-norm cross-attention + feed-forward, queries updated residually.

    ``norm`` (one LayerNorm) normalises both the queries and the key/value tokens before the
    attention; the feed-forward Linear-ReLU-Linear has its own pre-norm and residual.
    ``attn``: ``nn.MultiheadAttention(dim, num_heads)`` when the heads' width is dim / num_heads
    (``head_dim`` 0 or that value) and ``qkv_bias``, else :class:`PGUCrossAttention`."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, head_dim: int = 0,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        if head_dim == 0:
            if num_heads <= 0 or dim % num_heads != 0:
                raise ValueError(f"MODEL.PGU.DIM={dim} must be divisible by MODEL.PGU.NUM_HEADS={num_heads} "
                                 f"when MODEL.PGU.HEAD_DIM is 0")
            head_dim = dim // num_heads
        if qkv_bias and head_dim * num_heads == dim:
            self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        else:
            self.attn = PGUCrossAttention(dim, num_heads, head_dim, qkv_bias, dropout)
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
        dropout: decoder sizes. head_dim: width of each attention head (0 = dim / num_heads).
        qkv_bias: bias in the attention's query/key/value projections. part_dim: output width of
        each prototype's projection. image_tokens: "all" or "patches" (the image's first token,
        the class token, dropped). part_init: "default" or "kaiming_normal" (module docstring).
    forward(tokens (B, L, C_modality), modality "image" | "text", attention_mask (B, L) 1 = real
    token or None) -> (parts (B, P, part_dim), feature (B, P * part_dim) L2-normalised, float32).
    Image tokens are the backbones' (B, 1 + N, C_v), class token first; with image_tokens
    "patches" the decoder sees tokens[:, 1:] (and attention_mask[:, 1:] if given).
    Under autocast, ``parts`` has autocast's dtype (the output of a matmul); the queries between
    the decoder layers and ``feature`` are float32.
    """

    @configurable
    def __init__(self, image_dim: int, text_dim: int, dim: int = 384, num_prototypes: int = 6,
                 num_layers: int = 2, num_heads: int = 8, ffn_dim: int = 1536,
                 dropout: float = 0.1, part_dim: int = 512, head_dim: int = 0, qkv_bias: bool = True,
                 image_tokens: str = "all", part_init: str = "default") -> None:
        super().__init__()
        dim = dim or image_dim
        if num_heads <= 0:
            raise ValueError(f"MODEL.PGU.NUM_HEADS={num_heads} must be > 0")
        if head_dim < 0:
            raise ValueError(f"MODEL.PGU.HEAD_DIM={head_dim} must be >= 0 (0 = DIM / NUM_HEADS)")
        if head_dim == 0 and dim % num_heads != 0:
            raise ValueError(f"MODEL.PGU.DIM={dim} must be divisible by MODEL.PGU.NUM_HEADS={num_heads} "
                             f"when MODEL.PGU.HEAD_DIM is 0 (or set HEAD_DIM)")
        if num_prototypes <= 0 or num_layers <= 0:
            raise ValueError(f"MODEL.PGU.NUM_PROTOTYPES={num_prototypes} and NUM_LAYERS={num_layers} must be > 0")
        if image_tokens not in _IMAGE_TOKENS:
            raise ValueError(f"MODEL.PGU.IMAGE_TOKENS must be one of {_IMAGE_TOKENS}, got {image_tokens!r}")
        if part_init not in _PART_INITS:
            raise ValueError(f"MODEL.PGU.PART_INIT must be one of {_PART_INITS}, got {part_init!r}")
        self.dim, self.num_prototypes, self.part_dim = dim, num_prototypes, part_dim
        self.image_tokens = image_tokens
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim))
        self.input_proj = nn.ModuleDict({"image": nn.Linear(image_dim, dim), "text": nn.Linear(text_dim, dim)})
        self.layers = nn.ModuleList(PGUDecoderLayer(dim, num_heads, ffn_dim, dropout, head_dim, qkv_bias)
                                    for _ in range(num_layers))
        # One bias-free Linear(dim, part_dim) per prototype, stored batched (P, part_dim, dim).
        if part_init == "default":
            bound = 1.0 / math.sqrt(dim)
            self.part_proj = nn.Parameter(torch.empty(num_prototypes, part_dim, dim).uniform_(-bound, bound))
        else:
            weight = torch.empty(num_prototypes, part_dim, dim)
            for w in weight:  # each (part_dim, dim) slice: fan-out = part_dim
                nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
            self.part_proj = nn.Parameter(weight)

    @classmethod
    def from_config(cls, cfg, image_dim: int, text_dim: int) -> dict[str, Any]:
        """``__init__`` arguments: the token widths as given, the rest from ``cfg.MODEL.PGU``."""
        p = cfg.MODEL.PGU
        return {"image_dim": image_dim, "text_dim": text_dim, "dim": p.DIM, "num_prototypes": p.NUM_PROTOTYPES,
                "num_layers": p.NUM_LAYERS, "num_heads": p.NUM_HEADS, "ffn_dim": p.FFN_DIM,
                "dropout": p.DROPOUT, "part_dim": p.PART_DIM, "head_dim": p.HEAD_DIM,
                "qkv_bias": bool(p.QKV_BIAS), "image_tokens": p.IMAGE_TOKENS, "part_init": p.PART_INIT}

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
        if modality == "image" and self.image_tokens == "patches":
            if tokens.shape[1] < 2:
                raise ValueError(f"MODEL.PGU.IMAGE_TOKENS 'patches' drops the class token, but the image has "
                                 f"{tokens.shape[1]} token(s): expected (B, 1 + N, C) with N >= 1")
            tokens = tokens[:, 1:]
            attention_mask = None if attention_mask is None else attention_mask[:, 1:]
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
