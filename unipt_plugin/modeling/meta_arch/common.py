"""Pieces both meta-architectures share: image normalisation, device moves, pooling, the
per-step generator from the batch's seeds, the finite-loss check."""
from __future__ import annotations

import logging
from typing import Mapping

import torch
from fastreid.utils.events import get_event_storage
from torch import nn

from ...data.common import derive_seed


__all__ = ["ImageNormalizer", "NonFiniteLossError", "check_finite_losses", "compile_encoders", "masked_max_pool",
           "model_device", "seeds_generator", "to_device"]

logger = logging.getLogger(__name__)


class ImageNormalizer(nn.Module):
    """(images - PIXEL_MEAN) / PIXEL_STD on the 0-255 scale; buffers move with the model."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"MODEL.PIXEL_MEAN / PIXEL_STD need 3 values, got {list(mean)} / {list(std)}")
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images uint8 or float (B, 3, H, W) on the 0-255 scale -> float32 normalised, same shape.

        The move comes before the conversion: a uint8 batch crosses to the GPU at a quarter of
        the bytes of float32 (``.to(device, float32)`` would convert on the CPU first)."""
        images = images.to(self.pixel_mean.device, non_blocking=True).to(torch.float32)
        return (images - self.pixel_mean) / self.pixel_std


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device, keys) -> dict[str, torch.Tensor]:
    """The tensors of ``batch`` named in ``keys`` (those present) on ``device``."""
    return {k: batch[k].to(device, non_blocking=True) for k in keys if k in batch}


def masked_max_pool(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Max over positions of tokens (B, L, D) -> (B, D); positions with mask 0 are ignored
    when ``mask`` (B, L) is given. Exact in the tokens' dtype (a max does not round, and the
    fill is that dtype's lowest value), so under autocast it needs no float32 cast."""
    if mask is not None:
        fill = torch.finfo(tokens.dtype).min
        tokens = tokens.masked_fill(~mask.bool().unsqueeze(-1), fill)
    return tokens.max(dim=1).values


def model_device(name: str | torch.device | None) -> torch.device:
    """The device a model configured with ``MODEL.DEVICE = name`` runs on: "cpu" (or None) ->
    cpu; "cuda" -> the current CUDA device (``torch.cuda.current_device()``, the one a
    launcher selected for this process), "cuda:N" -> that device; "auto" -> the current CUDA
    device when CUDA is usable, else cpu. A CUDA name without usable CUDA gives cpu, with a
    warning (the model can still be built, e.g. to inspect or export it)."""
    if name is None:
        return torch.device("cpu")
    text = str(name)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(text)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE %s but CUDA is not usable: using the CPU", text)
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


def seeds_generator(seeds: torch.Tensor | None, stream: int, device: torch.device) -> torch.Generator | None:
    """A generator on ``device`` for one training step, seeded ``derive_seed(seeds[0], stream)``
    from the batch's "seeds" (long (B,), the samples' own seeds, on the CPU: reading one makes
    no device synchronisation); None (torch's global RNG, which the checkpoints hold) when the
    batch has no seeds.

    The seed of the batch's first sample identifies the batch (run seed, rank, stream position;
    a micro-batch k of gradient accumulation starts at sample k), so the draws need no state of
    their own to resume exactly. (Under DistributedDataParallel with ``device_ids``, DDP copies
    every tensor of the batch, "seeds" too, to the GPU before the forward; reading ``seeds[0]``
    then waits for that copy.)"""
    if seeds is None or seeds.numel() == 0:
        return None
    first = int(seeds.reshape(-1)[0])
    return torch.Generator(device=device).manual_seed(derive_seed(first, stream))


def compile_encoders(model: nn.Module, enabled: bool) -> None:
    """``MODEL.COMPILE``: compile ``model.visual`` and ``model.text`` in place with
    ``nn.Module.compile()`` (torch.compile of each module's call), so that parameter names and
    state_dict keys stay as they are (``torch.compile(module)`` would wrap them under
    ``_orig_mod.``). Compilation happens lazily at the first forward; nothing when not enabled."""
    if not enabled:
        return
    for name in ("visual", "text"):
        getattr(model, name).compile()
    logger.info("MODEL.COMPILE: the visual and text encoders are compiled (torch.compile) at their first call")


class NonFiniteLossError(FloatingPointError):
    """A training loss term is NaN or infinite; the message names the iteration and the term."""


def check_finite_losses(losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``losses`` unchanged when every term is finite; else raises :class:`NonFiniteLossError`
    naming the iteration (from fast-reid's event storage) and the non-finite terms.

    Called by the meta-architectures before they return their losses, i.e. before backward and
    the optimiser step: the weights and the checkpoints already written stay as they were.
    One host-device synchronisation per step (fast-reid's loss logging makes one anyway).
    """
    if not losses:
        return losses
    values = torch.stack([v.detach().float().reshape(()) for v in losses.values()]).cpu()
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return losses
    try:
        where = f"at iteration {get_event_storage().iter}"
    except AssertionError:  # not inside fast-reid's training loop
        where = "outside a training loop"
    bad = [k for k, ok in zip(losses, finite.tolist()) if not ok]
    table = ", ".join(f"{k} = {v:.6g}" for k, v in zip(losses, values.tolist()))
    raise NonFiniteLossError(
        f"non-finite loss {where}: {', '.join(bad)} ({table}). Training stopped before this step's "
        f"optimiser update, so the weights and the checkpoints already in OUTPUT_DIR are intact. "
        f"Lower the learning rate (SOLVER.BASE_LR / VISUAL_LR / TEXT_LR) or check the data, then continue "
        f"from the last checkpoint with --resume.")
