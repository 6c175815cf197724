"""Optimiser and learning-rate schedule builders for UniPT.

Parameter groups by module prefix: ``visual.`` (SOLVER.VISUAL_LR), ``text.`` (SOLVER.TEXT_LR),
everything else (projections, heads, PGU, temperature) at SOLVER.BASE_LR; a rate of 0 means
BASE_LR. Each is split into a decayed group (SOLVER.WEIGHT_DECAY) and a group without decay
holding biases, normalisation-layer parameters and scalars, unless SOLVER.DECAY_NORM_AND_BIAS.

Adam / AdamW use the fused CUDA kernel (``fused=True``) when every parameter is on a CUDA device
(the optimiser is built after the model is moved to its device), else torch's default
implementation (for-each on CUDA, for-loop on the CPU) as before.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from fastreid.solver.build import build_lr_scheduler, maybe_add_gradient_clipping
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

logger = logging.getLogger(__name__)

__all__ = ["build_unipt_optimizer", "build_unipt_lr_scheduler", "param_group_specs", "warmup_linear_factor"]

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
               nn.modules.batchnorm._NormBase)  # _NormBase covers BatchNorm*/InstanceNorm*/SyncBN
_OPTIMIZERS = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
_PREFIXES = (("visual", "visual."), ("text", "text."))


def _no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters exempt from weight decay: biases, norm-layer parameters, scalars."""
    names = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, _NORM_TYPES) or p_name == "bias" or p_name.endswith("_bias") or p.dim() == 0:
                names.add(full)
    return names


def param_group_specs(cfg, model: nn.Module) -> list[dict[str, Any]]:
    """The parameter groups ({"name", "params", "lr", "weight_decay"}) of ``model``, empty ones
    left out; names: visual, visual_no_decay, text, text_no_decay, head, head_no_decay."""
    s = cfg.SOLVER
    lrs = {"visual": s.VISUAL_LR or s.BASE_LR, "text": s.TEXT_LR or s.BASE_LR, "head": s.BASE_LR}
    no_decay = set() if s.DECAY_NORM_AND_BIAS else _no_decay_names(model)
    groups: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        bare = name[len("module."):] if name.startswith("module.") else name
        part = next((g for g, prefix in _PREFIXES if bare.startswith(prefix)), "head")
        decay = name not in no_decay
        key = part if decay else f"{part}_no_decay"
        group = groups.setdefault(key, {"name": key, "params": [], "lr": lrs[part],
                                        "weight_decay": s.WEIGHT_DECAY if decay else 0.0})
        group["params"].append(p)
    order = ["visual", "visual_no_decay", "text", "text_no_decay", "head", "head_no_decay"]
    return [groups[k] for k in order if k in groups]


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
    opt_cls = maybe_add_gradient_clipping(cfg, _OPTIMIZERS[s.OPT])
    extra = {"fused": True} if _all_on_cuda(groups) else {}
    optimizer = opt_cls(groups, lr=s.BASE_LR, betas=tuple(s.BETAS), eps=s.EPS, weight_decay=s.WEIGHT_DECAY, **extra)
    logger.info("optimiser %s: %s implementation", s.OPT, "fused CUDA" if extra else "default")
    return optimizer, None


def _all_on_cuda(groups: list[dict[str, Any]]) -> bool:
    """True when every parameter of ``groups`` is a floating-point tensor on a CUDA device."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


def warmup_linear_factor(it: int, warmup_iters: int, max_iter: int) -> float:
    """LR factor at iteration ``it``: it / warmup_iters during warm-up (0 at it = 0), then
    linear decay from 1 at warmup_iters to 0 at max_iter (and 0 after)."""
    if it < warmup_iters:
        return it / warmup_iters
    return max(0.0, (max_iter - it) / max(1, max_iter - warmup_iters))


def build_unipt_lr_scheduler(cfg, optimizer: torch.optim.Optimizer, iters_per_epoch: int) -> dict[str, Any]:
    """SOLVER.SCHED = "WarmupLinearLR": {"iter_sched": LambdaLR}, to be stepped once per
    iteration (warm-up over WARMUP_RATIO of MAX_EPOCH * iters_per_epoch iterations, then linear
    decay to 0). Any other SCHED: fast-reid's per-epoch {"lr_sched", "warmup_sched"}."""
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

    def factor(it: int) -> float:
        return warmup_linear_factor(it, warmup, max_iter)

    return {"iter_sched": LambdaLR(optimizer, factor)}
