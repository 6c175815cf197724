"""Fingerprints of what produced a gallery's features: the model config and the model weights.

An index is only meaningful for the model that made it: text features of another model (or of
the same model with another input size, pooling or test score) live in another space. The index
manifest therefore stores two hashes, checked when the index is queried or extended:

* ``config_hash``: sha256 of the feature-relevant part of the config (below), as sorted JSON.
* ``weights_hash``: sha256 of the model's ``state_dict`` after the checkpoint is loaded (every
  tensor's name, dtype, shape and bytes, in name order). Hashing the loaded tensors rather than
  the file's bytes identifies the weights themselves: the same weights re-saved (``.pth`` ->
  ``.safetensors``, another path, optimizer state dropped) keep their hash; any changed tensor
  changes it.

Config keys in the hash: every ``MODEL.*`` key except those that cannot change eval-mode
features (:data:`IGNORED_MODEL_KEYS`: device, weight-file paths, which the weights hash
covers, losses, loss weights, classifier size, dropout / drop-path, freezing), plus the test-time
input keys :data:`INPUT_KEYS` (test size, interpolation, tokeniser, max length, lower-casing).
Everything else (OUTPUT_DIR, SOLVER, DATALOADER, DATASETS, TEST, SEED, training augmentation,
INPUT.TEXT.VOCAB_DIR which is a machine-specific path) is left out, so the same model run from
another folder or with another batch size still matches its index.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import torch

__all__ = ["IGNORED_MODEL_KEYS", "INPUT_KEYS", "feature_config", "config_hash", "weights_hash"]

# MODEL.* keys (or sub-trees) that do not change eval-mode features.
IGNORED_MODEL_KEYS = (
    "MODEL.DEVICE",
    "MODEL.WEIGHTS",
    "MODEL.VISUAL.WEIGHTS",
    "MODEL.TEXT.WEIGHTS",
    "MODEL.BACKBONE.PRETRAIN",
    "MODEL.BACKBONE.PRETRAIN_PATH",
    "MODEL.BACKBONE.DROP_PATH_RATIO",
    "MODEL.BACKBONE.DROP_RATIO",
    "MODEL.BACKBONE.ATT_DROP_RATE",
    "MODEL.VISUAL.DROP_PATH",
    "MODEL.PGU.DROPOUT",
    "MODEL.LOSSES",
    "MODEL.FREEZE_LAYERS",
    "MODEL.QUEUE_SIZE",
    "MODEL.HEADS.NUM_CLASSES",
    "MODEL.T2I.RANK_MARGIN",
    "MODEL.T2I.ID_WEIGHT",
    "MODEL.T2I.RANK_WEIGHT",
    "MODEL.T2I.PGU_WEIGHT",
    "MODEL.T2I.CLASSIFIER_STD",
    "MODEL.PRETRAIN.TEMPERATURE",
    "MODEL.PRETRAIN.LEARNABLE_TEMPERATURE",
    "MODEL.PRETRAIN.GATHER_NEGATIVES",
    "MODEL.PRETRAIN.MLM_WEIGHT",
    "MODEL.PRETRAIN.MLM_PROB",
    "MODEL.PRETRAIN.MLM_MASK_TOKEN_PROB",
    "MODEL.PRETRAIN.MLM_RANDOM_TOKEN_PROB",
    "MODEL.PRETRAIN.WHOLE_WORD_MASK",
    "MODEL.PRETRAIN.MLM_SELECTION",
)

# INPUT.* keys that change how a test image or a query is turned into a tensor.
INPUT_KEYS = (
    "INPUT.SIZE_TEST",
    "INPUT.INTERPOLATION",
    "INPUT.TEXT.TOKENIZER",
    "INPUT.TEXT.MAX_LENGTH",
    "INPUT.TEXT.LOWER_CASE",
)


def _flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _ignored(name: str) -> bool:
    return any(name == k or name.startswith(k + ".") for k in IGNORED_MODEL_KEYS)


def feature_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The feature-relevant keys of ``cfg`` as a flat ``{"MODEL.X.Y": value}`` dict."""
    flat = _flatten(cfg)
    kept = {k: v for k, v in flat.items() if k.startswith("MODEL.") and not _ignored(k)}
    kept.update({k: flat[k] for k in INPUT_KEYS if k in flat})
    return dict(sorted(kept.items()))


def config_hash(cfg: Mapping[str, Any]) -> str:
    """sha256 (hex) of :func:`feature_config` dumped as sorted JSON."""
    text = json.dumps(feature_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) over every tensor of ``state_dict``: name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode("utf-8"))
        # view as bytes (works for every dtype, bfloat16 included, unlike .numpy()).
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
