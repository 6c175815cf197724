"""Build a frozen open_clip model from local files only (no hub access).

``open_clip.create_model(name, pretrained=<file>)`` cannot read OpenAI's TorchScript ``.pt``
release on torch >= 2.6 (it calls ``torch.load(weights_only=True)``, which refuses TorchScript
archives), so the model is built randomly initialised and the weights are read with the
project's safe loader ``utils.io.load_weights_file`` (TorchScript -> ``state_dict()``,
safetensors, or a plain state_dict), then loaded strictly.
"""
from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..utils.io import load_weights_file

logger = logging.getLogger(__name__)

__all__ = ["build_clip", "is_torchscript_archive"]

# Entries of OpenAI's TorchScript state_dict that are not parameters of open_clip's CLIP.
_NON_PARAM_KEYS = ("input_resolution", "context_length", "vocab_size")


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip (OpenAI's CLIP releases), which holds a ``code/`` folder."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _register_config(config_path: str) -> str:
    """Register a custom open_clip model config (JSON) and return the name it is known by."""
    import open_clip

    path = Path(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"open_clip model config not found: {path}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise ValueError(f"{path}: open_clip model config needs {key!r} (keys: embed_dim, vision_cfg, text_cfg)")
    open_clip.add_model_config(path)
    return path.stem


def _load_weights(model: torch.nn.Module, weights: str) -> None:
    from open_clip.factory import convert_state_dict

    state: Any = load_weights_file(weights)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = dict(state)
    if state and next(iter(state)).startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    for key in _NON_PARAM_KEYS:
        state.pop(key, None)
    state = convert_state_dict(model, state)
    expected = model.state_dict()
    # Non-persistent buffers (the causal attention mask) appear in traced archives only.
    for key in [k for k in state if k not in expected and k.endswith("attn_mask")]:
        state.pop(key)
    if "logit_scale" in state and state["logit_scale"].shape != expected["logit_scale"].shape:
        state["logit_scale"] = state["logit_scale"].reshape(expected["logit_scale"].shape)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"weights file {weights} does not match the model: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}. Check --model / --model-config."
        )


def build_clip(
    model_name: str = "",
    weights: str = "",
    model_config: str = "",
    device: str | torch.device = "cpu",
    quick_gelu: str = "auto",
    random_init_ok: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """Frozen open_clip model in eval mode, and its tokenizer.

    Args:
        model_name: an open_clip built-in name ("ViT-B-16"); ignored when ``model_config`` is set.
        weights: local weights file (OpenAI TorchScript .pt, open_clip .pt/.bin/.safetensors).
        model_config: JSON file with an open_clip model config (embed_dim, vision_cfg, text_cfg).
        quick_gelu: "auto" (on for TorchScript archives: OpenAI's models use QuickGELU), "on", "off".
        random_init_ok: allow ``weights=""`` (random initialisation; tests and demos only).
    """
    import open_clip

    if model_config:
        model_name = _register_config(model_config)
    if not model_name:
        raise ValueError("give an open_clip model name (--model) or a model config JSON (--model-config)")
    if weights and not Path(weights).is_file():
        raise FileNotFoundError(f"CLIP weights file not found: {weights}")
    if not weights and not random_init_ok:
        raise ValueError("no CLIP weights given: pass --weights /path/to/file (random initialisation is only "
                         "allowed with --random-init-ok, for tests and demos)")
    if quick_gelu not in ("auto", "on", "off"):
        raise ValueError(f"quick_gelu must be auto, on or off, got {quick_gelu!r}")
    force_quick_gelu = quick_gelu == "on" or (quick_gelu == "auto" and bool(weights) and is_torchscript_archive(weights))
    model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=force_quick_gelu,
                                   pretrained_text=False, pretrained_image=False)
    if weights:
        _load_weights(model, weights)
        logger.info("loaded CLIP weights %s into %s (quick_gelu=%s)", weights, model_name, force_quick_gelu)
    else:
        logger.warning("CLIP model %s is randomly initialised: captions will be meaningless", model_name)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, open_clip.get_tokenizer(model_name)
