"""open_clip's CLIP image tower returning every token: ``build_clip_visual_backbone``.

``cfg.MODEL.VISUAL.ARCH`` is an open_clip model name ("ViT-B-16-quickgelu" for OpenAI's
weights, "ViT-B-16", or "UniPT-CLIP-tiny" for tests); the tower is built for
``cfg.INPUT.SIZE_TRAIN``; ``STRIDE`` below the patch size gives overlapping patches.
``WEIGHTS``: OpenAI CLIP ``.pt`` (TorchScript), an open_clip state dict, or a UniPT checkpoint;
only the "visual." part is used. ``GRAD_CHECKPOINTING``: open_clip's activation checkpointing. The checkpoint's 14x14 position grid (224 input) is resized
bilinearly with ``align_corners=True`` to the target grid (24x8 at 384x128).

Tokens are taken AFTER ``ln_post`` and the projection ``proj``: every token lives in CLIP's
joint image-text space (width ``embed_dim``, 512 for ViT-B/16), and token 0 equals CLIP's own
image embedding. This matches how CLIP-based person-search methods use the patch tokens and
lets a CLIP text encoder share the width.

The tower is cut from :func:`unipt_plugin.modeling.clip_models.create_clip` and its weights
file is read by ``clip_models.read_clip_state_dict`` (the readers of the whole-CLIP loader).
``CLIPVisualBackbone`` is fast-reid ``@configurable``: ``CLIPVisualBackbone(cfg)`` or plain
arguments; the registered builder ``build_clip_visual_backbone(cfg)`` is ``CLIPVisualBackbone(cfg)``.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from fastreid.config import configurable
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from torch import nn

from unipt_plugin.modeling.clip_models import create_clip, open_clip_version, read_clip_state_dict
from unipt_plugin.modeling.weight_loading import LoadReport, encoder_weights_enabled, load_part_into

from .pos_embed import patch_grid, resize_pos_embed

__all__ = ["CLIPVisualBackbone", "build_clip_visual_backbone"]

logger = logging.getLogger(__name__)


class CLIPVisualBackbone(nn.Module):
    """CLIP ViT image tower as a token encoder.

    forward: normalised images (B, 3, H, W) -> tokens (B, 1 + N, C), C = ``out_dim`` (the
    CLIP embedding width), class token first.
    ``grad_checkpointing``: open_clip's ``set_grad_checkpointing`` of the tower (each residual
    block recomputed during backward); an open_clip without it is refused.
    ``weights``: a local CLIP / open_clip / UniPT file loaded at the end (:meth:`load_weights`).
    """

    @configurable
    def __init__(self, arch: str, image_size: tuple[int, int], stride: int = 0,
                 grad_checkpointing: bool = False, weights: str = "") -> None:
        super().__init__()
        self.tower = create_clip(arch, image_size, plain_vit=True).visual
        if self.tower.attn_pool is not None:
            raise ValueError(f"open_clip architecture '{arch}' uses attentional pooling; not supported")
        patch = self.tower.patch_size[0]
        stride = stride or patch
        self.grid_size = patch_grid(tuple(image_size), patch, stride)
        if stride != patch:
            self.tower.conv1.stride = (stride, stride)
            width = self.tower.class_embedding.shape[0]
            new = (width ** -0.5) * torch.randn(1 + self.grid_size[0] * self.grid_size[1], width)
            self.tower.positional_embedding = nn.Parameter(new)
            self.tower.grid_size = self.grid_size
        self.image_size = tuple(image_size)
        self.out_dim = self.tower.proj.shape[1]
        if grad_checkpointing:
            if not callable(getattr(self.tower, "set_grad_checkpointing", None)):
                raise ValueError(f"MODEL.VISUAL.GRAD_CHECKPOINTING: the image tower of '{arch}' in "
                                 f"{open_clip_version()} has no set_grad_checkpointing; set it to False")
            self.tower.set_grad_checkpointing(True)
            logger.info("CLIP visual backbone: gradient checkpointing of the %d residual blocks",
                        len(self.tower.transformer.resblocks))
        logger.info(
            "CLIP visual backbone %s: input %dx%d, patch %d stride %d, grid %dx%d, output width %d",
            arch, image_size[0], image_size[1], patch, stride, *self.grid_size, self.out_dim,
        )
        if weights:
            self.load_weights(weights)

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        """``__init__`` arguments from ``cfg.MODEL.VISUAL`` and ``cfg.INPUT.SIZE_TRAIN``."""
        v = cfg.MODEL.VISUAL
        if float(v.DROPOUT) != 0:
            raise ValueError(f"MODEL.VISUAL.DROPOUT = {v.DROPOUT}: the CLIP image tower has no dropout; leave it at 0 "
                             f"with MODEL.BACKBONE.NAME build_clip_visual_backbone")
        return {"arch": v.ARCH, "image_size": tuple(cfg.INPUT.SIZE_TRAIN), "stride": v.STRIDE,
                "grad_checkpointing": bool(v.GRAD_CHECKPOINTING),
                "weights": v.WEIGHTS if encoder_weights_enabled() else ""}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), normalised -> tokens (B, 1 + N, out_dim) after ln_post and proj."""
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"input images are {tuple(images.shape[-2:])}, the backbone was built for {self.image_size}")
        t = self.tower
        x = t.conv1(images.to(t.conv1.weight.dtype))  # (B, width, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, N, width)
        cls = t.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + t.positional_embedding.to(x.dtype)
        x = t.patch_dropout(x)
        x = t.ln_pre(x)
        x = t.transformer(x)
        x = t.ln_post(x)
        return x @ t.proj

    def load_weights(self, path: str) -> LoadReport:
        """Load the "visual." part of a CLIP / open_clip / UniPT file, resizing the position grid."""

        def adapt(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            if "positional_embedding" in sd:
                sd["positional_embedding"] = resize_pos_embed(sd["positional_embedding"], 1, self.grid_size)
            return sd

        return load_part_into(self.tower, read_clip_state_dict(path), str(path), part_prefix="visual.",
                              strip_prefixes=("model.", "tower."), adapt=adapt)


@BACKBONE_REGISTRY.register()
def build_clip_visual_backbone(cfg) -> CLIPVisualBackbone:
    """fast-reid builder: a :class:`CLIPVisualBackbone` from ``cfg.MODEL.VISUAL``."""
    return CLIPVisualBackbone(cfg)
