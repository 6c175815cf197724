"""open_clip's CLIP text tower returning every token: ``CLIPTextEncoder``.

``cfg.MODEL.TEXT.ARCH`` is an open_clip model name ("ViT-B-16-quickgelu" for OpenAI's
weights, or "UniPT-CLIP-tiny" for tests); ``cfg.MODEL.TEXT.WEIGHTS`` a local file: OpenAI CLIP
``.pt`` / open_clip state dict (its text part: token_embedding, positional_embedding,
transformer, ln_final, text_projection) or a UniPT checkpoint (the "text." part); "" = random.

Tokens are taken after ``ln_final`` and ``text_projection``: every token lives in CLIP's joint
space (width ``embed_dim``, 512 for ViT-B/16), like the image tokens of
``build_clip_visual_backbone``; the end-of-text token equals CLIP's own text embedding.
The causal mask of CLIP is kept; the tokenizer pads at the end, so a real token never attends
to padding and ``attention_mask`` needs no further use here (the features at padding
positions are whatever the causal transformer computes: consumers mask them).
``MODEL.TEXT.GRAD_CHECKPOINTING``: open_clip's activation checkpointing of the residual blocks
(the ``grad_checkpointing`` switch of its ``Transformer``); an open_clip without it is refused.

The tower is cut from :func:`unipt_plugin.modeling.clip_models.create_clip`; its weights file is
read by ``clip_models.read_clip_state_dict``. fast-reid ``@configurable``:
``CLIPTextEncoder(cfg)`` or ``CLIPTextEncoder(arch=..., max_length=..., ...)``.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from fastreid.config import configurable
from torch import nn

from unipt_plugin.modeling.clip_models import create_clip, open_clip_version, read_clip_state_dict
from unipt_plugin.modeling.weight_loading import LoadReport, encoder_weights_enabled, load_part_into

from .registry import TEXT_ENCODER_REGISTRY

__all__ = ["CLIPTextEncoder"]

logger = logging.getLogger(__name__)

# The image tower and CLIP's similarity scale / bias (TorchScript's non-parameters are dropped on reading).
_NON_TEXT_PREFIXES = ("visual.", "logit_scale", "logit_bias")


@TEXT_ENCODER_REGISTRY.register()
class CLIPTextEncoder(nn.Module):
    """CLIP text transformer: (input_ids (B, L), attention_mask (B, L)) -> tokens (B, L, out_dim)."""

    @configurable
    def __init__(self, arch: str, max_length: int = 77, weights: str = "", grad_checkpointing: bool = False) -> None:
        super().__init__()
        clip = create_clip(arch, plain_vit=True)
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("causal_mask", clip.attn_mask, persistent=False)
        self.context_length = clip.context_length
        if max_length > self.context_length:
            raise ValueError(
                f"INPUT.TEXT.MAX_LENGTH = {max_length} exceeds CLIP's context length {self.context_length} "
                f"({arch}); set INPUT.TEXT.MAX_LENGTH <= {self.context_length}"
            )
        self.vocab_size = self.token_embedding.num_embeddings
        proj = self.text_projection
        self.out_dim = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]
        logger.info("CLIP text encoder %s: width %d, %d layers, output %d, vocab %d",
                    arch, self.token_embedding.embedding_dim, len(self.transformer.resblocks), self.out_dim, self.vocab_size)
        if weights:
            self.load_weights(weights)
        if grad_checkpointing:
            if not hasattr(self.transformer, "grad_checkpointing"):
                raise ValueError(f"MODEL.TEXT.GRAD_CHECKPOINTING: the text transformer of '{arch}' in "
                                 f"{open_clip_version()} has no grad_checkpointing switch; set it to False")
            self.transformer.grad_checkpointing = True
            logger.info("CLIP text encoder: gradient checkpointing of the %d residual blocks",
                        len(self.transformer.resblocks))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, L) long, attention_mask (B, L) (1 = real token) -> tokens (B, L, out_dim)."""
        if input_ids.shape != attention_mask.shape:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
        length = input_ids.shape[1]
        if length > self.context_length:
            raise ValueError(f"{length} tokens exceed CLIP's context length {self.context_length}")
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        x = self.transformer(x, attn_mask=self.causal_mask[:length, :length].to(x.dtype))
        x = self.ln_final(x)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def load_weights(self, path: str) -> LoadReport:
        """Load the text part of a CLIP / open_clip file or the "text." part of a UniPT checkpoint."""
        return load_part_into(
            self, read_clip_state_dict(path), str(path), part_prefix="text.", strip_prefixes=("model.",),
            drop=lambda key: key.startswith(_NON_TEXT_PREFIXES),
        )

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        """``__init__`` arguments from ``cfg.MODEL.TEXT`` (DROPOUT must stay -1) and ``cfg.INPUT.TEXT``."""
        if float(cfg.MODEL.TEXT.DROPOUT) >= 0:
            raise ValueError(f"MODEL.TEXT.DROPOUT = {cfg.MODEL.TEXT.DROPOUT}: the CLIP text tower has no dropout; "
                             f"leave it at -1 with MODEL.TEXT.NAME CLIPTextEncoder")
        return {"arch": cfg.MODEL.TEXT.ARCH, "max_length": cfg.INPUT.TEXT.MAX_LENGTH, "weights": cfg.MODEL.TEXT.WEIGHTS if encoder_weights_enabled() else "",
                "grad_checkpointing": bool(cfg.MODEL.TEXT.GRAD_CHECKPOINTING)}
