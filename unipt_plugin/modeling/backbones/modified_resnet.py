"""CLIP's modified ResNet (open_clip's ``ModifiedResNet``) as a token encoder: ``build_modified_resnet_backbone``.

The image encoder of PLIP (its ``Image_encoder_ModifiedResNet``): CLIP's ResNet with the 3-conv
stem, anti-aliased strided convolutions and a QKV attention pool, at 256x128. The network is
open_clip's ``ModifiedResNet`` (same module names, so the same state-dict keys as PLIP's and
OpenAI's files); this module only sizes its attention pool for person images:

* open_clip builds the pool's position embedding for a square grid; here it has
  ``1 + (H / 32) * (W / 32)`` rows (33 at 256x128: the mean token and an 8x4 grid, row-major),
  initialised as open_clip does (N(0, 1) / sqrt(C_in)). A checkpoint's embedding of another grid is
  resized bilinearly (``align_corners=True``, :func:`.pos_embed.resize_pos_embed`), the mean
  token's row kept.
* ``cfg.MODEL.VISUAL.ARCH``: "RN50-PLIP" (PLIP's: layers 3-4-6-3, width 64, 8 heads, 768-d
  output), "UniPT-RN-tiny" (tests), or an open_clip ResNet name ("RN50", "RN101", "RN50x4", ...:
  OpenAI's sizes, ``width * 32 / 64`` heads as open_clip's CLIP builds them).
* ``cfg.MODEL.VISUAL.WEIGHTS``: PLIP's released checkpoint (its ``ImgEncoder_state_dict``,
  :mod:`unipt_plugin.modeling.plip_weights`), an OpenAI / open_clip CLIP ResNet file or a UniPT
  checkpoint ("visual." part); "" = random. ``MODEL.WEIGHTS`` = PLIP's checkpoint loads both
  encoders (``engine/checkpoint.py``).

Output: normalised images (B, 3, H, W) -> tokens (B, 1 + N, C), C = the pool's output width
(``out_dim``, 768 for RN50-PLIP), N = (H / 32) * (W / 32). Token 0 is the attention-pooled
embedding, exactly open_clip's ``ModifiedResNet.forward`` (PLIP's global image feature). The N
spatial tokens (row-major over the 8x4 grid at 256x128) are brought to the same width
``MODEL.VISUAL.RESNET_TOKENS`` ways:

* "value" (default): each layer-4 position with its position embedding through the pool's value
  and output projections, ``c_proj(v_proj(x_i + pos_i))``: what the pool's output would be if
  it attended to that position alone, in the same space as token 0;
* "attention": the pool's attention run with every position as a query (open_clip computes
  these rows and keeps only the first); token 0 is then the same pooled embedding.

BatchNorm layers are those of the ResNet (training mode updates their statistics).
``ModifiedResNetBackbone`` is fast-reid ``@configurable``: ``ModifiedResNetBackbone(cfg)`` or
plain arguments; the registered builder ``build_modified_resnet_backbone(cfg)`` is
``ModifiedResNetBackbone(cfg)``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from fastreid.config import configurable
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from unipt_plugin.modeling.plip_weights import (PLIP_GRID, is_plip_checkpoint, plip_image_state_dict,
                                                resize_attnpool_pos_embed)
from unipt_plugin.modeling.weight_loading import (LoadReport, encoder_weights_enabled, load_part_into,
                                                  unwrap_state_dict)
from unipt_plugin.utils.io import load_weights_file

__all__ = ["MODIFIED_RESNET_ARCHS", "RESNET_TOKENS", "ModifiedResNetSpec", "ModifiedResNetBackbone",
           "modified_resnet_spec", "build_modified_resnet_backbone"]

logger = logging.getLogger(__name__)

#: Output stride of the ModifiedResNet (stem /4, layers 2-4 /2 each).
OUTPUT_STRIDE = 32
#: Ways of bringing the spatial tokens to the pool's output width (MODEL.VISUAL.RESNET_TOKENS).
RESNET_TOKENS = ("value", "attention")


@dataclass(frozen=True)
class ModifiedResNetSpec:
    """Sizes of a ModifiedResNet: blocks per stage, stem width, attention-pool heads and output width."""

    layers: tuple[int, int, int, int]
    width: int
    heads: int
    output_dim: int


#: Architectures by name besides open_clip's ResNets. RN50-PLIP: PLIP's zs_infer.py / CMPM-C
#: train.py defaults (layers [3, 4, 6, 3], heads 8, img_dim 768, ModifiedResNet's width 64).
MODIFIED_RESNET_ARCHS: dict[str, ModifiedResNetSpec] = {
    "RN50-PLIP": ModifiedResNetSpec(layers=(3, 4, 6, 3), width=64, heads=8, output_dim=768),
    "UniPT-RN-tiny": ModifiedResNetSpec(layers=(1, 1, 1, 1), width=8, heads=2, output_dim=32),
}


def modified_resnet_spec(arch: str) -> ModifiedResNetSpec:
    """The sizes of ``arch``: a name of :data:`MODIFIED_RESNET_ARCHS` or an open_clip model with a
    ResNet image tower (layers, width, embed_dim of its config; heads = width * 32 / head_width).

    Raises:
        ValueError: an unknown name or an open_clip model whose image tower is not a ResNet.
    """
    if arch in MODIFIED_RESNET_ARCHS:
        return MODIFIED_RESNET_ARCHS[arch]
    cfg = open_clip.get_model_config(arch) if isinstance(arch, str) else None
    vision = (cfg or {}).get("vision_cfg", {})
    if not isinstance(vision.get("layers"), (list, tuple)) or len(vision["layers"]) != 4:
        resnets = [m for m in open_clip.list_models() if isinstance(
            (open_clip.get_model_config(m) or {}).get("vision_cfg", {}).get("layers"), (list, tuple))]
        raise ValueError(f"MODEL.VISUAL.ARCH {arch!r} is not a ModifiedResNet; use one of "
                         f"{sorted(MODIFIED_RESNET_ARCHS)} or an open_clip ResNet ({', '.join(resnets)})")
    width = int(vision.get("width", 64))
    return ModifiedResNetSpec(layers=tuple(int(n) for n in vision["layers"]), width=width,
                              heads=width * 32 // int(vision.get("head_width", 64)), output_dim=int(cfg["embed_dim"]))


def _refuse_unused_keys(v) -> None:
    """MODEL.VISUAL keys of the ViT backbones that a ModifiedResNet cannot apply: refused when set."""
    unused = {"STRIDE": (v.STRIDE, 16, "the ViT patch stride; the ResNet's output stride is fixed at 32"),
              "DROP_PATH": (v.DROP_PATH, 0.0, "the ResNet has no stochastic depth"),
              "DROPOUT": (v.DROPOUT, 0.0, "the ResNet has no dropout"),
              "DEPTH": (v.DEPTH, 0, "the sizes come from MODEL.VISUAL.ARCH"),
              "EMBED_DIM": (v.EMBED_DIM, 0, "the sizes come from MODEL.VISUAL.ARCH"),
              "NUM_HEADS": (v.NUM_HEADS, 0, "the sizes come from MODEL.VISUAL.ARCH"),
              "GRAD_CHECKPOINTING": (bool(v.GRAD_CHECKPOINTING), False,
                                     "recomputing a block would update its BatchNorm statistics twice")}
    for key, (value, default, why) in unused.items():
        if value != default:
            raise ValueError(f"MODEL.VISUAL.{key} = {value}: {why}; set it to {default} with MODEL.BACKBONE.NAME "
                             f"build_modified_resnet_backbone")


class ModifiedResNetBackbone(nn.Module):
    """open_clip's ModifiedResNet as a token encoder (``self.resnet``).

    forward: normalised images (B, 3, H, W) -> tokens (B, 1 + N, ``out_dim``), the attention-pooled
    token first, N = ``grid_size[0] * grid_size[1]`` spatial tokens row-major (module docstring).
    """

    @configurable
    def __init__(self, arch: str, image_size: tuple[int, int], tokens: str = "value", weights: str = "") -> None:
        super().__init__()
        if tokens not in RESNET_TOKENS:
            raise ValueError(f"MODEL.VISUAL.RESNET_TOKENS must be one of {RESNET_TOKENS}, got {tokens!r}")
        h, w = (int(s) for s in image_size)
        if h % OUTPUT_STRIDE or w % OUTPUT_STRIDE or h <= 0 or w <= 0:
            raise ValueError(f"INPUT.SIZE_TRAIN {h}x{w}: a ModifiedResNet needs both sides to be positive multiples "
                             f"of {OUTPUT_STRIDE} (its output stride), e.g. 256x128 or 384x128")
        spec = modified_resnet_spec(arch)
        self.spec = spec
        self.resnet = ModifiedResNet(layers=list(spec.layers), output_dim=spec.output_dim, heads=spec.heads,
                                     image_size=OUTPUT_STRIDE, width=spec.width)
        self.grid_size = (h // OUTPUT_STRIDE, w // OUTPUT_STRIDE)
        self.resnet.image_size = (h, w)
        self.resnet.grid_size = self.grid_size  # read by plip_weights to resize a checkpoint's grid
        pool = self.resnet.attnpool
        in_dim = pool.k_proj.in_features
        pool.positional_embedding = nn.Parameter(
            torch.randn(1 + self.grid_size[0] * self.grid_size[1], in_dim) / in_dim ** 0.5)  # open_clip's init
        self.image_size = (h, w)
        self.tokens = tokens
        self.out_dim = spec.output_dim
        logger.info("ModifiedResNet backbone %s: layers %s, width %d, %d heads, input %dx%d, grid %dx%d, "
                    "output width %d, spatial tokens '%s'", arch, list(spec.layers), spec.width, spec.heads, h, w,
                    *self.grid_size, self.out_dim, tokens)
        if weights:
            self.load_weights(weights)

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        """``__init__`` arguments from ``cfg.MODEL.VISUAL`` (ARCH, RESNET_TOKENS, WEIGHTS) and
        ``cfg.INPUT.SIZE_TRAIN``; the ViT-only keys must be at their defaults."""
        v = cfg.MODEL.VISUAL
        _refuse_unused_keys(v)
        return {"arch": v.ARCH, "image_size": tuple(cfg.INPUT.SIZE_TRAIN), "tokens": str(v.RESNET_TOKENS),
                "weights": v.WEIGHTS if encoder_weights_enabled() else ""}

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> layer-4 features (B, C_in, H / 32, W / 32), C_in = width * 32."""
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"input images are {tuple(images.shape[-2:])}, the backbone was built for "
                             f"{self.image_size}")
        r = self.resnet
        x = r.stem(images.to(r.conv1.weight.dtype))
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))

    def _attend_every_position(self, feats: torch.Tensor) -> torch.Tensor:
        """The attention pool with every position as a query: (B, C_in, h, w) -> (B, 1 + h*w, out_dim)."""
        pool = self.resnet.attnpool
        x = feats.flatten(2).permute(2, 0, 1)  # (h*w, B, C_in)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0) + pool.positional_embedding[:, None, :].to(x.dtype)
        out, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias, use_separate_proj_weight=True, training=self.training, need_weights=False)
        return out.transpose(0, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), normalised -> tokens (B, 1 + N, out_dim): pooled token, then the grid."""
        feats = self.feature_map(images)
        if self.tokens == "attention":
            return self._attend_every_position(feats)
        pool = self.resnet.attnpool
        pooled = pool(feats)  # (B, out_dim): open_clip's attention pool
        spatial = feats.flatten(2).transpose(1, 2) + pool.positional_embedding[1:].to(feats.dtype)  # (B, N, C_in)
        spatial = pool.c_proj(pool.v_proj(spatial))  # (B, N, out_dim)
        return torch.cat([pooled.unsqueeze(1), spatial], dim=1)

    def load_weights(self, path: str) -> LoadReport:
        """Load PLIP's checkpoint (its image encoder), a CLIP ResNet file or a UniPT checkpoint
        ("visual." part), resizing the attention pool's position grid to ``grid_size``."""
        raw = load_weights_file(path)
        plip = is_plip_checkpoint(raw)
        # PLIP's grid is 8x4; other files' grids are read from their length (square for OpenAI's 7x7)
        state = plip_image_state_dict(raw, str(path)) if plip else unwrap_state_dict(raw, str(path))
        old_grid = PLIP_GRID if plip else None

        def adapt(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return resize_attnpool_pos_embed(sd, "attnpool.positional_embedding", self.grid_size, old_grid)

        return load_part_into(self.resnet, state, str(path), part_prefix=None if plip else "visual.",
                              strip_prefixes=("model.", "resnet."), adapt=adapt)


@BACKBONE_REGISTRY.register()
def build_modified_resnet_backbone(cfg) -> ModifiedResNetBackbone:
    """fast-reid builder: a :class:`ModifiedResNetBackbone` from ``cfg.MODEL.VISUAL`` and ``cfg.INPUT.SIZE_TRAIN``."""
    return ModifiedResNetBackbone(cfg)
