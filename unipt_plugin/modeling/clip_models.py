"""open_clip CLIP models built from a config name, nothing downloaded.

Both CLIP towers (``backbones/clip_visual.py``, ``text_encoders/clip_text.py``) build an
``open_clip.CLIP`` from an open_clip model config and keep their half. Names are open_clip's own
configs ("ViT-B-16", "ViT-B-16-quickgelu", ...) plus the small test variant below.

OpenAI's CLIP weights were trained with QuickGELU: load OpenAI ``ViT-B-16.pt`` into
"ViT-B-16-quickgelu" (open_clip's "ViT-B-16" uses exact GELU; the weights load into either,
but only the QuickGELU one reproduces OpenAI's features).
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import open_clip

__all__ = ["TINY_CLIP_CONFIGS", "clip_model_config", "build_clip", "open_clip_version"]

#: Small randomly initialised CLIP for tests and the CPU default (CLIP's 49408-token BPE
#: vocabulary and 77-token context, tiny widths).
TINY_CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "UniPT-CLIP-tiny": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}


def clip_model_config(arch: str) -> dict[str, Any]:
    """The open_clip model config (a fresh copy) of ``arch``; only plain ViT CLIP configs."""
    cfg = copy.deepcopy(TINY_CLIP_CONFIGS[arch]) if arch in TINY_CLIP_CONFIGS else open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(
            f"unknown open_clip architecture '{arch}'; use one of {sorted(TINY_CLIP_CONFIGS)} or "
            f"open_clip.list_models() (e.g. 'ViT-B-16', 'ViT-B-16-quickgelu')"
        )
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if cfg.get("custom_text") or "multimodal_cfg" in cfg or "timm_model_name" in vision or "hf_model_name" in text:
        raise ValueError(
            f"open_clip architecture '{arch}' is not a plain CLIP ViT (timm / HF towers, CoCa and "
            f"custom text towers are not supported)"
        )
    if vision.get("layers") is not None and not isinstance(vision["layers"], int):
        raise ValueError(f"open_clip architecture '{arch}' has a ResNet image tower; a ViT is needed")
    return cfg


def build_clip(arch: str, image_size: Optional[tuple[int, int]] = None) -> open_clip.CLIP:
    """A randomly initialised ``open_clip.CLIP`` for ``arch``, image tower built for (H, W)."""
    cfg = clip_model_config(arch)
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = tuple(image_size)
    return open_clip.CLIP(**cfg)


def open_clip_version() -> str:
    """The installed open_clip's version, for error messages ("open_clip <version>")."""
    return f"open_clip {getattr(open_clip, '__version__', 'of unknown version')}"
