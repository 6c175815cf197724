"""Visual backbones registered in fast-reid's ``BACKBONE_REGISTRY``.

``build_timm_vit_backbone`` (timm ViT / DeiT) and ``build_clip_visual_backbone`` (open_clip's CLIP
image tower). Both take normalised images (B, 3, H, W) and return tokens (B, 1 + N, C), class
token first; attribute ``out_dim`` = C.
"""
from .clip_visual import CLIPVisualBackbone, build_clip_visual_backbone
from .pos_embed import infer_grid, patch_grid, resize_pos_embed
from .vit import ViTBackbone, build_timm_vit_backbone

__all__ = [
    "ViTBackbone",
    "build_timm_vit_backbone",
    "CLIPVisualBackbone",
    "build_clip_visual_backbone",
    "infer_grid",
    "patch_grid",
    "resize_pos_embed",
]
