"""PLIP's released checkpoint: its layout, the mapping of its key names to ours, and the loader.

PLIP (Zuo et al., NeurIPS 2024) releases one file (``PLIP_MRN50.pth.tar``) written by
``torch.save`` as ``{"epoch": int, "ImgEncoder_state_dict": ..., "TxtEncoder_state_dict": ...}``
(its ``zs_infer.py`` loads the two parts into its image and text encoders). The layout:

* ``ImgEncoder_state_dict``: its ``Image_encoder_ModifiedResNet`` (layers 3-4-6-3, width 64,
  attention pool of 8 heads to 768, built for 256x128), whose parameter names are those of
  open_clip's ``ModifiedResNet`` (its ReLUs, named ``relu*`` there and ``act*`` in open_clip, hold
  no tensors). Mapped to ``<the model's ModifiedResNet>.<key>``, e.g. ``visual.resnet.conv1.weight``;
  ``attnpool.positional_embedding`` (33, 2048) holds the mean token and the 8x4 grid
  (:data:`PLIP_GRID`) and is resized to the model's grid (12x4 at 384x128).
* ``TxtEncoder_state_dict``: its ``Textual_encoder``, a ``transformers.BertModel``
  (bert-base-uncased) stored as ``encoder``: ``encoder.<key>`` -> ``<the model's BertModel>.<key>``,
  e.g. ``text.bert.embeddings.word_embeddings.weight``.
* Dropped when the model has no place for them (:data:`OPTIONAL_TEXT_KEYS`): BERT's pooler
  (``encoder.pooler.dense.*``; PLIP's text feature is ``pooler_output``, our BERT encoders are built
  without a pooler and the meta-architecture pools the tokens itself) and the ``position_ids`` /
  ``token_type_ids`` buffers that transformers before 4.31 saved.

The prefixes are found in the model (its one open_clip ``ModifiedResNet`` and its one
``BertModel``), so the same file loads into ``UniPTT2I`` (``visual.resnet.``, ``text.bert.``),
``UniPTPretrain``, a bare backbone or a model with only one of the encoders (the other part is
then reported as unexpected). A tensor whose shape differs from the model's raises
:class:`~unipt_plugin.modeling.weight_loading.WeightShapeError` naming the key and both shapes.

Entry points: :func:`load_plip_checkpoint` (read, map, load, log loaded / missing / unexpected /
dropped); :func:`plip_state_dict_for` (the mapped tensors, for ``engine/checkpoint.py``, which loads
them when ``MODEL.WEIGHTS`` is a PLIP file); :func:`plip_image_state_dict` (the image part, for the
backbone's ``MODEL.VISUAL.WEIGHTS``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import torch
from open_clip.modified_resnet import ModifiedResNet
from torch import nn
from transformers import BertModel

from unipt_plugin.modeling.weight_loading import LoadReport, WeightShapeError, load_state_dict_into, unwrap_state_dict
from unipt_plugin.utils.io import load_weights_file

__all__ = [
    "PLIP_IMAGE_KEY",
    "PLIP_TEXT_KEY",
    "PLIP_TEXT_PREFIX",
    "PLIP_INPUT_SIZE",
    "PLIP_GRID",
    "OPTIONAL_TEXT_KEYS",
    "PLIPMapping",
    "is_plip_checkpoint",
    "plip_image_state_dict",
    "plip_text_state_dict",
    "resize_attnpool_pos_embed",
    "map_plip_checkpoint",
    "plip_state_dict_for",
    "load_plip_checkpoint",
]

logger = logging.getLogger(__name__)

PLIP_IMAGE_KEY = "ImgEncoder_state_dict"
PLIP_TEXT_KEY = "TxtEncoder_state_dict"
#: PLIP's Textual_encoder stores its BertModel as ``self.encoder``.
PLIP_TEXT_PREFIX = "encoder."
#: PLIP's input (height, width) and the attention pool's grid there (output stride 32).
PLIP_INPUT_SIZE = (256, 128)
PLIP_GRID = (PLIP_INPUT_SIZE[0] // 32, PLIP_INPUT_SIZE[1] // 32)
#: BERT tensors (names inside the BertModel) dropped when the model's BertModel lacks them.
OPTIONAL_TEXT_KEYS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids",
                      "embeddings.token_type_ids")
_POS_KEY = "attnpool.positional_embedding"


@dataclass
class PLIPMapping:
    """PLIP's tensors under the model's names (``state``; tensors the model has no place for keep
    a ``"<part>.<PLIP key>"`` name, which no module has) and the PLIP keys dropped on purpose."""

    state: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    image_prefix: Optional[str] = None
    text_prefix: Optional[str] = None


def is_plip_checkpoint(obj: Any) -> bool:
    """True for a loaded PLIP checkpoint: a mapping with ``ImgEncoder_state_dict`` or ``TxtEncoder_state_dict``."""
    return isinstance(obj, Mapping) and (PLIP_IMAGE_KEY in obj or PLIP_TEXT_KEY in obj)


def _part(checkpoint: Mapping[str, Any], key: str, source: str) -> dict[str, torch.Tensor]:
    if key not in checkpoint:
        return {}
    if not isinstance(checkpoint[key], Mapping):
        raise ValueError(f"{source}: '{key}' of the PLIP checkpoint must be a state dict, got "
                         f"{type(checkpoint[key]).__name__}")
    return unwrap_state_dict(checkpoint[key], f"{source} [{key}]")  # also strips DDP's "module."


def plip_image_state_dict(checkpoint: Mapping[str, Any], source: str = "<PLIP checkpoint>") -> dict[str, torch.Tensor]:
    """The image encoder's tensors (open_clip ``ModifiedResNet`` names) of a loaded PLIP checkpoint.

    Raises:
        ValueError: the checkpoint has no image part, or it is not a state dict.
    """
    state = _part(checkpoint, PLIP_IMAGE_KEY, source)
    if not state:
        raise ValueError(f"{source}: no '{PLIP_IMAGE_KEY}' in the PLIP checkpoint (keys: {sorted(checkpoint)})")
    return state


def plip_text_state_dict(checkpoint: Mapping[str, Any], source: str = "<PLIP checkpoint>") -> dict[str, torch.Tensor]:
    """The text encoder's tensors of a loaded PLIP checkpoint, PLIP's names (``encoder.*``); {} if absent."""
    return _part(checkpoint, PLIP_TEXT_KEY, source)


def resize_attnpool_pos_embed(state: dict[str, torch.Tensor], key: str, new_grid: Optional[tuple[int, int]],
                              old_grid: Optional[tuple[int, int]] = None) -> dict[str, torch.Tensor]:
    """Resize ``state[key]``, an attention pool's (1 + h*w, C) position embedding, to ``new_grid``.

    The first row (the mean token's) is kept; the grid is interpolated bilinearly with
    ``align_corners=True`` (:func:`unipt_plugin.modeling.backbones.pos_embed.resize_pos_embed`).
    ``old_grid`` None: square when the length is a square (OpenAI's 7x7 at 224), else inferred from
    the length. Nothing happens when ``key`` is absent or ``new_grid`` is None. Returns ``state``.
    """
    # Imported here: the backbones package imports this module (a module-level import would be a cycle).
    from unipt_plugin.modeling.backbones.pos_embed import resize_pos_embed

    if key in state and new_grid is not None:
        state[key] = resize_pos_embed(state[key], 1, tuple(new_grid), old_grid=old_grid)
    return state


def _one(model: nn.Module, cls: type, what: str) -> Optional[tuple[str, nn.Module]]:
    """The (prefix, module) of the one ``cls`` inside ``model``; None if there is none."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, cls)]
    if len(found) > 1:
        raise ValueError(f"the model holds {len(found)} {what} modules ({[n for n, _ in found]}); a PLIP checkpoint "
                         f"maps onto one: load it into the sub-module that should receive it")
    if not found:
        return None
    name, module = found[0]
    return (f"{name}." if name else ""), module


def map_plip_checkpoint(model: nn.Module, checkpoint: Mapping[str, Any],
                        source: str = "<PLIP checkpoint>") -> PLIPMapping:
    """PLIP's tensors under ``model``'s names (module docstring), the position grid resized.

    ``model`` is the module to load into (DDP-unwrapped). Shapes are not checked here
    (:func:`plip_state_dict_for` and :func:`load_plip_checkpoint` do).
    """
    if not is_plip_checkpoint(checkpoint):
        keys = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"{source}: not a PLIP checkpoint (expected '{PLIP_IMAGE_KEY}' and/or '{PLIP_TEXT_KEY}', "
                         f"got {keys})")
    out = PLIPMapping()
    own = model.state_dict()
    image, text = _part(checkpoint, PLIP_IMAGE_KEY, source), _part(checkpoint, PLIP_TEXT_KEY, source)
    resnet = _one(model, ModifiedResNet, "ModifiedResNet") if image else None
    if resnet is None:
        out.state.update({f"{PLIP_IMAGE_KEY}.{k}": v for k, v in image.items()})
    else:
        out.image_prefix, module = resnet
        image = resize_attnpool_pos_embed(dict(image), _POS_KEY, getattr(module, "grid_size", None), PLIP_GRID)
        out.state.update({out.image_prefix + k: v for k, v in image.items()})
    bert = _one(model, BertModel, "BertModel") if text else None
    if bert is not None:
        out.text_prefix = bert[0]
    for key, value in text.items():
        inner = key[len(PLIP_TEXT_PREFIX):] if key.startswith(PLIP_TEXT_PREFIX) else None
        if bert is None or inner is None:
            out.state[f"{PLIP_TEXT_KEY}.{key}"] = value
        elif inner in OPTIONAL_TEXT_KEYS and out.text_prefix + inner not in own:
            out.dropped.append(key)
        else:
            out.state[out.text_prefix + inner] = value
    out.dropped.sort()
    logger.info("PLIP checkpoint %s: image encoder (%d tensors) -> %s, text encoder (%d tensors) -> %s; dropped %d "
                "(%s)", source, len(image), f"'{out.image_prefix}*'" if out.image_prefix is not None else "nowhere",
                len(text), f"'{out.text_prefix}*'" if out.text_prefix is not None else "nowhere", len(out.dropped),
                ", ".join(out.dropped) or "none")
    return out


def _check_shapes(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    for key, value in state.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            raise WeightShapeError(
                f"{source}: PLIP tensor mapped to '{key}' has shape {tuple(value.shape)} in the file but "
                f"{tuple(own[key].shape)} in the model ({type(model).__name__}); PLIP's image encoder is RN50 with a "
                f"768-d attention pool (MODEL.VISUAL.ARCH RN50-PLIP) and its text encoder bert-base-uncased")


def _first(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "") if keys else "none"


def _read(checkpoint: Union[str, os.PathLike, Mapping[str, Any]]) -> tuple[Mapping[str, Any], str]:
    if isinstance(checkpoint, Mapping):
        return checkpoint, "<PLIP checkpoint>"
    return load_weights_file(checkpoint), str(checkpoint)


def plip_state_dict_for(model: nn.Module, checkpoint: Mapping[str, Any], source: str = "<PLIP checkpoint>"
                        ) -> dict[str, torch.Tensor]:
    """The tensors of a loaded PLIP checkpoint under ``model``'s names, shape-checked, for a loader
    that loads them itself (fast-reid's Checkpointer). Unknown keys keep ``"<part>.<key>"`` names
    (reported as unexpected by that loader); dropped keys are left out (logged here).

    Raises:
        WeightShapeError: a mapped tensor has another shape than the model's (names key and shapes).
    """
    mapped = map_plip_checkpoint(model, checkpoint, source)
    _check_shapes(model, mapped.state, source)
    own = model.state_dict()
    matched = sum(1 for k in mapped.state if k in own)
    missing = sorted(k for k in own if k not in mapped.state)
    unexpected = sorted(k for k in mapped.state if k not in own)
    logger.info("PLIP checkpoint %s: %d of its tensors match the model's %d; %d missing (%s), %d unexpected (%s)",
                source, matched, len(own), len(missing), _first(missing), len(unexpected), _first(unexpected))
    return mapped.state


def load_plip_checkpoint(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Any]]) -> LoadReport:
    """Load PLIP's checkpoint (a file, or its loaded dict) into ``model``, non-strictly.

    Logs (``logging``) the loaded / missing / unexpected / dropped counts and names, as every
    weight file of the plugin (:func:`unipt_plugin.modeling.weight_loading.load_state_dict_into`);
    the full lists at DEBUG level.

    Returns:
        A :class:`LoadReport` in the model's key names (``dropped``: PLIP's names).

    Raises:
        WeightShapeError: a tensor of another shape than the model's (names the key and both shapes).
        ValueError: not a PLIP checkpoint, or nothing of it matches the model.
    """
    checkpoint, source = _read(checkpoint)
    mapped = map_plip_checkpoint(model, checkpoint, source)
    _check_shapes(model, mapped.state, source)
    report = load_state_dict_into(model, mapped.state, source)
    report.dropped = list(mapped.dropped)
    for name, keys in (("loaded", report.loaded), ("missing", report.missing), ("unexpected", report.unexpected),
                       ("dropped", report.dropped)):
        logger.debug("PLIP checkpoint %s, %s (%d): %s", source, name, len(keys), keys)
    return report
