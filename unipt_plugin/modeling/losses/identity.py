"""Identification loss (paper Eq. 4) with a classifier shared by image and text, and the
per-part version used on PGU features (one classifier per part, part losses averaged)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SharedClassifier", "PartClassifiers", "identity_loss", "part_identity_loss"]


class SharedClassifier(nn.Linear):
    """Linear(in_dim, num_classes) with bias; weights N(0, std), bias 0 (no BN neck)."""

    def __init__(self, in_dim: int, num_classes: int, std: float = 0.001) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be > 0 (MODEL.HEADS.NUM_CLASSES={num_classes}; "
                             f"fast-reid's trainer sets it from the training data when 0)")
        super().__init__(in_dim, num_classes, bias=True)
        nn.init.normal_(self.weight, std=std)
        nn.init.zeros_(self.bias)


class PartClassifiers(nn.Module):
    """P independent Linear(in_dim, num_classes) classifiers, one per part, stored batched.

    forward: (B, P, in_dim) -> logits (B, P, num_classes)."""

    def __init__(self, num_parts: int, in_dim: int, num_classes: int, std: float = 0.001) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes must be > 0 (MODEL.HEADS.NUM_CLASSES={num_classes})")
        self.weight = nn.Parameter(torch.randn(num_parts, num_classes, in_dim) * std)
        self.bias = nn.Parameter(torch.zeros(num_parts, num_classes))

    def forward(self, parts: torch.Tensor) -> torch.Tensor:
        if parts.dim() != 3 or parts.shape[1] != self.weight.shape[0]:
            raise ValueError(f"expected parts (B, {self.weight.shape[0]}, D), got {tuple(parts.shape)}")
        return torch.einsum("bpd,pcd->bpc", parts, self.weight) + self.bias


def identity_loss(image_logits: torch.Tensor, text_logits: torch.Tensor,
                  targets: torch.Tensor) -> torch.Tensor:
    """CE(image) + CE(text), each the mean over the batch. logits (B, C), targets long (B,).

    Returns a 0-d float32 tensor: the logits (a classifier's output, float16 / bfloat16 under
    autocast) are cast to float32 and the cross-entropies run with autocast off."""
    with torch.autocast(device_type=image_logits.device.type, enabled=False):
        return (F.cross_entropy(image_logits.float(), targets)
                + F.cross_entropy(text_logits.float(), targets))


def part_identity_loss(image_logits: torch.Tensor, text_logits: torch.Tensor,
                       targets: torch.Tensor) -> torch.Tensor:
    """Mean over parts of (CE(image part) + CE(text part)). logits (B, P, C), targets (B,).

    Returns a 0-d float32 tensor (float32 cross-entropies with autocast off)."""
    b, p, c = image_logits.shape
    t = targets.repeat_interleave(p)  # (B*P,) matching the row-major flatten of (B, P)
    with torch.autocast(device_type=image_logits.device.type, enabled=False):
        return (F.cross_entropy(image_logits.float().reshape(b * p, c), t)
                + F.cross_entropy(text_logits.float().reshape(b * p, c), t))
