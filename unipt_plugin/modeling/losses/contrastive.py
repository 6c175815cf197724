"""Symmetric image-text contrastive loss (paper Eq. 1), optionally with negatives gathered
from every process.

With ``gather=True`` and a process group of W > 1 processes, each process all-gathers the
image and text embeddings of every process *with gradients* and computes the loss of its own
N rows against the global batch of W * N candidates (labels offset by rank * N). The backward
of the gather sums, over processes, the gradient each process's loss sends to a slice, so after
DistributedDataParallel averages parameter gradients they equal the gradients of one process
computing the loss on the concatenated batch (``tests/test_distributed_contrastive.py``).
"""
from __future__ import annotations

import torch
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from fastreid.utils import comm

__all__ = ["contrastive_loss", "all_gather_with_grad"]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(N, ...) on each of W processes -> (W * N, ...) in rank order, differentiable (integer
    tensors, e.g. identity targets, are gathered too, without gradient). Every process must
    pass the same N; with no process group (or W = 1) the tensor itself is returned."""
    if comm.get_world_size() == 1:
        return tensor
    # torch's differentiable all_gather: the backward sums, over processes, the gradient each
    # one sends to this process's slice (reduce-scatter on NCCL, all-to-all on gloo).
    return torch.cat(dist_nn.all_gather(tensor), dim=0)


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: float | torch.Tensor = 1.0,
    gather: bool = False,
) -> torch.Tensor:
    """Eq. 1: (CE(image -> text) + CE(text -> image)) / 2 over cosine similarities times
    ``logit_scale`` (= 1 / temperature; the paper uses 1, plain cosine).

    Args:
        image_emb, text_emb: (N, D) embeddings of N matched pairs (row i of each is a pair);
            they are L2-normalised here (cosine similarity), so raw features are accepted.
        logit_scale: float or 0-d tensor (a learnable one receives gradients).
        gather: use the embeddings of every process as negatives (see module docstring).
    Returns:
        0-d float32 tensor: the mean over this process's N anchors of both directions / 2.
    """
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(f"contrastive_loss expects two (N, D) tensors of the same shape, got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    # Float32 for AMP safety: under autocast the matmuls would run in float16 / bfloat16 even
    # on float32 inputs, so the similarities and the cross-entropies run with autocast off.
    with torch.autocast(device_type=image_emb.device.type, enabled=False):
        img = F.normalize(image_emb.float(), dim=-1)
        txt = F.normalize(text_emb.float(), dim=-1)
        if isinstance(logit_scale, torch.Tensor):
            logit_scale = logit_scale.float()
        n = img.shape[0]
        rank, world = comm.get_rank(), comm.get_world_size()
        if gather and world > 1:
            all_img = all_gather_with_grad(img)
            all_txt = all_gather_with_grad(txt)
            offset = rank * n
        else:
            all_img, all_txt, offset = img, txt, 0
        labels = torch.arange(offset, offset + n, device=img.device)
        logits_i2t = logit_scale * img @ all_txt.t()  # (N, W*N) float32: own images vs every text
        logits_t2i = logit_scale * txt @ all_img.t()  # (N, W*N) float32: own texts vs every image
        return (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2
