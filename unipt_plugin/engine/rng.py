"""Random-number-generator state of a training process, for checkpoints that resume exactly.

A run's random draws come from: torch's global CPU (and CUDA) generator (dropout, drop-path,
initialisation), numpy's and Python's global generators, and ``torch.Generator`` objects that
modules own (the MLM masking and the semi-hard negative draws of the meta-architectures). The
data stream is not here: it is a function of the run's seed and the iteration
(``ResumableBatchSampler``).

:func:`capture_rng_state` returns plain containers of tensors and numbers, so that the state
goes into a checkpoint that ``torch.load(weights_only=True)`` reads back.
"""
from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["capture_rng_state", "restore_rng_state"]

logger = logging.getLogger(__name__)


def _module_generators(model: nn.Module) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` held as an attribute of a submodule, keyed ``module.path:attr``
    (DistributedDataParallel's ``module.`` prefix removed, so keys do not depend on the wrapper)."""
    found = {}
    for name, module in model.named_modules():
        if name == "module" or name.startswith("module."):
            name = name[len("module."):]
        for attr, value in vars(module).items():
            if isinstance(value, torch.Generator):
                found[f"{name}:{attr}"] = value
    return found


def capture_rng_state(model: nn.Module) -> dict[str, Any]:
    """The state of every generator a training step of ``model`` draws from."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # this process's own GPU only (one per rank): a checkpoint resumes under any
        # CUDA_VISIBLE_DEVICES layout
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
        "generators": {k: g.get_state() for k, g in _module_generators(model).items()},
    }


def restore_rng_state(state: dict[str, Any], model: nn.Module) -> None:
    """Put back what :func:`capture_rng_state` returned. A generator of the model missing from
    ``state`` (a checkpoint of another configuration) keeps its state, with a warning."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda"):
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"][0])  # the current device: this rank's GPU
        else:
            logger.warning("checkpoint holds a CUDA RNG state but this process has no CUDA: not restored")
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    saved = state.get("generators", {})
    for key, generator in _module_generators(model).items():
        if key in saved:
            generator.set_state(saved[key])
        else:
            logger.warning("checkpoint has no state for the generator %s: it continues from its seed", key)
