"""Visual backbones registered in fast-reid's ``BACKBONE_REGISTRY``.

``build_timm_vit_backbone`` (timm ViT / DeiT) and ``build_clip_visual_backbone`` (open_clip's CLIP
image tower). Both take normalised images (B, 3, H, W) and return tokens (B, 1 + N, C), class
token first; attribute ``out_dim`` = C. ``build_modified_resnet_backbone`` (open_clip's
ModifiedResNet, PLIP's image encoder) returns the same shape with the attention-pooled token first.
``build_unipt_transfer_backbone`` wraps one of them for fast-reid's own ``Baseline`` (image ReID):
a (B, C, 1, 1) or (B, C, h, w) feature map (fastreid_transfer.py).
"""
from .clip_visual import CLIPVisualBackbone, build_clip_visual_backbone
from .fastreid_transfer import TransferBackbone, build_unipt_transfer_backbone
from .modified_resnet import ModifiedResNetBackbone, build_modified_resnet_backbone
from .pos_embed import infer_grid, patch_grid, resize_pos_embed
from .vit import ViTBackbone, build_timm_vit_backbone

__all__ = [
    "ViTBackbone",
    "build_timm_vit_backbone",
    "CLIPVisualBackbone",
    "build_clip_visual_backbone",
    "ModifiedResNetBackbone",
    "build_modified_resnet_backbone",
    "TransferBackbone",
    "build_unipt_transfer_backbone",
    "infer_grid",
    "patch_grid",
    "resize_pos_embed",
]
