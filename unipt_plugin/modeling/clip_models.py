"""The one place that builds an open_clip CLIP and reads a CLIP weights file; nothing downloaded.

* :func:`create_clip` builds a randomly initialised model from an open_clip registry name
  ("ViT-B-16", "ViT-B-16-quickgelu", ...), one of the tiny configs below ("UniPT-CLIP-tiny"), a
  config dict or a JSON file with one (``embed_dim``, ``vision_cfg``, ``text_cfg``: the form
  ``open_clip.add_model_config`` reads), with the model class open_clip's ``create_model``
  would pick (``CLIP``, ``CustomTextCLIP`` or ``CoCa``) and no tower pretrained.
* :func:`load_clip_weights` loads a whole CLIP weights file into such a model, strictly;
  :func:`read_clip_state_dict` is its reader, shared with the CLIP towers
  (``backbones/clip_visual.py``, ``text_encoders/clip_text.py``), which keep their half.

Users: both CLIP towers (``plain_vit=True``: they need CLIP's own ViT image tower and text
transformer), the pseudo-text generator's frozen model (``pseudo_text/clip_model.py``) and the
CLIP stand-in (``synthetic/clip_standin.py``).

OpenAI's CLIP weights were trained with QuickGELU: load OpenAI ``ViT-B-16.pt`` into
"ViT-B-16-quickgelu" or pass ``quick_gelu=True`` (open_clip's "ViT-B-16" uses exact GELU; the
weights load into either, but only the QuickGELU one reproduces OpenAI's features). OpenAI's
files are TorchScript archives, which ``open_clip.load_checkpoint`` cannot read with
``weights_only=True``: they go through the project's safe reader
(:func:`unipt_plugin.utils.io.load_weights_file`, ``torch.jit.load(...).state_dict()``).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import open_clip
import torch
from open_clip.model import set_model_preprocess_cfg
from open_clip.factory import convert_state_dict, convert_to_custom_text_state_dict
from open_clip.transform import PreprocessCfg
from torch import nn

from unipt_plugin.modeling.weight_loading import WeightShapeError, unwrap_state_dict
from unipt_plugin.utils.io import load_weights_file

__all__ = [
    "TINY_CLIP_CONFIGS",
    "ClipSpec",
    "clip_model_config",
    "create_clip",
    "clip_tokenizer",
    "is_torchscript_archive",
    "read_clip_state_dict",
    "load_clip_weights",
    "open_clip_version",
]

logger = logging.getLogger(__name__)

#: What :func:`create_clip` accepts: a name (open_clip registry or tiny), a JSON file, a config dict.
ClipSpec = Union[str, os.PathLike, Mapping[str, Any]]

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

# Entries of OpenAI's TorchScript state_dict that are not parameters of open_clip's CLIP.
_NON_PARAM_KEYS = ("input_resolution", "context_length", "vocab_size")
_REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
_LIST_FIRST = 8


def _is_json_path(spec: ClipSpec) -> bool:
    return isinstance(spec, os.PathLike) or (isinstance(spec, str) and spec.endswith(".json"))


def _describe(spec: ClipSpec) -> str:
    return "the config dict" if isinstance(spec, Mapping) else f"'{os.fspath(spec)}'"


def _read_json_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"open_clip model config not found: {path}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object (an open_clip model config), got {type(cfg).__name__}")
    return cfg.get("model_cfg", cfg)  # open_clip_config.json files wrap it in "model_cfg"


def _check_plain_vit(cfg: Mapping[str, Any], name: str) -> None:
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if cfg.get("custom_text") or "multimodal_cfg" in cfg or "timm_model_name" in vision or "hf_model_name" in text:
        raise ValueError(
            f"open_clip architecture {name} is not a plain CLIP ViT (timm / HF towers, CoCa and "
            f"custom text towers are not supported)"
        )
    if vision.get("layers") is not None and not isinstance(vision["layers"], int):
        raise ValueError(f"open_clip architecture {name} has a ResNet image tower; a ViT is needed")


def clip_model_config(spec: ClipSpec, plain_vit: bool = False) -> dict[str, Any]:
    """The open_clip model config (a fresh copy) of ``spec``.

    Args:
        spec: a tiny config name (:data:`TINY_CLIP_CONFIGS`), an open_clip registry name, a path
            to a JSON model config (a ``str`` ending in ``.json`` or a ``PathLike``) or a dict.
        plain_vit: refuse configs that are not CLIP's own ViT image tower + text transformer
            (what the CLIP towers of this project take apart).

    Raises:
        ValueError: unknown name, a config without ``embed_dim`` / ``vision_cfg`` / ``text_cfg``,
            or (``plain_vit``) a non-plain architecture; FileNotFoundError: no such JSON file.
    """
    if isinstance(spec, Mapping):
        cfg = json.loads(json.dumps(dict(spec)))  # JSON types: what a saved config holds
    elif _is_json_path(spec):
        cfg = _read_json_config(spec)
    elif spec in TINY_CLIP_CONFIGS:
        cfg = copy.deepcopy(TINY_CLIP_CONFIGS[spec])
    else:
        cfg = open_clip.get_model_config(spec) if isinstance(spec, str) else None
        if cfg is None:
            raise ValueError(
                f"unknown open_clip architecture {spec!r}; use one of {sorted(TINY_CLIP_CONFIGS)}, "
                f"open_clip.list_models() (e.g. 'ViT-B-16', 'ViT-B-16-quickgelu') or a JSON model config file"
            )
    missing = [k for k in _REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"open_clip model config {_describe(spec)} needs {missing} "
                         f"(keys: embed_dim, vision_cfg, text_cfg), got keys {sorted(cfg)}")
    if plain_vit:
        _check_plain_vit(cfg, _describe(spec))
    return cfg


def create_clip(
    spec: ClipSpec,
    image_size: Optional[Sequence[int]] = None,
    quick_gelu: Optional[bool] = None,
    plain_vit: bool = False,
) -> nn.Module:
    """A randomly initialised open_clip model (train mode, CPU, float32) of ``spec``.

    Args:
        spec: see :func:`clip_model_config`.
        image_size: (H, W) the image tower is built for; None = the config's own.
        quick_gelu: True / False force QuickGELU on / off; None keeps the config's
            ``quick_gelu`` (open_clip's default: exact GELU).
        plain_vit: see :func:`clip_model_config`.

    Returns:
        ``open_clip.CLIP`` (``CustomTextCLIP`` / ``CoCa`` for configs with ``custom_text`` or an
        HF text tower, as ``open_clip.create_model`` picks them), with open_clip's default
        preprocessing config attached (OpenAI mean/std, bicubic, the tower's image size).
        Under the same torch seed it holds the same tensors as ``open_clip.create_model(name,
        pretrained=None, pretrained_image=False, pretrained_text=False)``.
    """
    cfg = clip_model_config(spec, plain_vit=plain_vit)
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = tuple(int(s) for s in image_size)
    if quick_gelu is not None:
        cfg["quick_gelu"] = bool(quick_gelu)
    # nothing downloaded: timm / HF towers are built randomly initialised
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in cfg["text_cfg"]:
        cfg["text_cfg"]["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    if custom_text:
        model_class = open_clip.CoCa if "multimodal_cfg" in cfg else open_clip.CustomTextCLIP
    else:
        model_class = open_clip.CLIP
    model = model_class(**cfg)
    preprocess = {**asdict(PreprocessCfg()), "size": model.visual.image_size}
    set_model_preprocess_cfg(model, preprocess)
    return model


def clip_tokenizer(spec: ClipSpec) -> Any:
    """The open_clip tokenizer of ``spec``: ``open_clip.get_tokenizer(name)`` for a registry name,
    else CLIP's BPE ``SimpleTokenizer`` with the config's context length (and ``tokenizer_kwargs``).

    Raises:
        ValueError: a config dict / JSON file that names an HF tokenizer (give the registry name).
    """
    if isinstance(spec, str) and not _is_json_path(spec) and spec not in TINY_CLIP_CONFIGS:
        clip_model_config(spec)  # a clear error for an unknown name
        return open_clip.get_tokenizer(spec)
    text = clip_model_config(spec)["text_cfg"]
    if text.get("hf_tokenizer_name"):
        raise ValueError(f"open_clip model config {_describe(spec)} uses the HF tokenizer "
                         f"{text['hf_tokenizer_name']!r}; build it through its open_clip registry name")
    return open_clip.SimpleTokenizer(context_length=text.get("context_length", 77), **text.get("tokenizer_kwargs", {}))


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip (OpenAI's CLIP releases), which holds a ``code/`` folder."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_clip_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` state dict in a CLIP weights file, names as in the file.

    Reads OpenAI TorchScript ``.pt`` archives, open_clip ``.pt`` / ``.bin`` / ``.safetensors``
    files and training checkpoints (``{"state_dict": ...}``, ``{"model": ...}``) without running
    pickled code (:func:`unipt_plugin.utils.io.load_weights_file`); strips the ``"module."``
    prefix of DistributedDataParallel (:func:`weight_loading.unwrap_state_dict`) and drops the
    TorchScript archives' non-parameter entries (input_resolution, context_length, vocab_size).
    """
    state = unwrap_state_dict(load_weights_file(path), str(path))
    for key in _NON_PARAM_KEYS:
        state.pop(key, None)
    return state


def _names(keys: Sequence[str]) -> str:
    return f"{list(keys[:_LIST_FIRST])}{'...' if len(keys) > _LIST_FIRST else ''}"


def load_clip_weights(model: nn.Module, path: str | os.PathLike, hint: str = "") -> None:
    """Load a whole CLIP weights file into ``model`` (from :func:`create_clip`), strictly.

    The file is read by :func:`read_clip_state_dict`, converted by open_clip's own
    ``convert_state_dict`` (third-party layouts) and, for ``CustomTextCLIP`` models, from the
    old text-key layout; a scalar / 1-element ``logit_scale`` / ``logit_bias`` is reshaped to
    the model's, and the causal ``attn_mask`` buffers that traced archives carry are ignored.

    Args:
        hint: appended to the error message (e.g. which option picks the architecture).

    Raises:
        ValueError: keys missing from or unexpected in the file (names the file and the keys);
            WeightShapeError: a tensor of another shape (names the key, the file, both shapes).
    """
    source = str(path)
    state = convert_state_dict(model, read_clip_state_dict(path))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    expected = model.state_dict()
    for key in [k for k in state if k not in expected and k.endswith("attn_mask")]:
        state.pop(key)  # non-persistent buffer (the causal mask) saved by TorchScript only
    for key in ("logit_scale", "logit_bias"):
        if key in state and key in expected and state[key].numel() == expected[key].numel():
            state[key] = state[key].reshape(expected[key].shape)
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    suffix = f" {hint}" if hint else ""
    if missing or unexpected:
        raise ValueError(
            f"weights file {source} does not match the model ({type(model).__name__}): missing {_names(missing)}, "
            f"unexpected {_names(unexpected)}.{suffix}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise WeightShapeError(
                f"weights file {source}: tensor '{key}' has shape {tuple(value.shape)} in the file but "
                f"{tuple(expected[key].shape)} in the model; the file is for another architecture or size.{suffix}"
            )
    model.load_state_dict(state, strict=True)
    logger.info("loaded CLIP weights %s (%d tensors) into %s", source, len(state), type(model).__name__)


def open_clip_version() -> str:
    """The installed open_clip's version, for error messages ("open_clip <version>")."""
    return f"open_clip {getattr(open_clip, '__version__', 'of unknown version')}"
