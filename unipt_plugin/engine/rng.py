"""Random-number-generator state of a training process, for checkpoints that resume exactly.

A run's random draws come from: torch's global CPU (and CUDA) generator (dropout, drop-path,
initialisation), and numpy's and Python's global generators. Nothing else needs saving: the data
stream, the image augmentation and the MLM masks are functions of the run's seed and the stream
position (``ResumableBatchSampler``, ``T2ITrainSet``, ``TrainCollator``), and the semi-hard
negative draws of ``UniPTT2I`` come from a generator made for each step from the batch's
sample seeds. The models hold no generator.

:func:`capture_rng_state` returns plain containers of tensors and numbers, so that the state
goes into a checkpoint that ``torch.load(weights_only=True)`` reads back.
"""
from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]

logger = logging.getLogger(__name__)


def capture_rng_state() -> dict[str, Any]:
    """The state of every global generator a training step of this process draws from."""
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
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` returned.

    A "generators" entry (the models' own generators, saved by earlier versions of the plugin)
    is ignored, with an info log: those draws now come from the samples' seeds."""
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
    old = state.get("generators")
    if old:
        logger.info("checkpoint's RNG state holds the states of model generators (%s) of an earlier version: "
                    "ignored (the MLM masks and semi-hard negative draws now come from the samples' seeds)",
                    ", ".join(sorted(old)))
