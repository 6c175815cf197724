"""Which keys an image-ReID run (fast-reid's own ``Baseline``) reads, and the refusals of the rest.

The plugin trains two kinds of model through one engine (``UniPTTrainer``): the text-image
meta-architectures (``UniPTPretrain``, ``UniPTT2I``) and fast-reid's ``Baseline`` for image
ReID (docs/image_reid.md). Each reads its own keys:

* fast-reid's keys that ``Baseline``, its ``EmbeddingHead`` / ``ClasHead`` and ``ReidEvaluator``
  read (:data:`IMAGE_REID_FASTREID_KEYS`) keep fast-reid's meaning in an image-ReID run; in a
  text-image run they stay refused (``config/inherited.py``);
* the plugin's text-only keys (:data:`TEXT_ONLY_PREFIXES`: text encoder, captions, the
  text-image heads and losses, the text-image datasets' options) are refused in an image-ReID
  run when set to a value other than their default; the transfer keys (``MODEL.TRANSFER.*``) and
  the transfer backbone are refused in a text-image run, and in an image-ReID run the plugin's
  token encoders as MODEL.BACKBONE.NAME (they go under MODEL.TRANSFER.ENCODER) and the transfer
  keys with another backbone.

``image_reid_key_errors(cfg, defaults)`` returns one message per such key (``setup_cfg`` raises
them as one ``ConfigError``), plus ``MODEL.LOSSES.NAME`` entries that ``Baseline`` has no branch
for (it would leave them out silently).
"""
from __future__ import annotations

from typing import Any

from fastreid.config import CfgNode

from .inherited import _get, _same, fastreid_leaf_keys

__all__ = ["IMAGE_REID_META_ARCHS", "IMAGE_REID_FASTREID_KEYS", "TEXT_ONLY_PREFIXES", "BASELINE_LOSSES",
           "TRANSFER_BACKBONE", "TOKEN_ENCODERS", "is_image_reid", "honoured_by_image_reid", "image_reid_key_errors"]

#: meta-architectures trained as image ReID (fast-reid's own, with image datasets and ReidEvaluator)
IMAGE_REID_META_ARCHS = ("Baseline",)

#: the registered name of the transfer backbone (modeling/backbones/fastreid_transfer.py)
TRANSFER_BACKBONE = "build_unipt_transfer_backbone"

#: the plugin's encoders (tokens (B, 1 + N, C), not fast-reid's (B, C, h, w) maps): MODEL.TRANSFER.ENCODER values
TOKEN_ENCODERS = ("build_timm_vit_backbone", "build_clip_visual_backbone", "build_modified_resnet_backbone")

#: fast-reid keys (a trailing "." = every key under it) read in an image-ReID run, and by what.
IMAGE_REID_FASTREID_KEYS: dict[str, str] = {
    "MODEL.BACKBONE.FEAT_DIM": "fast-reid's EmbeddingHead (must equal the backbone's width; checked when built)",
    "MODEL.HEADS.": "fast-reid's build_heads / EmbeddingHead",
    "MODEL.LOSSES.NAME": "fast-reid's Baseline.losses",
    "MODEL.LOSSES.CE.": "fast-reid's Baseline.losses (CrossEntropyLoss)",
    "MODEL.LOSSES.TRI.": "fast-reid's Baseline.losses (TripletLoss)",
    "MODEL.LOSSES.CIRCLE.": "fast-reid's Baseline.losses (CircleLoss)",
    "MODEL.LOSSES.COSFACE.": "fast-reid's Baseline.losses (Cosface)",
    "TEST.METRIC": "fast-reid's ReidEvaluator (cosine or euclidean)",
    "TEST.AQE.": "fast-reid's ReidEvaluator (query expansion)",
    "TEST.RERANK.": "fast-reid's ReidEvaluator (k-reciprocal re-ranking)",
    "TEST.ROC.ENABLED": "fast-reid's ReidEvaluator (TPR at FPR)",
    "DATASETS.COMBINEALL": "data/image_reid.py (fast-reid's combineall: query and gallery join the training set)",
}

#: the loss names fast-reid's Baseline computes (any other entry of MODEL.LOSSES.NAME is ignored by it)
BASELINE_LOSSES = ("CrossEntropyLoss", "TripletLoss", "CircleLoss", "Cosface")

#: plugin keys only text-image runs read (a trailing "." = every key under it).
TEXT_ONLY_PREFIXES = ("MODEL.TEXT.", "MODEL.PRETRAIN.", "MODEL.T2I.", "MODEL.PGU.", "INPUT.TEXT.", "TEST.T2I.",
                      "DATASETS.LUPERSON_T.", "DATASETS.SYNTH_PEDES.", "DATASETS.VERIFY_IMAGES", "SOLVER.TEXT_LR",
                      "SOLVER.PART_LR", "MODEL.COMPILE")


def is_image_reid(cfg: Any) -> bool:
    """Whether ``cfg`` trains an image-ReID meta-architecture (:data:`IMAGE_REID_META_ARCHS`)."""
    return str(cfg.MODEL.META_ARCHITECTURE) in IMAGE_REID_META_ARCHS


def _matches(key: str, pattern: str) -> bool:
    return key == pattern or (pattern.endswith(".") and key.startswith(pattern))


def honoured_by_image_reid(key: str) -> bool:
    """Whether fast-reid key ``key`` is read in an image-ReID run (:data:`IMAGE_REID_FASTREID_KEYS`)."""
    return any(_matches(key, p) for p in IMAGE_REID_FASTREID_KEYS)


def image_reid_key_errors(cfg: CfgNode, defaults: CfgNode) -> list[str]:
    """One message per key of ``cfg`` that its kind of run does not read but that differs from
    ``defaults`` (the plugin's default config), and per MODEL.LOSSES.NAME entry Baseline lacks."""
    errors = []
    arch = str(cfg.MODEL.META_ARCHITECTURE)
    if is_image_reid(cfg):
        for key, default in fastreid_leaf_keys(defaults):
            if any(_matches(key, p) for p in TEXT_ONLY_PREFIXES) and not _same(_get(cfg, key), default):
                errors.append(f"{key} = {_get(cfg, key)!r} is a text-image key; MODEL.META_ARCHITECTURE {arch} "
                              f"(image ReID) does not read it: remove it (default {default!r})")
        backbone = str(cfg.MODEL.BACKBONE.NAME)
        if backbone in TOKEN_ENCODERS:
            errors.append(f"MODEL.BACKBONE.NAME {backbone} gives tokens (B, 1 + N, C), not the (B, C, h, w) map "
                          f"fast-reid's heads pool: use MODEL.BACKBONE.NAME {TRANSFER_BACKBONE} with "
                          f"MODEL.TRANSFER.ENCODER {backbone} (docs/image_reid.md)")
        elif backbone != TRANSFER_BACKBONE:
            for key, default in fastreid_leaf_keys(defaults.MODEL.TRANSFER, "MODEL.TRANSFER."):
                if not _same(_get(cfg, key), default):
                    errors.append(f"{key} = {_get(cfg, key)!r} configures {TRANSFER_BACKBONE}, but MODEL.BACKBONE.NAME "
                                  f"is {backbone}: remove it (default {default!r})")
        unknown = [n for n in cfg.MODEL.LOSSES.NAME if n not in BASELINE_LOSSES]
        if unknown or not cfg.MODEL.LOSSES.NAME:
            errors.append(f"MODEL.LOSSES.NAME = {tuple(cfg.MODEL.LOSSES.NAME)!r}: fast-reid's {arch} computes "
                          f"{list(BASELINE_LOSSES)}" + (f" and would leave out {unknown}" if unknown else
                                                        "; name at least one"))
        return errors
    for key, default in fastreid_leaf_keys(defaults.MODEL.TRANSFER, "MODEL.TRANSFER."):
        if not _same(_get(cfg, key), default):
            errors.append(f"{key} = {_get(cfg, key)!r} configures the image-ReID transfer backbone, which "
                          f"MODEL.META_ARCHITECTURE {arch} does not use (docs/image_reid.md): remove it "
                          f"(default {default!r})")
    if str(cfg.MODEL.BACKBONE.NAME) == TRANSFER_BACKBONE:
        errors.append(f"MODEL.BACKBONE.NAME {TRANSFER_BACKBONE} gives fast-reid's heads a (B, C, h, w) feature "
                      f"map; {arch} needs an encoder's tokens: use MODEL.TRANSFER.ENCODER's builder (e.g. "
                      "build_timm_vit_backbone) or MODEL.META_ARCHITECTURE Baseline")
    return errors
