"""PLIP's identity-based vision-language contrast (IVLC; docs/choices.md, PLIP).

UniPT's contrastive loss (``contrastive.py``, Eq. 1) has one positive per anchor, its own pair.
IVLC makes every image-text pair of the anchor's identity a positive: the target distribution
of anchor i over the candidates j is q_ij = y_ij / sum_k y_ik, with y_ij = 1 when candidate j
has i's identity, and the loss of each direction is the soft cross-entropy
-sum_j q_ij log softmax_j(logit_scale * cos(i, j)), averaged over the anchors; the two directions
(image -> text, text -> image) are averaged as in Eq. 1. With every pair its own identity
(``targets=None``, or all targets distinct) q is the identity matrix and IVLC is exactly Eq. 1.

The temperature (``logit_scale``) and the gathering of negatives across processes are those of
``contrastive_loss``: with ``gather=True`` in a process group of W > 1 processes the embeddings
and the identities of every process are gathered (``all_gather_with_grad``) and this process's
N anchors are scored against the W * N candidates. A mean loss like Eq. 1: after
DistributedDataParallel averages the gradients they equal those of one process on the
concatenated batch, with no scaling (``tests/test_ivlc_loss.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastreid.utils import comm

from .contrastive import all_gather_with_grad

__all__ = ["ivlc_loss", "identity_candidates"]


def identity_candidates(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    targets: torch.Tensor | None,
    gather: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidates an identity-level cross-modal loss scores this process's anchors against.

    Args:
        image_emb, text_emb: (N, D) embeddings of this process's N pairs.
        targets: long (N,) identity of pair i, or None: every pair its own identity (pair i of
            process r gets identity r * N + i, distinct across processes).
        gather: gather the candidates of every process (W > 1), as ``contrastive_loss`` does.
    Returns:
        (all_img (M, D), all_txt (M, D), anchor_ids long (N,), candidate_ids long (M,)) with
        M = W * N when gathering in a group of W > 1 processes (rank order, embeddings with
        gradients, identities without), else M = N and the inputs themselves.
    """
    n = image_emb.shape[0]
    rank, world = comm.get_rank(), comm.get_world_size()
    gathering = gather and world > 1
    if targets is None:
        offset = rank * n if gathering else 0
        anchor_ids = torch.arange(offset, offset + n, device=image_emb.device)
        candidate_ids = torch.arange(world * n if gathering else n, device=image_emb.device)
    else:
        anchor_ids = targets.to(device=image_emb.device, dtype=torch.long)
        candidate_ids = all_gather_with_grad(anchor_ids) if gathering else anchor_ids
    if gathering:
        return all_gather_with_grad(image_emb), all_gather_with_grad(text_emb), anchor_ids, candidate_ids
    return image_emb, text_emb, anchor_ids, candidate_ids


def ivlc_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    targets: torch.Tensor | None = None,
    logit_scale: float | torch.Tensor = 1.0,
    gather: bool = False,
) -> torch.Tensor:
    """IVLC: (softCE(image -> text) + softCE(text -> image)) / 2 over cosine similarities times
    ``logit_scale`` (= 1 / temperature), the targets of each anchor spread uniformly over the
    candidates of its identity.

    Args:
        image_emb, text_emb: (N, D) embeddings of N matched pairs (row i of each is a pair);
            L2-normalised here (cosine similarity), so raw features are accepted.
        targets: long (N,) identity of pair i; None = every pair its own identity (Eq. 1).
        logit_scale: float or 0-d tensor (a learnable one receives gradients).
        gather: use the embeddings (and identities) of every process as candidates.
    Returns:
        0-d float32 tensor: the mean over this process's N anchors of both directions / 2.
    """
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(f"ivlc_loss expects two (N, D) tensors of the same shape, got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    if targets is not None and targets.shape != (image_emb.shape[0],):
        raise ValueError(f"ivlc_loss expects targets (N,) = ({image_emb.shape[0]},), got {tuple(targets.shape)}")
    # float32 with autocast off, as contrastive_loss (the matmuls would otherwise run in half precision)
    with torch.autocast(device_type=image_emb.device.type, enabled=False):
        img = F.normalize(image_emb.float(), dim=-1)
        txt = F.normalize(text_emb.float(), dim=-1)
        if isinstance(logit_scale, torch.Tensor):
            logit_scale = logit_scale.float()
        all_img, all_txt, ids, all_ids = identity_candidates(img, txt, targets, gather)
        positive = (ids.unsqueeze(1) == all_ids.unsqueeze(0)).float()  # (N, M); every row has its own pair
        q = positive / positive.sum(dim=1, keepdim=True)  # uniform over the anchor's identity
        logits_i2t = logit_scale * img @ all_txt.t()  # (N, M): own images vs every text
        logits_t2i = logit_scale * txt @ all_img.t()  # (N, M): own texts vs every image
        # cross_entropy with class-probability targets: -sum_j q_ij log softmax_j, mean over rows
        return (F.cross_entropy(logits_i2t, q) + F.cross_entropy(logits_t2i, q)) / 2
