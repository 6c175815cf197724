"""Optimiser and learning-rate schedule builders for UniPT.

Parameter groups by module prefix ("part"): ``visual.`` (SOLVER.VISUAL_LR; also ``backbone.``,
the visual encoder of fast-reid's ``Baseline`` in image-ReID runs, whose ``heads.`` are then the
head), ``text.`` (SOLVER.TEXT_LR), and the "head": everything else (projections, classifiers, PGU, MLM head,
temperature) at SOLVER.BASE_LR x SOLVER.HEADS_LR_FACTOR; a VISUAL_LR / TEXT_LR of 0 means
BASE_LR. With SOLVER.PART_LR > 0 a fourth part, "parts", takes the PGU's part projections
(``pgu.part_proj``) and the part classifiers (``part_classifiers.*``) out of the head, at
PART_LR as given: like VISUAL_LR / TEXT_LR it is an absolute rate, not multiplied by
HEADS_LR_FACTOR (which keeps scaling BASE_LR for the rest of the head), while BIAS_LR_FACTOR
applies to the part classifiers' biases as to every part's biases. PART_LR = 0 (the default)
leaves them in the head groups, at BASE_LR x HEADS_LR_FACTOR (biases x BIAS_LR_FACTOR), so the
groups and their order are those of a config without the key. Within a part, fast-reid's keys
with fast-reid's meaning (``fastreid.solver.build.get_default_optimizer_params``):

* weights: SOLVER.WEIGHT_DECAY, the part's lr;
* normalisation-layer weights: SOLVER.WEIGHT_DECAY_NORM, the part's lr;
* biases (names "bias" / "*_bias", norm-layer biases included, as in fast-reid where the bias
  override wins): SOLVER.WEIGHT_DECAY_BIAS, the part's lr x SOLVER.BIAS_LR_FACTOR;
* scalars (0-d parameters, e.g. the learnable temperature): SOLVER.WEIGHT_DECAY_BIAS, the part's lr.

A part's weights form one group (named after the part); its other parameters are grouped by
(weight decay, lr): ``<part>_no_decay`` when they share one group without decay (the plugin's
defaults, WEIGHT_DECAY_NORM = WEIGHT_DECAY_BIAS = 0), else ``<part>_<kinds>`` (e.g.
``visual_norm``, ``head_bias+scalar``); with PART_LR > 0, ``parts`` and ``parts_no_decay``.

fast-reid's SOLVER.FREEZE_ITERS with MODEL.FREEZE_LAYERS (top-level children of the model, e.g.
"visual", "text"): the groups of those children's parameters are split off, named with a
``_frozen`` suffix and flagged ``freeze_status = "freeze"`` (the others "normal", fast-reid's
flag); ``UniPTStepTrainer`` skips them while its iteration is below FREEZE_ITERS, and fast-reid's
LayerFreeze hook puts those children in eval mode meanwhile.

Adam / AdamW use the fused CUDA kernel (``fused=True``) when every parameter is on a CUDA device
(the optimiser is built after the model is moved to its device), else torch's default
implementation (for-each on CUDA, for-loop on the CPU) as before.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from fastreid.solver.build import (_create_gradient_clipper, _generate_optimizer_class_with_gradient_clipping,
                                   build_lr_scheduler)
from torch import nn
from transformers.optimization import get_linear_schedule_with_warmup

logger = logging.getLogger(__name__)

__all__ = ["build_unipt_optimizer", "build_unipt_lr_scheduler", "param_group_specs", "frozen_children"]

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
               nn.modules.batchnorm._NormBase)  # _NormBase covers BatchNorm*/InstanceNorm*/SyncBN
_OPTIMIZERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
_PARTS = ("visual", "text", "head", "parts")  # "visual." and "text." prefixes; the head is the rest
# Module prefixes of the encoder parts ("backbone.": fast-reid's Baseline, image ReID).
_PART_MODULES = {"visual": ("visual.", "backbone."), "text": ("text.",)}
_KINDS = ("weight", "norm", "bias", "scalar")
# The "parts" part (SOLVER.PART_LR > 0): the PGU's part projections and the part classifiers.
_PART_PARAM_NAMES = ("pgu.part_proj",)
_PART_PREFIXES = ("part_classifiers.",)


def _is_part_param(name: str) -> bool:
    """True for a parameter (its name without a "module." prefix) of the "parts" part."""
    return name in _PART_PARAM_NAMES or name.startswith(_PART_PREFIXES)


def _param_kinds(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> "bias" ("bias" / "*_bias"), "norm" (other norm-layer parameters),
    "scalar" (0-d) or "weight"."""
    kinds: dict[int, str] = {}
    for _, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in kinds:
                continue
            if p_name == "bias" or p_name.endswith("_bias"):
                kinds[id(p)] = "bias"
            elif isinstance(module, _NORM_TYPES):
                kinds[id(p)] = "norm"
            elif p.dim() == 0:
                kinds[id(p)] = "scalar"
            else:
                kinds[id(p)] = "weight"
    return kinds


def frozen_children(cfg, model: nn.Module) -> list[str]:
    """The top-level children named in MODEL.FREEZE_LAYERS when SOLVER.FREEZE_ITERS > 0, else [].

    Raises ValueError for a name that is not a top-level child of ``model``."""
    names = [str(n) for n in cfg.MODEL.FREEZE_LAYERS]
    if not names or int(cfg.SOLVER.FREEZE_ITERS) <= 0:
        if names:
            logger.info("MODEL.FREEZE_LAYERS %s: nothing is frozen, SOLVER.FREEZE_ITERS is %d", names,
                        int(cfg.SOLVER.FREEZE_ITERS))
        return []
    bare = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    children = [n for n, _ in bare.named_children()]
    for name in names:
        if name not in children:
            raise ValueError(f"MODEL.FREEZE_LAYERS: {name!r} is not a top-level child of the model "
                             f"{type(bare).__name__}; its children are {children}")
    return names


def param_group_specs(cfg, model: nn.Module) -> list[dict[str, Any]]:
    """The parameter groups ({"name", "params", "lr", "weight_decay"}, plus "freeze_status" when
    layers are frozen) of ``model``'s trainable parameters, empty ones left out, ordered by part
    (visual, text, head, parts), frozen after not frozen, weights first, then the other kinds in the
    order norm, bias, scalar; parameters in ``model.named_parameters()`` order within a group.

    Raises ValueError for a negative SOLVER.PART_LR."""
    s = cfg.SOLVER
    if s.PART_LR < 0:
        raise ValueError(f"SOLVER.PART_LR must be >= 0 (0 = the head's BASE_LR x HEADS_LR_FACTOR), got {s.PART_LR}")
    split_parts = s.PART_LR > 0
    lrs = {"visual": s.VISUAL_LR or s.BASE_LR, "text": s.TEXT_LR or s.BASE_LR,
           "head": s.BASE_LR * s.HEADS_LR_FACTOR, "parts": s.PART_LR}
    frozen = frozen_children(cfg, model)
    kinds = _param_kinds(model)
    groups: dict[tuple, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        bare = name.removeprefix("module.")
        child = bare.split(".", 1)[0]
        part = next((g for g, prefixes in _PART_MODULES.items() if bare.startswith(prefixes)), "head")
        if part == "head" and split_parts and _is_part_param(bare):
            part = "parts"
        kind = kinds[id(p)]
        lr = lrs[part] * (s.BIAS_LR_FACTOR if kind == "bias" else 1.0)
        wd = {"weight": s.WEIGHT_DECAY, "norm": s.WEIGHT_DECAY_NORM}.get(kind, s.WEIGHT_DECAY_BIAS)
        key = (part, child in frozen, kind == "weight", wd, lr)
        group = groups.setdefault(key, {"params": [], "lr": lr, "weight_decay": wd, "kinds": set()})
        group["params"].append(p)
        group["kinds"].add(kind)
    if split_parts and not any(k[0] == "parts" for k in groups):
        logger.info("SOLVER.PART_LR %g: the model has no trainable part projections or part classifiers; "
                    "nothing takes that rate", s.PART_LR)
    order = sorted(groups, key=lambda k: (_PARTS.index(k[0]), k[1], not k[2],
                                          min(_KINDS.index(x) for x in groups[k]["kinds"])))
    specs = []
    for key in order:
        part, is_frozen, is_weight, wd, _ = key
        group = groups[key]
        present = group.pop("kinds")
        kinds_here = [k for k in _KINDS if k in present]
        others = [k for k in groups if k[:3] == (part, is_frozen, False)]
        if is_weight:
            name = part
        elif len(others) == 1 and wd == 0:
            name = f"{part}_no_decay"
        else:
            name = f"{part}_{'+'.join(kinds_here)}"
        spec = {"name": name + ("_frozen" if is_frozen else ""), **group}
        if frozen:
            spec["freeze_status"] = "freeze" if is_frozen else "normal"
        specs.append(spec)
    return specs


def build_unipt_optimizer(cfg, model: nn.Module) -> tuple[torch.optim.Optimizer, None]:
    """SOLVER.OPT ("Adam" or "AdamW") over ``param_group_specs``, with fast-reid's gradient
    clipping when SOLVER.CLIP_GRADIENTS.ENABLED; ``fused=True`` when every parameter is on CUDA.
    Returns (optimizer, None): fast-reid's DefaultTrainer unpacks (optimizer, param_wrapper).

    With a GradScaler and a fused optimiser, ``scaler.step`` lets the optimiser unscale inside
    its kernel; gradient clipping (fast-reid's wrapped ``step``) must then see unscaled
    gradients, so call ``scaler.unscale_(optimizer)`` before ``scaler.step(optimizer)``."""
    s = cfg.SOLVER
    if s.OPT not in _OPTIMIZERS:
        raise ValueError(f"SOLVER.OPT must be one of {sorted(_OPTIMIZERS)} for UniPT, got {s.OPT!r}")
    if len(s.BETAS) != 2:
        raise ValueError(f"SOLVER.BETAS needs 2 values, got {list(s.BETAS)}")
    groups = param_group_specs(cfg, model)
    if not groups:
        raise ValueError("the model has no trainable parameter")
    for g in groups:
        logger.info("optimiser group %-16s %4d tensors, %11d params, lr %.2e, weight decay %g",
                    g["name"], len(g["params"]), sum(p.numel() for p in g["params"]), g["lr"], g["weight_decay"])
    if any(g.get("freeze_status") == "freeze" for g in groups):
        logger.info("MODEL.FREEZE_LAYERS %s: not updated during the first %d iterations (SOLVER.FREEZE_ITERS)",
                    list(cfg.MODEL.FREEZE_LAYERS), int(s.FREEZE_ITERS))
    opt_cls = _with_gradient_clipping(cfg, _OPTIMIZERS[s.OPT])
    extra = {"fused": True} if _all_on_cuda(groups) else {}
    optimizer = opt_cls(groups, lr=s.BASE_LR, betas=tuple(s.BETAS), eps=s.EPS, weight_decay=s.WEIGHT_DECAY, **extra)
    logger.info("optimiser %s: %s implementation", s.OPT, "fused CUDA" if extra else "default")
    return optimizer, None


def _with_gradient_clipping(cfg, optimizer_cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """fast-reid's per-parameter gradient clipping (SOLVER.CLIP_GRADIENTS: CLIP_TYPE "value" or "norm",
    CLIP_VALUE, NORM_TYPE) around ``optimizer_cls``'s step, skipping parameters without a gradient
    (frozen by SOLVER.FREEZE_ITERS, say): torch's ``clip_grad_value_`` raises on one, where fast-reid's
    ``maybe_add_gradient_clipping`` would pass it."""
    if not cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        return optimizer_cls
    clipper = _create_gradient_clipper(cfg.SOLVER.CLIP_GRADIENTS)

    def clip_if_present(p: torch.Tensor) -> None:
        if p.grad is not None:
            clipper(p)

    return _generate_optimizer_class_with_gradient_clipping(optimizer_cls, per_param_clipper=clip_if_present)


def _all_on_cuda(groups: list[dict[str, Any]]) -> bool:
    """True when every parameter of ``groups`` is a floating-point tensor on a CUDA device."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


def build_unipt_lr_scheduler(cfg, optimizer: torch.optim.Optimizer, iters_per_epoch: int) -> dict[str, Any]:
    """SOLVER.SCHED = "WarmupLinearLR": {"iter_sched": LambdaLR} from transformers'
    ``get_linear_schedule_with_warmup``, to be stepped once per iteration: factor it / warm-up
    during the warm-up (WARMUP_RATIO of MAX_EPOCH * iters_per_epoch iterations, rounded), then
    linear decay from 1 to 0 at the last iteration, 0 after. Any other SCHED: fast-reid's
    per-epoch {"lr_sched", "warmup_sched"}.

    Checkpoints hold the LambdaLR's state_dict (its step count and base rates; the factor
    function is rebuilt from the config), so those saved by the earlier hand-written LambdaLR
    (the same factors) resume into this one unchanged."""
    s = cfg.SOLVER
    if s.SCHED != "WarmupLinearLR":
        return build_lr_scheduler(cfg, optimizer, iters_per_epoch)
    max_iter = int(s.MAX_EPOCH) * int(iters_per_epoch)
    if max_iter <= 0:
        raise ValueError(f"WarmupLinearLR needs SOLVER.MAX_EPOCH * iterations per epoch > 0, got "
                         f"{s.MAX_EPOCH} * {iters_per_epoch} (is the training set smaller than IMS_PER_BATCH?)")
    if not 0.0 <= s.WARMUP_RATIO < 1.0:
        raise ValueError(f"SOLVER.WARMUP_RATIO must be in [0, 1), got {s.WARMUP_RATIO}")
    warmup = int(round(s.WARMUP_RATIO * max_iter))
    logger.info("WarmupLinearLR: %d warm-up iterations, linear decay to 0 at iteration %d", warmup, max_iter)
    return {"iter_sched": get_linear_schedule_with_warmup(optimizer, warmup, max_iter)}
