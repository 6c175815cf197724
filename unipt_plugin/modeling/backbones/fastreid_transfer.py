"""A pre-trained visual encoder (UniPT or PLIP) as a fast-reid backbone: ``build_unipt_transfer_backbone``.

fast-reid's ``Baseline`` calls ``backbone(images)`` on normalised images (B, 3, H, W) and hands the
result to its head (``EmbeddingHead``), which pools it with MODEL.HEADS.POOL_LAYER, runs the neck
and reads ``[..., 0, 0]``: a (B, C, h, w) feature map with C = MODEL.BACKBONE.FEAT_DIM (fast-reid's
own ViT returns its class token as (B, C, 1, 1)). ``TransferBackbone`` builds one of the plugin's
encoders (MODEL.TRANSFER.ENCODER, a BACKBONE_REGISTRY builder configured by MODEL.VISUAL.* exactly
as in text-image runs; tokens (B, 1 + N, C_v), the first token global) and returns, per
MODEL.TRANSFER.FEATURE:

* ``"cls"``: the first token (class token of a ViT, attention-pooled token of PLIP's ResNet) as (B, D, 1, 1);
* ``"max"``: the maximum over every token, UniPT's pooling, as (B, D, 1, 1);
* ``"grid"``: the N patch tokens as a (B, D, h, w) map (h x w = the encoder's ``grid_size``), for
  fast-reid's pooling layers (GlobalAvgPool, GeneralizedMeanPooling, GlobalMaxPool, ...).

D = C_v, or MODEL.TRANSFER.PROJECTION_DIM when > 0: the checkpoint's per-token
image projection (``image_proj``, trained with the encoder by UniPT's pre-training or fine-tuning)
is applied to every token first; with FEATURE "max" the feature is then exactly the checkpoint's
image embedding before its L2 normalisation.

MODEL.TRANSFER.WEIGHTS names a UniPT pre-training or fine-tuning checkpoint (``model_final.pth``,
``{"model": state dict}``): its ``visual.`` part is loaded by the encoder's own loader (position
embeddings resized to INPUT.SIZE_TRAIN's grid as in fine-tuning; matched / missing / unexpected
keys logged) and, with PROJECTION_DIM > 0, ``image_proj.`` into the projection (the file is then
read twice; a projection of another width is refused naming both shapes). Inside ``encoder_weights_skipped`` (``--eval-only``: every parameter comes from
MODEL.WEIGHTS) no file is read.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from fastreid.config import configurable
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from torch import nn

from unipt_plugin.modeling.weight_loading import (LoadReport, encoder_weights_enabled, load_part_into,
                                                  load_weights_into, unwrap_state_dict)
from unipt_plugin.utils.io import load_weights_file

__all__ = ["TransferBackbone", "build_unipt_transfer_backbone", "TRANSFER_FEATURES"]

logger = logging.getLogger(__name__)

#: values of MODEL.TRANSFER.FEATURE
TRANSFER_FEATURES = ("cls", "max", "grid")
_SELF = "build_unipt_transfer_backbone"
_PROJ_PREFIX = "image_proj."


class TransferBackbone(nn.Module):
    """A token encoder as fast-reid's backbone (see the module docstring).

    Args:
        encoder: images (B, 3, H, W) normalised -> tokens (B, 1 + N, C_v); attribute ``out_dim``
            (C_v), and ``grid_size`` (h, w with h * w = N) for ``feature="grid"``.
        feature: MODEL.TRANSFER.FEATURE ("cls", "max" or "grid").
        projection_dim: width D of the per-token projection (MODEL.TRANSFER.PROJECTION_DIM), 0 = none.
        weights: a UniPT checkpoint to load (MODEL.TRANSFER.WEIGHTS), "" = none.
        feat_dim: MODEL.BACKBONE.FEAT_DIM, which fast-reid's head is built with; must equal the
            output width (``out_dim``), else ValueError naming both. None = not checked.
    Attributes:
        out_dim: the output channels D.
        load_report: the encoder's :class:`LoadReport` of ``weights`` (None without).
    """

    @configurable
    def __init__(self, encoder: nn.Module, feature: str = "cls", projection_dim: int = 0, weights: str = "",
                 feat_dim: int | None = None) -> None:
        super().__init__()
        if feature not in TRANSFER_FEATURES:
            raise ValueError(f"MODEL.TRANSFER.FEATURE = {feature!r}: expected one of {list(TRANSFER_FEATURES)}")
        if not hasattr(encoder, "out_dim"):
            raise TypeError(f"MODEL.TRANSFER.ENCODER: {type(encoder).__name__} has no out_dim; expected one of the "
                            "plugin's token encoders (build_timm_vit_backbone, build_clip_visual_backbone, ...)")
        grid = getattr(encoder, "grid_size", None)
        if feature == "grid" and grid is None:
            raise ValueError(f"MODEL.TRANSFER.FEATURE grid needs the encoder's patch grid, but "
                             f"{type(encoder).__name__} has no grid_size; use cls or max")
        self.encoder = encoder
        self.feature = feature
        self.grid_size = tuple(grid) if grid is not None else None
        self.proj = nn.Linear(int(encoder.out_dim), int(projection_dim)) if projection_dim else None
        self.out_dim = int(projection_dim) if projection_dim else int(encoder.out_dim)
        if feat_dim is not None and int(feat_dim) != self.out_dim:
            raise ValueError(f"MODEL.BACKBONE.FEAT_DIM = {feat_dim}, but the transfer backbone gives "
                             f"{self.out_dim} channels ({type(encoder).__name__}, width {encoder.out_dim}"
                             f"{', projected' if projection_dim else ''}): set MODEL.BACKBONE.FEAT_DIM {self.out_dim} "
                             "(fast-reid's head is built with it)")
        self.load_report: LoadReport | None = None
        if weights:
            self.load_weights(weights)
        logger.info("transfer backbone: %s, feature %s%s -> (B, %d, %s)", type(encoder).__name__, feature,
                    f", projected {encoder.out_dim} -> {projection_dim}" if projection_dim else "", self.out_dim,
                    "%d, %d" % self.grid_size if feature == "grid" else "1, 1")

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        """``__init__`` arguments from MODEL.TRANSFER.* and MODEL.BACKBONE.FEAT_DIM; the encoder is
        built by MODEL.TRANSFER.ENCODER's builder from the same cfg (MODEL.VISUAL.*, INPUT.SIZE_TRAIN)."""
        t = cfg.MODEL.TRANSFER
        name = str(t.ENCODER)
        if name == _SELF:
            raise ValueError(f"MODEL.TRANSFER.ENCODER = {name!r} is the transfer backbone itself; name the encoder's "
                             "builder, e.g. build_timm_vit_backbone")
        try:
            builder = BACKBONE_REGISTRY.get(name)
        except KeyError as e:
            raise KeyError(f"MODEL.TRANSFER.ENCODER = {name!r} is not in fast-reid's BACKBONE_REGISTRY; the plugin's "
                           "encoders: build_timm_vit_backbone, build_clip_visual_backbone, "
                           "build_modified_resnet_backbone") from e
        weights = str(t.WEIGHTS) if encoder_weights_enabled() else ""
        if t.WEIGHTS and cfg.MODEL.VISUAL.WEIGHTS:
            raise ValueError(f"MODEL.TRANSFER.WEIGHTS ({t.WEIGHTS}) and MODEL.VISUAL.WEIGHTS ({cfg.MODEL.VISUAL.WEIGHTS}) "
                             "would both load the encoder: keep one (TRANSFER.WEIGHTS for a UniPT checkpoint, "
                             "VISUAL.WEIGHTS for a timm / CLIP file)")
        projection_dim = int(t.PROJECTION_DIM)
        if projection_dim < 0:
            raise ValueError(f"MODEL.TRANSFER.PROJECTION_DIM = {projection_dim}: expected 0 (no projection) or the width "
                             "of the checkpoint's image projection")
        if projection_dim and not t.WEIGHTS:
            raise ValueError(f"MODEL.TRANSFER.PROJECTION_DIM = {projection_dim} applies the image projection of a UniPT "
                             "checkpoint, but MODEL.TRANSFER.WEIGHTS is empty: name the checkpoint, or set it to 0")
        return {"encoder": builder(cfg), "feature": str(t.FEATURE), "projection_dim": projection_dim,
                "weights": weights, "feat_dim": int(cfg.MODEL.BACKBONE.FEAT_DIM)}

    def load_weights(self, path: str) -> LoadReport:
        """Load the ``visual.`` part of a UniPT checkpoint into the encoder (its own loader) and,
        with the projection, ``image_proj.`` into it (shape-checked; both must be in the file)."""
        loader = getattr(self.encoder, "load_weights", None)
        if callable(loader):
            report = loader(path)
        else:
            report = load_weights_into(self.encoder, path, part_prefix="visual.")
        self.load_report = report
        if self.proj is not None:
            state = unwrap_state_dict(load_weights_file(path), str(path))
            if not any(k.startswith(_PROJ_PREFIX) for k in state):
                raise ValueError(f"{path}: MODEL.TRANSFER.PROJECTION_DIM > 0, but the file has no {_PROJ_PREFIX}* "
                                 "tensors (a UniPT pre-training or fine-tuning checkpoint has image_proj.weight / .bias)")
            proj_report = load_part_into(self.proj, state, str(path), part_prefix=_PROJ_PREFIX)
            if proj_report.missing:
                raise ValueError(f"{path}: the image projection lacks {proj_report.missing}")
        return report

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) normalised -> (B, D, 1, 1) for "cls" / "max", (B, D, h, w) for "grid"."""
        tokens = self.encoder(images)  # (B, 1 + N, C_v)
        if self.proj is not None:
            tokens = self.proj(tokens)  # (B, 1 + N, D)
        if self.feature == "cls":
            out = tokens[:, 0]
        elif self.feature == "max":
            out = tokens.max(dim=1).values
        else:
            h, w = self.grid_size
            patches = tokens[:, 1:]
            if patches.shape[1] != h * w:
                raise ValueError(f"the encoder gave {patches.shape[1]} patch tokens for its {h}x{w} grid")
            return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)
        return out[:, :, None, None]


@BACKBONE_REGISTRY.register()
def build_unipt_transfer_backbone(cfg) -> TransferBackbone:
    """fast-reid builder: a :class:`TransferBackbone` from ``cfg.MODEL.TRANSFER`` (and MODEL.VISUAL for its encoder)."""
    return TransferBackbone(cfg)
