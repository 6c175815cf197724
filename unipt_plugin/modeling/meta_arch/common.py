"""Pieces both meta-architectures share: image normalisation, device moves, pooling, seeds,
the finite-loss check."""
from __future__ import annotations

from typing import Mapping

import torch
from fastreid.utils.events import get_event_storage
from torch import nn

from ..losses import distributed_world

__all__ = ["ImageNormalizer", "NonFiniteLossError", "check_finite_losses", "masked_max_pool", "seeded_generator",
           "to_device"]


class ImageNormalizer(nn.Module):
    """(images - PIXEL_MEAN) / PIXEL_STD on the 0-255 scale; buffers move with the model."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"MODEL.PIXEL_MEAN / PIXEL_STD need 3 values, got {list(mean)} / {list(std)}")
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images float (B, 3, H, W) on the 0-255 scale -> normalised, same shape."""
        return (images.to(self.pixel_mean.device, torch.float32) - self.pixel_mean) / self.pixel_std


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device, keys) -> dict[str, torch.Tensor]:
    """The tensors of ``batch`` named in ``keys`` (those present) on ``device``."""
    return {k: batch[k].to(device, non_blocking=True) for k in keys if k in batch}


def masked_max_pool(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Max over positions of tokens (B, L, D) -> (B, D); positions with mask 0 are ignored
    when ``mask`` (B, L) is given."""
    if mask is not None:
        fill = torch.finfo(tokens.dtype).min
        tokens = tokens.masked_fill(~mask.bool().unsqueeze(-1), fill)
    return tokens.max(dim=1).values


def seeded_generator(seed: int, offset: int = 0) -> torch.Generator | None:
    """A CPU generator seeded with seed + offset + 1000 * rank (distinct per process), or None
    (torch's global RNG) when seed < 0."""
    if seed < 0:
        return None
    rank = distributed_world()[0]
    return torch.Generator().manual_seed(int(seed) + int(offset) + 1000 * rank)


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
