"""Optimiser (per-module parameter groups) and LR schedule builders."""
from .build import build_unipt_lr_scheduler, build_unipt_optimizer, frozen_children, param_group_specs

__all__ = ["build_unipt_optimizer", "build_unipt_lr_scheduler", "param_group_specs", "frozen_children"]
