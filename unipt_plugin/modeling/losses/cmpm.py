"""Cross-modal projection matching and classification (CMPM / CMPC; Zhang & Lu, "Deep Cross-Modal
Projection Learning for Image-Text Matching", ECCV 2018), the fine-tuning losses PLIP reports
(docs/choices.md, PLIP).

CMPM. For image embedding x_i and text embeddings z_j (un-normalised), the image -> text
matching probabilities are p_ij = softmax_j(x_i . z_j / |z_j|), the scalar projection of x_i on
each normalised text, and the true matching distribution is q_ij = y_ij / sum_k y_ik (y_ij = 1
when j has i's identity; ``target_norm="l1"``, the paper's). The loss of the direction is
(1 / N) sum_i KL(p_i || q_i) = (1 / N) sum_i sum_j p_ij (log p_ij - log(q_ij + eps)); text -> image
is the same with the roles swapped, and L_cmpm is their SUM. ``target_norm="l2"`` divides y_i by
its L2 norm instead (q_ij = 1 / sqrt(n_i) on the n_i positives), what PLIP's fine-tuning code
computes (``docs/choices.md``, PLIP).

CMPC. Each embedding is replaced by its vector projection on the normalised embedding of its
own pair, x^_i = (x_i . z_i / |z_i|) z_i / |z_i| (and z^_i likewise on x_i), and classified by a
norm-softmax classifier shared by both modalities (class weights W_c of unit norm, no bias):
L_cmpc = CE(W x^_i, y_i) + CE(W z^_i, y_i), each the mean over the batch.

Both run in float32 with autocast off. CMPM can score this process's anchors against the
candidates of every process (``gather``, through the same gather as ``contrastive_loss``); it is
a mean over anchors, so no scaling is needed under DistributedDataParallel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ivlc import identity_candidates

__all__ = ["cmpm_loss", "cmpc_loss", "NormSoftmaxClassifier", "CMPM_TARGET_NORMS"]

# MODEL.T2I.CMPM_TARGET_NORM values: how the true matching distribution's rows are normalised.
CMPM_TARGET_NORMS = ("l1", "l2")


class NormSoftmaxClassifier(nn.Module):
    """CMPC's classifier: a weight (C, D), Xavier-uniform initialised (PLIP's), whose rows are
    L2-normalised when used; no bias. forward: (B, D) -> logits (B, C) = x . W_c / |W_c|."""

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"the CMPC classifier needs num_classes > 0 (MODEL.HEADS.NUM_CLASSES={num_classes}; "
                             f"fast-reid's trainer sets it from the training data when 0)")
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ F.normalize(self.weight, dim=1).t()


def cmpm_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    targets: torch.Tensor,
    eps: float = 1e-8,
    target_norm: str = "l1",
    gather: bool = False,
) -> torch.Tensor:
    """CMPM (module docstring): KL(p || q) of image -> text plus that of text -> image.

    Args:
        image_emb, text_emb: (N, D) un-normalised embeddings of N pairs (row i of each is a pair).
        targets: long (N,) identity of pair i.
        eps: added to q inside the log (PLIP: 1e-8); > 0.
        target_norm: "l1" (q a distribution, the paper) or "l2" (PLIP's code).
        gather: score against the candidates of every process (W > 1).
    Returns:
        0-d float32 tensor: the sum of the two directions' means over this process's N anchors.
    """
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2 or targets.shape != (image_emb.shape[0],):
        raise ValueError(f"cmpm_loss expects two (N, D) embeddings and targets (N,), got "
                         f"{tuple(image_emb.shape)}, {tuple(text_emb.shape)} and {tuple(targets.shape)}")
    if target_norm not in CMPM_TARGET_NORMS:
        raise ValueError(f"cmpm_loss target_norm must be one of {CMPM_TARGET_NORMS}, got {target_norm!r}")
    if not float(eps) > 0:
        raise ValueError(f"cmpm_loss eps must be > 0, got {eps}")
    with torch.autocast(device_type=image_emb.device.type, enabled=False):
        img, txt = image_emb.float(), text_emb.float()
        all_img, all_txt, ids, all_ids = identity_candidates(img, txt, targets, gather)
        y = (ids.unsqueeze(1) == all_ids.unsqueeze(0)).float()  # (N, M)
        norm = y.sum(dim=1, keepdim=True) if target_norm == "l1" else y.norm(dim=1, keepdim=True)
        log_q = torch.log(y / norm + float(eps))
        i2t = img @ F.normalize(all_txt, dim=-1).t()  # (N, M): x_i projected on every normalised text
        t2i = txt @ F.normalize(all_img, dim=-1).t()  # (N, M): z_i projected on every normalised image
        # kl_div(log q, log p, log_target) = sum p (log p - log q); "batchmean" divides by N
        return (F.kl_div(log_q, F.log_softmax(i2t, dim=1), reduction="batchmean", log_target=True)
                + F.kl_div(log_q, F.log_softmax(t2i, dim=1), reduction="batchmean", log_target=True))


def cmpc_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    targets: torch.Tensor,
    class_weight: torch.Tensor,
) -> torch.Tensor:
    """CMPC (module docstring): CE of the image projected on its text plus CE of the text
    projected on its image, through the norm-softmax classifier ``class_weight``.

    Args:
        image_emb, text_emb: (N, D) un-normalised embeddings of N pairs.
        targets: long (N,) identity of pair i, in 0..C-1.
        class_weight: (C, D) classifier weight (``NormSoftmaxClassifier.weight``), its rows
            normalised here.
    Returns:
        0-d float32 tensor.
    """
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2 or targets.shape != (image_emb.shape[0],):
        raise ValueError(f"cmpc_loss expects two (N, D) embeddings and targets (N,), got "
                         f"{tuple(image_emb.shape)}, {tuple(text_emb.shape)} and {tuple(targets.shape)}")
    if class_weight.dim() != 2 or class_weight.shape[1] != image_emb.shape[1]:
        raise ValueError(f"cmpc_loss expects class_weight (C, {image_emb.shape[1]}), got {tuple(class_weight.shape)}")
    with torch.autocast(device_type=image_emb.device.type, enabled=False):
        img, txt = image_emb.float(), text_emb.float()
        img_n, txt_n = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        img_proj = (img * txt_n).sum(dim=1, keepdim=True) * txt_n  # (N, D)
        txt_proj = (txt * img_n).sum(dim=1, keepdim=True) * img_n  # (N, D)
        w = F.normalize(class_weight.float(), dim=1)  # (C, D), unit rows
        return F.cross_entropy(img_proj @ w.t(), targets) + F.cross_entropy(txt_proj @ w.t(), targets)
