"""Masked language modelling (BERT): the loss over the predicted positions.

The masking itself (80/10/10 replacement, optional whole-word masking) is drawn in the data
pipeline, per sample from the sample's own seed: ``unipt_plugin.data.mlm_masking.mask_tokens``
and the training collator (``TrainCollator``), which give the model "mlm_ids" and "mlm_labels".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...data.mlm_masking import IGNORE_INDEX

__all__ = ["mlm_loss", "IGNORE_INDEX"]


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over predicted positions (BERT's normalisation of Eq. 2).

    Computed as (sum of the per-position cross-entropies) / max(number predicted, 1) in float32
    with autocast off: the same value, bit for bit, as ``F.cross_entropy(..., ignore_index)``'s
    mean when something is predicted, 0 when nothing is, and no host-device synchronisation
    (no data-dependent branch).

    Args:
        logits: (..., V) scores; labels: long (...) with ``IGNORE_INDEX`` where not predicted.
    Returns:
        0-d float32 tensor; 0 (still attached to ``logits``) when nothing is predicted.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.float().reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1)
        count = (labels != IGNORE_INDEX).sum().clamp(min=1)
        total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / count
