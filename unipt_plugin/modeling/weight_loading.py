"""Load a weights file into one module: unwrap, select the module's part, check, log.

One helper serves every encoder (timm ViT/DeiT, open_clip towers, BERT, our own UniPT
checkpoints), so every weight file goes through the same steps:

1. read the file with :func:`unipt_plugin.utils.load_weights_file` (no pickled code runs);
2. unwrap containers: ``{"model": sd}`` (UniPT / DeiT / fast-reid checkpoints),
   ``{"state_dict": sd}`` (open_clip training checkpoints), ``{"module": sd}``; strip the
   ``"module."`` prefix of DistributedDataParallel (torch's
   ``consume_prefix_in_state_dict_if_present``); CLIP files are read by
   ``clip_models.read_clip_state_dict``, which does this and drops TorchScript's non-parameters;
3. select the part: when some keys start with ``part_prefix`` (``"visual."`` for image towers,
   ``"text."`` for text encoders in UniPT checkpoints) only those are kept, prefix removed;
   otherwise the file is taken as the module's own state dict (a timm checkpoint, a CLIP file
   for the text tower, whose text keys have no prefix);
4. strip the wrapper prefixes the caller names (e.g. ``"vit."`` for our ViT wrapper);
5. let the caller adapt keys/values (``adapt``: e.g. interpolate position embeddings, drop a
   classifier head);
6. check shapes (a mismatch raises :class:`WeightShapeError` naming the key, the file and both
   shapes), load non-strictly and log loaded / missing / unexpected keys.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from unipt_plugin.utils.io import load_weights_file

__all__ = [
    "LoadReport",
    "WeightShapeError",
    "unwrap_state_dict",
    "select_part",
    "load_state_dict_into",
    "load_part_into",
    "load_weights_into",
    "encoder_weights_skipped",
    "encoder_weights_enabled",
]

logger = logging.getLogger(__name__)

_CONTAINER_KEYS = ("model", "state_dict", "module")

_SKIP_ENCODER_WEIGHTS = contextvars.ContextVar("unipt_skip_encoder_weights", default=False)


@contextlib.contextmanager
def encoder_weights_skipped() -> Iterator[None]:
    """Within the block, encoders are built with their architecture only: MODEL.VISUAL.WEIGHTS and
    MODEL.TEXT.WEIGHTS files (and the shipped MiniLM's weights) are not read. For models whose
    every parameter then comes from a checkpoint (``--eval-only``, search, export), so that
    nothing is loaded twice and the encoder files need not exist where the checkpoint is used."""
    token = _SKIP_ENCODER_WEIGHTS.set(True)
    try:
        yield
    finally:
        _SKIP_ENCODER_WEIGHTS.reset(token)


def encoder_weights_enabled() -> bool:
    """False inside :func:`encoder_weights_skipped`: encoders then skip their weight files."""
    return not _SKIP_ENCODER_WEIGHTS.get()
_LOG_FIRST = 8


class WeightShapeError(ValueError):
    """A tensor in a weights file does not have the shape of the module's parameter."""


@dataclass
class LoadReport:
    """What :func:`load_state_dict_into` did. Key names are the module's own names."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def unwrap_state_dict(obj: Mapping, source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Return the flat ``{name: tensor}`` mapping inside a checkpoint.

    Follows ``"model"`` / ``"state_dict"`` / ``"module"`` containers (nested ones too) and strips
    the ``"module."`` prefix DistributedDataParallel adds. Non-tensor entries (iteration
    counters, optimizer state in a sibling key) are ignored.
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f"{source}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    while True:
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    flat = {key: value for key, value in obj.items() if isinstance(value, torch.Tensor)}
    consume_prefix_in_state_dict_if_present(flat, "module.")
    if not flat:
        raise ValueError(f"{source}: holds no tensors (keys: {sorted(obj)[:_LOG_FIRST]})")
    return flat


def select_part(
    state_dict: Mapping[str, torch.Tensor],
    part_prefix: Optional[str],
    strip_prefixes: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Keep the keys under ``part_prefix`` (if any key has it) and strip the wrapper prefixes.

    ``strip_prefixes`` are removed (each at most once, in order) from the front of every key.
    """
    if part_prefix and any(k.startswith(part_prefix) for k in state_dict):
        state_dict = {k[len(part_prefix):]: v for k, v in state_dict.items() if k.startswith(part_prefix)}
    out = {}
    for key, value in state_dict.items():
        for prefix in strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _names(keys: Iterable[str]) -> str:
    keys = list(keys)
    more = f", ... (+{len(keys) - _LOG_FIRST})" if len(keys) > _LOG_FIRST else ""
    return ", ".join(keys[:_LOG_FIRST]) + more


def load_state_dict_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    drop: Callable[[str], bool] = lambda key: False,
) -> LoadReport:
    """Copy matching tensors of ``state_dict`` into ``module`` (non-strict, shape-checked).

    Keys for which ``drop(key)`` is True (e.g. a classifier head) are ignored and logged as
    dropped. Every other key must have the parameter's shape.

    Raises:
        WeightShapeError: a key exists in both with different shapes (names key, file, shapes).
        ValueError: no key of the file matches the module (wrong architecture or prefix).
    """
    own = module.state_dict()
    report = LoadReport(source=source)
    to_load = {}
    for key, value in state_dict.items():
        if drop(key):
            report.dropped.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            raise WeightShapeError(
                f"{source}: tensor '{key}' has shape {tuple(value.shape)} in the file but "
                f"{tuple(own[key].shape)} in the model ({type(module).__name__}); the file is for "
                f"another architecture or size"
            )
        else:
            to_load[key] = value
    if not to_load:
        raise ValueError(
            f"{source}: no tensor matches {type(module).__name__}; file keys start with "
            f"{_names(sorted(state_dict))}, model keys with {_names(sorted(own))}"
        )
    result = module.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(result.missing_keys)
    report.unexpected.sort()
    report.dropped.sort()
    logger.info(
        "%s -> %s: loaded %d tensors, %d missing, %d unexpected, %d dropped",
        source, type(module).__name__, len(report.loaded), len(report.missing),
        len(report.unexpected), len(report.dropped),
    )
    if report.missing:
        logger.warning("missing keys (left at their initial values): %s", _names(report.missing))
    if report.unexpected:
        logger.warning("unexpected keys (ignored): %s", _names(report.unexpected))
    if report.dropped:
        logger.info("dropped keys: %s", _names(report.dropped))
    return report


def load_part_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    part_prefix: Optional[str],
    strip_prefixes: Sequence[str] = (),
    adapt: Optional[Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = None,
    drop: Callable[[str], bool] = lambda key: False,
) -> LoadReport:
    """Load the part of an already read, flat ``state_dict`` (read from ``source``) that belongs
    to ``module``: steps 3 to 6 above (arguments as in :func:`load_weights_into`)."""
    state_dict = select_part(state_dict, part_prefix, strip_prefixes)
    if adapt is not None:
        state_dict = adapt(state_dict)
    return load_state_dict_into(module, state_dict, source, drop=drop)


def load_weights_into(
    module: nn.Module,
    path: str | os.PathLike,
    part_prefix: Optional[str],
    strip_prefixes: Sequence[str] = (),
    adapt: Optional[Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]] = None,
    drop: Callable[[str], bool] = lambda key: False,
) -> LoadReport:
    """Read ``path`` safely and load the part of it that belongs to ``module``.

    Args:
        module: the module whose own ``state_dict()`` names the file's keys must match.
        path: a ``.pth``/``.pt``/``.safetensors`` file or a TorchScript archive (OpenAI CLIP).
        part_prefix: sub-module prefix in UniPT / CLIP checkpoints (``"visual."``, ``"text."``).
        strip_prefixes: wrapper prefixes removed after selection (e.g. ``("vit.",)``).
        adapt: called on the selected dict before loading (resize position embeddings, ...).
        drop: keys to ignore on purpose.
    """
    source = str(path)
    state_dict = unwrap_state_dict(load_weights_file(path), source)
    return load_part_into(module, state_dict, source, part_prefix, strip_prefixes, adapt, drop)
