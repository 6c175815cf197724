"""timm ViT / DeiT image encoder returning every token: ``build_timm_vit_backbone``.

``cfg.MODEL.VISUAL``: ``ARCH`` (a timm name: "vit_base_patch16_384", "deit_small_patch16_224",
"vit_tiny_patch16_224" with ``DEPTH``/``EMBED_DIM``/``NUM_HEADS`` overrides for small test
variants), ``STRIDE`` (patch stride; below the patch size gives overlapping patches through the
patch-embedding convolution's stride), ``DROP_PATH``, ``DROPOUT`` (timm's ``proj_drop_rate``:
dropout after every attention output projection and after both MLP layers of every block,
where the authors' ViT applies its ``drop_rate`` on the path their pre-training runs, which
has no dropout after the position embedding; so timm's ``pos_drop_rate`` stays 0, as do its
``attn_drop_rate`` and its ``drop_rate``, the classification head's, unused here),
``WEIGHTS`` (local file, "" = random),
``GRAD_CHECKPOINTING`` (timm's activation checkpointing of the transformer blocks: each block's
activations are recomputed during backward instead of being kept).
The model is built for ``cfg.INPUT.SIZE_TRAIN`` (H, W); a checkpoint's position embeddings
(e.g. 24x24 for vit_base_patch16_384, 14x14 for DeiT at 224) are resized bilinearly
(``align_corners=True``) to that grid (24x8 at 384x128), the class token's kept.

Distilled DeiT variants (and register-token ViTs) carry extra prefix tokens; the output drops
them so that it is always (B, 1 + N, C) with the class token first.

``ViTBackbone`` is fast-reid ``@configurable``: ``ViTBackbone(cfg)`` reads the keys above
(``from_config``), ``ViTBackbone(arch=..., image_size=..., ...)`` takes them as arguments; the
registered builder ``build_timm_vit_backbone(cfg)`` (the name configs use) is ``ViTBackbone(cfg)``.
"""
from __future__ import annotations

import logging
from typing import Any

import timm
import torch
from fastreid.config import configurable
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from torch import nn

from unipt_plugin.modeling.weight_loading import LoadReport, encoder_weights_enabled, load_weights_into

from .pos_embed import patch_grid, resize_pos_embed

__all__ = ["ViTBackbone", "build_timm_vit_backbone"]

logger = logging.getLogger(__name__)

_HEAD_PREFIXES = ("head.", "head_dist.", "pre_logits.")


class ViTBackbone(nn.Module):
    """A timm VisionTransformer as a token encoder.

    forward: normalised images (B, 3, H, W) -> tokens (B, 1 + N, C) after the final norm,
    class token first, N = grid rows x cols. Attributes ``out_dim`` (C), ``grid_size``.
    ``grad_checkpointing``: timm's ``set_grad_checkpointing`` (blocks recomputed in backward).
    ``weights``: a local timm / UniPT checkpoint loaded at the end (:meth:`load_weights`); "" = random.
    """

    @configurable
    def __init__(
        self,
        arch: str,
        image_size: tuple[int, int],
        stride: int = 16,
        drop_path: float = 0.0,
        dropout: float = 0.0,
        depth: int = 0,
        embed_dim: int = 0,
        num_heads: int = 0,
        grad_checkpointing: bool = False,
        weights: str = "",
    ) -> None:
        super().__init__()
        overrides = {k: v for k, v in (("depth", depth), ("embed_dim", embed_dim), ("num_heads", num_heads)) if v > 0}
        if not timm.is_model(arch):
            raise ValueError(f"MODEL.VISUAL.ARCH '{arch}' is not a timm architecture")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"MODEL.VISUAL.DROPOUT must be in [0, 1), got {dropout}")
        self.vit = timm.create_model(
            arch, pretrained=False, img_size=tuple(image_size), drop_path_rate=drop_path,
            proj_drop_rate=float(dropout), num_classes=0, **overrides
        )
        if getattr(self.vit, "cls_token", None) is None:
            raise ValueError(f"timm architecture '{arch}' has no class token; the backbone needs one")
        patch = self.vit.patch_embed.patch_size[0]
        self.grid_size = patch_grid(tuple(image_size), patch, stride)
        if stride != patch:
            self._set_stride(stride)
        self.num_prefix_tokens = self.vit.num_prefix_tokens
        self.out_dim = self.vit.embed_dim
        if grad_checkpointing:
            self.vit.set_grad_checkpointing(True)
            logger.info("ViT backbone: gradient checkpointing of the %d blocks", len(self.vit.blocks))
        logger.info(
            "ViT backbone %s: input %dx%d, patch %d stride %d, grid %dx%d, width %d, depth %d, drop-path %g, "
            "dropout %g", arch, image_size[0], image_size[1], patch, stride, *self.grid_size, self.out_dim,
            len(self.vit.blocks), drop_path, dropout,
        )
        if weights:
            self.load_weights(weights)

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        """``__init__`` arguments from ``cfg.MODEL.VISUAL`` and ``cfg.INPUT.SIZE_TRAIN``."""
        v = cfg.MODEL.VISUAL
        return {
            "arch": v.ARCH, "image_size": tuple(cfg.INPUT.SIZE_TRAIN), "stride": v.STRIDE, "drop_path": v.DROP_PATH,
            "dropout": v.DROPOUT,
            "depth": v.DEPTH, "embed_dim": v.EMBED_DIM, "num_heads": v.NUM_HEADS,
            "grad_checkpointing": bool(v.GRAD_CHECKPOINTING),
            "weights": v.WEIGHTS if encoder_weights_enabled() else "",
        }

    def _set_stride(self, stride: int) -> None:
        """Overlapping patches: change the conv stride and rebuild the position embedding."""
        pe = self.vit.patch_embed
        pe.proj.stride = (stride, stride)
        pe.grid_size = self.grid_size
        pe.num_patches = self.grid_size[0] * self.grid_size[1]
        n_pos_prefix = 0 if self.vit.no_embed_class else self.vit.num_prefix_tokens
        new = torch.zeros(1, n_pos_prefix + pe.num_patches, self.vit.embed_dim)
        nn.init.trunc_normal_(new, std=0.02)
        self.vit.pos_embed = nn.Parameter(new)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), normalised -> tokens (B, 1 + N, C)."""
        x = self.vit.forward_features(images)
        if self.num_prefix_tokens > 1:  # drop distillation / register tokens, keep the class token
            x = torch.cat([x[:, :1], x[:, self.num_prefix_tokens:]], dim=1)
        return x

    def load_weights(self, path: str) -> LoadReport:
        """Load a timm checkpoint or a UniPT checkpoint ("visual." part) from a local file."""

        def adapt(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            if "pos_embed" in sd:
                n_pos_prefix = 0 if self.vit.no_embed_class else self.vit.num_prefix_tokens
                sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], n_pos_prefix, self.grid_size)
            return sd

        return load_weights_into(
            self.vit, path, part_prefix="visual.", strip_prefixes=("model.", "vit."),
            adapt=adapt, drop=lambda key: key.startswith(_HEAD_PREFIXES),
        )


@BACKBONE_REGISTRY.register()
def build_timm_vit_backbone(cfg) -> ViTBackbone:
    """fast-reid builder: a :class:`ViTBackbone` from ``cfg.MODEL.VISUAL`` and ``cfg.INPUT.SIZE_TRAIN``."""
    return ViTBackbone(cfg)
