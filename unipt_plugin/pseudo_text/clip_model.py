"""The pseudo-text generator's frozen CLIP: built and loaded by ``modeling.clip_models``.

:func:`load_frozen_clip` maps the command-line choices (``--model``, ``--model-config``,
``--weights``, ``--quick-gelu``, ``--random-init-ok``) onto
:func:`~unipt_plugin.modeling.clip_models.create_clip` and
:func:`~unipt_plugin.modeling.clip_models.load_clip_weights` (OpenAI TorchScript ``.pt`` through
the project's safe loader, open_clip ``.pt`` / ``.bin`` / ``.safetensors``; strict), and returns
the model in eval mode without gradients, with its tokenizer.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..modeling.clip_models import clip_tokenizer, create_clip, is_torchscript_archive, load_clip_weights

logger = logging.getLogger(__name__)

__all__ = ["load_frozen_clip", "QUICK_GELU_MODES"]

#: ``--quick-gelu`` values.
QUICK_GELU_MODES = ("auto", "on", "off")


def load_frozen_clip(
    model_name: str = "",
    weights: str = "",
    model_config: str = "",
    device: str | torch.device = "cpu",
    quick_gelu: str = "auto",
    random_init_ok: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """Frozen open_clip model in eval mode on ``device``, and its tokenizer.

    Args:
        model_name: an open_clip registry name ("ViT-B-16"); ignored when ``model_config`` is set.
        weights: local weights file (OpenAI TorchScript .pt, open_clip .pt/.bin/.safetensors).
        model_config: JSON file with an open_clip model config (embed_dim, vision_cfg, text_cfg).
        quick_gelu: "on" forces QuickGELU, "auto" forces it for TorchScript archives (OpenAI's
            models use QuickGELU), "off" keeps the config's own activation.
        random_init_ok: allow ``weights=""`` (random initialisation; tests and demos only).
    """
    if not model_config and not model_name:
        raise ValueError("give an open_clip model name (--model) or a model config JSON (--model-config)")
    spec = Path(model_config) if model_config else model_name  # a Path is read as a JSON config
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"CLIP weights file not found: {weights}")
    if not weights and not random_init_ok:
        raise ValueError("no CLIP weights given: pass --weights /path/to/file (random initialisation is only "
                         "allowed with --random-init-ok, for tests and demos)")
    if quick_gelu not in QUICK_GELU_MODES:
        raise ValueError(f"quick_gelu must be one of {', '.join(QUICK_GELU_MODES)}, got {quick_gelu!r}")
    force = quick_gelu == "on" or (quick_gelu == "auto" and bool(weights) and is_torchscript_archive(weights))
    model = create_clip(spec, quick_gelu=True if force else None)
    if weights:
        load_clip_weights(model, weights, hint="Check --model / --model-config.")
        logger.info("loaded CLIP weights %s into %s (quick_gelu=%s)", weights, spec, force)
    else:
        logger.warning("CLIP model %s is randomly initialised: captions will be meaningless", spec)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, clip_tokenizer(spec)
