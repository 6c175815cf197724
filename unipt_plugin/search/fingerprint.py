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
features (:data:`IGNORED_MODEL_KEYS`), plus the test-time input keys :data:`INPUT_KEYS` (test
size, interpolation, tokeniser, max length, lower-casing). Everything else (OUTPUT_DIR, SOLVER,
DATALOADER, DATASETS, TEST, SEED, training augmentation, INPUT.TEXT.VOCAB_DIR which is a
machine-specific path) is left out, so the same model run from another folder or with another
batch size still matches its index.

What :data:`IGNORED_MODEL_KEYS` leaves out, and why. Both meta-architectures compute their eval
features (``UniPTPretrain.encode_image`` / ``encode_text``; ``UniPTT2I``'s global embedding and
PGU parts) from the encoders, projections, pooling and PGU alone, so a key that only shapes the
training loss, builds a module the eval forward never calls, or sets a regulariser that is off
in eval mode cannot change them:

* where the weights come from (device, weight-file paths, backbone pre-training): the weights
  hash covers the weights themselves;
* loss weights, margins and temperatures, negatives gathering and the semi-hard fallback
  (``MODEL.LOSSES``, ``MODEL.T2I.{ID,RANK,PGU}_WEIGHT``, ``RANK_MARGIN``,
  ``RANK_HARDEST_FALLBACK``, ``GATHER_NEGATIVES``; ``MODEL.PRETRAIN.TEMPERATURE``,
  ``LEARNABLE_TEMPERATURE``, ``GATHER_NEGATIVES``, ``CONTRASTIVE_WEIGHT``);
* PLIP's training-only losses: ``MODEL.PRETRAIN.IVLC_WEIGHT``, ``MODEL.T2I.IVLC_WEIGHT``,
  ``IVLC_TEMPERATURE``, ``CMPM_WEIGHT``, ``CMPC_WEIGHT``, ``CMPM_EPS``, ``CMPM_TARGET_NORM``;
* pre-training tasks and their settings, used only by the training forward: MLM
  (``MODEL.PRETRAIN.MLM_*``, ``WHOLE_WORD_MASK``), PLIP's IAP (``IAP_WEIGHT`` and
  ``MODEL.PRETRAIN.IAP.*``: its fusion layers, phrase masking, vocabulary) and TIC
  (``TIC_WEIGHT`` and ``MODEL.PRETRAIN.TIC.*``: its colourisation decoder and loss);
* the classifier (``MODEL.HEADS.NUM_CLASSES``, ``MODEL.T2I.CLASSIFIER_STD``), the queue size,
  dropout and drop-path (``MODEL.VISUAL.DROPOUT``, ``DROP_PATH``, ``MODEL.TEXT.DROPOUT``,
  ``MODEL.PGU.DROPOUT``, the fast-reid backbone's rates; off in eval mode) and freezing
  (``MODEL.FREEZE_LAYERS``, ``MODEL.T2I.LINEAR_PROBE``: which parameters train).

Switching a task or loss with modules of its own on or off (IAP, TIC, CMPC: weight 0 <-> > 0)
adds or drops those modules' tensors, which the weights hash sees. Every other ``MODEL.*`` key
stays in the hash: architecture and sizes, pooling and padding masks, the test score, the PGU,
pixel statistics. Initialisation choices (``MODEL.PRETRAIN.PROJ_INIT``, ``MODEL.PGU.PART_INIT``)
stay too: they cannot change the features of loaded weights either, but keeping a key costs at
most a needless refusal, never a wrong match.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import torch

__all__ = ["IGNORED_MODEL_KEYS", "INPUT_KEYS", "feature_config", "config_hash", "weights_hash"]

# MODEL.* keys (or sub-trees) that do not change eval-mode features (module docstring).
IGNORED_MODEL_KEYS = (
    # where the weights come from (the weights hash covers them)
    "MODEL.DEVICE",
    "MODEL.WEIGHTS",
    "MODEL.VISUAL.WEIGHTS",
    "MODEL.TEXT.WEIGHTS",
    "MODEL.BACKBONE.PRETRAIN",
    "MODEL.BACKBONE.PRETRAIN_PATH",
    # regularisers that are off in eval mode, freezing
    "MODEL.BACKBONE.DROP_PATH_RATIO",
    "MODEL.BACKBONE.DROP_RATIO",
    "MODEL.BACKBONE.ATT_DROP_RATE",
    "MODEL.VISUAL.DROP_PATH",
    "MODEL.VISUAL.DROPOUT",
    "MODEL.TEXT.DROPOUT",
    "MODEL.PGU.DROPOUT",
    "MODEL.FREEZE_LAYERS",
    "MODEL.T2I.LINEAR_PROBE",
    # fine-tuning losses and the classifier
    "MODEL.LOSSES",
    "MODEL.QUEUE_SIZE",
    "MODEL.HEADS.NUM_CLASSES",
    "MODEL.T2I.RANK_MARGIN",
    "MODEL.T2I.RANK_HARDEST_FALLBACK",
    "MODEL.T2I.GATHER_NEGATIVES",
    "MODEL.T2I.ID_WEIGHT",
    "MODEL.T2I.RANK_WEIGHT",
    "MODEL.T2I.PGU_WEIGHT",
    "MODEL.T2I.CLASSIFIER_STD",
    "MODEL.T2I.IVLC_WEIGHT",
    "MODEL.T2I.IVLC_TEMPERATURE",
    "MODEL.T2I.CMPM_WEIGHT",
    "MODEL.T2I.CMPC_WEIGHT",
    "MODEL.T2I.CMPM_EPS",
    "MODEL.T2I.CMPM_TARGET_NORM",
    # pre-training losses and pretext tasks (MLM, PLIP's IVLC, IAP, TIC)
    "MODEL.PRETRAIN.TEMPERATURE",
    "MODEL.PRETRAIN.LEARNABLE_TEMPERATURE",
    "MODEL.PRETRAIN.GATHER_NEGATIVES",
    "MODEL.PRETRAIN.CONTRASTIVE_WEIGHT",
    "MODEL.PRETRAIN.IVLC_WEIGHT",
    "MODEL.PRETRAIN.MLM_WEIGHT",
    "MODEL.PRETRAIN.MLM_PROB",
    "MODEL.PRETRAIN.MLM_MASK_TOKEN_PROB",
    "MODEL.PRETRAIN.MLM_RANDOM_TOKEN_PROB",
    "MODEL.PRETRAIN.WHOLE_WORD_MASK",
    "MODEL.PRETRAIN.MLM_SELECTION",
    "MODEL.PRETRAIN.IAP_WEIGHT",
    "MODEL.PRETRAIN.IAP",
    "MODEL.PRETRAIN.TIC_WEIGHT",
    "MODEL.PRETRAIN.TIC",
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
