"""fast-reid's own config keys: which ones the plugin honours, and a refusal for the rest.

A user of a fast-reid plugin edits the fast-reid keys they know. Every leaf key of fast-reid's
``get_cfg()`` is either listed in :data:`HONOURED` (with the place that reads it, keeping
fast-reid's meaning) or refused by :func:`inherited_key_errors` when its value differs from
the plugin's default, with a message naming the key and what to use instead. A key fast-reid
adds in a later version is refused the same way until it is listed here.
"""
from __future__ import annotations

from typing import Any, Iterator

from fastreid.config import CfgNode, get_cfg

__all__ = ["HONOURED", "SCHEDULE_KEYS", "inherited_key_errors", "fastreid_leaf_keys"]

#: fast-reid keys with their fast-reid meaning, and where the plugin reads them.
HONOURED: dict[str, str] = {
    "MODEL.DEVICE": "engine/defaults.py (cpu, cuda, cuda:N or auto)",
    "MODEL.META_ARCHITECTURE": "fast-reid's build_model (UniPTPretrain or UniPTT2I; fast-reid's Baseline for image "
                               "ReID, config/image_reid.py)",
    "MODEL.FREEZE_LAYERS": "solver/build.py + fast-reid's LayerFreeze hook (with SOLVER.FREEZE_ITERS)",
    "MODEL.BACKBONE.NAME": "fast-reid's build_backbone (build_timm_vit_backbone, build_clip_visual_backbone; "
                           "build_unipt_transfer_backbone for image ReID)",
    "MODEL.HEADS.NUM_CLASSES": "fast-reid's auto_scale_hyperparams (0 = from the training set) -> UniPTT2I",
    "MODEL.WEIGHTS": "engine/checkpoint.py (--eval-only and fine-tuning start)",
    "MODEL.PIXEL_MEAN": "modeling/meta_arch/common.py ImageNormalizer",
    "MODEL.PIXEL_STD": "modeling/meta_arch/common.py ImageNormalizer",
    "INPUT.SIZE_TRAIN": "data/transforms.py",
    "INPUT.SIZE_TEST": "data/transforms.py",
    "INPUT.CROP.ENABLED": "data/transforms.py", "INPUT.CROP.SIZE": "data/transforms.py",
    "INPUT.CROP.SCALE": "data/transforms.py", "INPUT.CROP.RATIO": "data/transforms.py",
    "INPUT.FLIP.ENABLED": "data/transforms.py", "INPUT.FLIP.PROB": "data/transforms.py",
    "INPUT.PADDING.ENABLED": "data/transforms.py", "INPUT.PADDING.MODE": "data/transforms.py",
    "INPUT.PADDING.SIZE": "data/transforms.py",
    "INPUT.CJ.ENABLED": "data/transforms.py (only with INPUT.CJ.WITH_TEXT True)",
    "INPUT.CJ.PROB": "data/transforms.py", "INPUT.CJ.BRIGHTNESS": "data/transforms.py",
    "INPUT.CJ.CONTRAST": "data/transforms.py", "INPUT.CJ.SATURATION": "data/transforms.py",
    "INPUT.CJ.HUE": "data/transforms.py",
    "INPUT.AFFINE.ENABLED": "data/transforms.py",
    "INPUT.REA.ENABLED": "data/transforms.py", "INPUT.REA.PROB": "data/transforms.py",
    "INPUT.REA.VALUE": "data/transforms.py",
    "DATASETS.NAMES": "data/build.py (training sets, concatenated)",
    "DATASETS.TESTS": "engine/trainer.py test (one report per test set)",
    "DATALOADER.SAMPLER_TRAIN": "data/build.py (TrainingSampler, NaiveIdentitySampler, BalancedIdentitySampler)",
    "DATALOADER.NUM_INSTANCE": "data/build.py (identity samplers)",
    "DATALOADER.NUM_WORKERS": "data/build.py",
    "SOLVER.AMP.ENABLED": "engine/train_loop.py (CUDA; switched off on the CPU)",
    "SOLVER.OPT": "solver/build.py (Adam or AdamW)",
    "SOLVER.MAX_EPOCH": "engine/trainer.py",
    "SOLVER.BASE_LR": "solver/build.py",
    "SOLVER.HEADS_LR_FACTOR": "solver/build.py (every parameter outside the two encoders)",
    "SOLVER.WEIGHT_DECAY": "solver/build.py",
    "SOLVER.WEIGHT_DECAY_NORM": "solver/build.py",
    "SOLVER.BIAS_LR_FACTOR": "solver/build.py",
    "SOLVER.WEIGHT_DECAY_BIAS": "solver/build.py",
    "SOLVER.SCHED": "solver/build.py (WarmupLinearLR, or fast-reid's schedulers)",
    "SOLVER.FREEZE_ITERS": "engine/train_loop.py (with MODEL.FREEZE_LAYERS)",
    "SOLVER.CHECKPOINT_PERIOD": "engine/trainer.py build_hooks (epochs)",
    "SOLVER.IMS_PER_BATCH": "data/build.py (over all processes)",
    "SOLVER.CLIP_GRADIENTS.ENABLED": "fast-reid's maybe_add_gradient_clipping",
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "fast-reid's maybe_add_gradient_clipping",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": "fast-reid's maybe_add_gradient_clipping",
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": "fast-reid's maybe_add_gradient_clipping",
    "TEST.EVAL_PERIOD": "engine/trainer.py build_hooks (epochs)",
    "TEST.IMS_PER_BATCH": "data/build.py (test loaders)",
    "OUTPUT_DIR": "fast-reid's default_setup, checkpoints, logs",
    "CUDNN_BENCHMARK": "fast-reid's default_setup",
}

#: Keys of fast-reid's per-epoch schedulers, read only when SOLVER.SCHED is not "WarmupLinearLR".
SCHEDULE_KEYS = ("SOLVER.DELAY_EPOCHS", "SOLVER.GAMMA", "SOLVER.STEPS", "SOLVER.ETA_MIN_LR",
                 "SOLVER.WARMUP_FACTOR", "SOLVER.WARMUP_ITERS", "SOLVER.WARMUP_METHOD")

# What to use instead, by key prefix (longest prefix wins).
_INSTEAD: dict[str, str] = {
    "MODEL.LOSSES.": "the losses are set by MODEL.T2I.ID_WEIGHT / RANK_WEIGHT / PGU_WEIGHT and "
                     "MODEL.T2I.RANK_MARGIN (fine-tuning) and MODEL.PRETRAIN.MLM_WEIGHT / TEMPERATURE "
                     "(pre-training)",
    "MODEL.HEADS.": "the heads are part of the meta-architecture: MODEL.T2I.EMBED_DIM, MODEL.T2I.POOL, "
                    "MODEL.PGU.* (fine-tuning), MODEL.PRETRAIN.EMBED_DIM (pre-training)",
    "MODEL.HEADS.EMBEDDING_DIM": "use MODEL.T2I.EMBED_DIM (fine-tuning) or MODEL.PRETRAIN.EMBED_DIM (pre-training)",
    "MODEL.HEADS.POOL_LAYER": "use MODEL.T2I.POOL (max or cls)",
    "MODEL.BACKBONE.": "the visual encoder is configured under MODEL.VISUAL.* (ARCH, WEIGHTS, STRIDE, "
                       "DROP_PATH, DEPTH, EMBED_DIM, NUM_HEADS)",
    "MODEL.BACKBONE.PRETRAIN": "use MODEL.VISUAL.WEIGHTS (a local file; '' = random initialisation)",
    "MODEL.BACKBONE.PRETRAIN_PATH": "use MODEL.VISUAL.WEIGHTS",
    "MODEL.BACKBONE.DROP_PATH_RATIO": "use MODEL.VISUAL.DROP_PATH",
    "MODEL.BACKBONE.STRIDE_SIZE": "use MODEL.VISUAL.STRIDE",
    "MODEL.BACKBONE.DEPTH": "use MODEL.VISUAL.ARCH (and MODEL.VISUAL.DEPTH for small variants)",
    "MODEL.BACKBONE.FEAT_DIM": "the width comes from MODEL.VISUAL.ARCH (MODEL.VISUAL.EMBED_DIM for small variants)",
    "MODEL.QUEUE_SIZE": "no memory queue is used: the negatives are the batch's "
                        "(MODEL.PRETRAIN.GATHER_NEGATIVES, MODEL.T2I.GATHER_NEGATIVES)",
    "KD.": "knowledge distillation is not implemented for text-image training",
    "INPUT.AUTOAUG.": "AutoAugment changes colours and contrast that captions describe; not available for "
                      "text-image training",
    "INPUT.AUGMIX.": "AugMix changes colours and contrast that captions describe; not available for "
                     "text-image training",
    "INPUT.RPT.": "random patch is not implemented for text-image training",
    "DATASETS.COMBINEALL": "text-image datasets keep their train/val/test splits; list the training sets "
                           "in DATASETS.NAMES",
    "DATALOADER.SET_WEIGHT": "per-dataset sampling weights are not implemented; DATASETS.NAMES are "
                             "concatenated and sampled uniformly",
    "SOLVER.MOMENTUM": "SOLVER.OPT is Adam or AdamW: use SOLVER.BETAS",
    "SOLVER.NESTEROV": "SOLVER.OPT is Adam or AdamW: use SOLVER.BETAS",
    "TEST.METRIC": "text-to-image scores are cosine similarities (MODEL.T2I.TEST_SCORE chooses which)",
    "TEST.ROC.": "ROC curves are not computed for text-to-image retrieval",
    "TEST.FLIP.": "flip-averaged test features are not supported for text-image retrieval (caption batches "
                  "have no image to flip, and averaging two normalised features changes the 'sum' score)",
    "TEST.AQE.": "query expansion is not implemented for text-to-image retrieval",
    "TEST.RERANK.": "re-ranking is not implemented for text-to-image retrieval",
    "TEST.PRECISE_BN.": "the encoders are transformers with no BatchNorm layer: there is nothing to re-estimate",
}
_DEFAULT_INSTEAD = "the plugin does not read it (unipt_plugin/config/inherited.py lists the keys it honours)"


def fastreid_leaf_keys(node: CfgNode | None = None, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of ``node`` (default: fast-reid's own ``get_cfg()``)."""
    if node is None:
        node = get_cfg()
    for key, value in node.items():
        if isinstance(value, CfgNode):
            yield from fastreid_leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _get(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _instead(key: str) -> str:
    best = max((p for p in _INSTEAD if key == p or (p.endswith(".") and key.startswith(p))), key=len, default="")
    return _INSTEAD[best] if best else _DEFAULT_INSTEAD


def inherited_key_errors(cfg: CfgNode, defaults: CfgNode) -> list[str]:
    """One message per fast-reid key of ``cfg`` that the plugin cannot honour and that differs
    from ``defaults`` (the plugin's default config), naming the key, its value and what to use.

    Conditional cases: fast-reid's scheduler keys (:data:`SCHEDULE_KEYS`) are refused with
    SOLVER.SCHED "WarmupLinearLR" (which reads SOLVER.WARMUP_RATIO), and SOLVER.WARMUP_RATIO
    with any other schedule; INPUT.CJ.ENABLED needs INPUT.CJ.WITH_TEXT (colour jitter changes
    the colours the captions describe). With an image-ReID meta-architecture (fast-reid's
    ``Baseline``) the fast-reid keys it reads (``config/image_reid.py``) are honoured too."""
    from .image_reid import honoured_by_image_reid, is_image_reid  # (circular: image_reid imports this module)

    errors = []
    linear = cfg.SOLVER.SCHED == "WarmupLinearLR"
    image_reid = is_image_reid(cfg)
    for key, _ in fastreid_leaf_keys():
        if key in HONOURED or (image_reid and honoured_by_image_reid(key)):
            continue
        value, default = _get(cfg, key), _get(defaults, key)
        if key in SCHEDULE_KEYS:
            if linear and not _same(value, default):
                errors.append(f"{key} = {value!r} has no effect with SOLVER.SCHED WarmupLinearLR (warm-up is "
                              f"SOLVER.WARMUP_RATIO of all iterations, then linear decay to 0); remove it or choose "
                              f"one of fast-reid's schedules (MultiStepLR, CosineAnnealingLR)")
            continue
        if not _same(value, default):
            errors.append(f"{key} = {value!r} is a fast-reid key this plugin does not honour: {_instead(key)}; "
                          f"remove it (default {default!r})")
    if not linear and not _same(cfg.SOLVER.WARMUP_RATIO, defaults.SOLVER.WARMUP_RATIO):
        errors.append(f"SOLVER.WARMUP_RATIO = {cfg.SOLVER.WARMUP_RATIO!r} is read only with SOLVER.SCHED "
                      f"WarmupLinearLR (SOLVER.SCHED is {cfg.SOLVER.SCHED!r}: use SOLVER.WARMUP_ITERS)")
    if cfg.INPUT.CJ.ENABLED and not cfg.INPUT.CJ.get("WITH_TEXT", False):
        errors.append("INPUT.CJ.ENABLED True: colour jitter changes the colours the captions describe ('a red "
                      "coat'), so image and text would disagree; set INPUT.CJ.WITH_TEXT True to apply it anyway")
    return errors
