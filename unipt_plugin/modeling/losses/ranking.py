"""Bidirectional ranking loss with semi-hard negatives (paper Eq. 5; docs/choices.md, Fine-tuning).

For an anchor (an image, say) the positive is its own paired caption (the diagonal of the
similarity matrix) and the negatives are the captions of *other* identities; captions of the
same identity are neither. A negative is semi-hard when 0 < s_neg - s_pos + margin < margin,
i.e. s_pos - margin < s_neg < s_pos. One semi-hard negative is drawn uniformly at random per
anchor and the anchor's loss is s_neg - s_pos + margin (the hinge of Eq. 5, positive by
construction). Anchors without a semi-hard negative contribute 0 by default (negatives that
already score above the positive are hard, not semi-hard, and are left out as in LGUR);
``hardest_fallback=True`` uses max(margin - s_pos + s_neg_hardest, 0) for them instead. The
loss is summed over anchors, in both directions (image -> text and text -> image).

Similarities, draws and hinges are computed in float32 with autocast switched off (under
autocast a matmul of float32 embeddings would otherwise run in float16 / bfloat16).

With ``gather=True`` in a process group of W > 1 processes (``ranking_loss``), each process
ranks its own N anchors against the W * N candidates of every process (see ``ranking_loss``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastreid.utils import comm

from .contrastive import all_gather_with_grad

__all__ = ["ranking_loss", "ranking_loss_from_similarity"]


def _draw_semi_hard(semi: torch.Tensor, sim: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One uniformly random True column per row of ``semi`` (N, M) bool -> long (N,); the
    column is arbitrary for rows without one (the caller masks them). ``sim`` (N, M, detached)
    is unused here; it is the argument a deterministic replacement (tests) needs.

    The uniform draws are made on the generator's device (the model's device when the
    meta-architectures built it there) and moved to ``semi``'s device if they differ."""
    gen_device = generator.device if generator is not None else semi.device
    u = torch.rand(semi.shape, generator=generator, device=gen_device).to(semi.device)
    u = torch.where(semi, u, torch.full_like(u, -1.0))
    return u.argmax(dim=1)


def _one_direction(sim: torch.Tensor, negative: torch.Tensor, margin: float,
                   generator: torch.Generator | None, hardest_fallback: bool,
                   positive: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over anchors of one direction.

    Args:
        sim: float32 (N, M), rows = anchors, columns = candidates.
        negative: bool (N, M), True where the candidate is of another identity.
        positive: long (N,) column of each row's positive; None = the diagonal (M == N).
    """
    if positive is None:
        pos = sim.diagonal().unsqueeze(1)  # (N, 1)
    else:
        pos = sim.gather(1, positive.unsqueeze(1))  # (N, 1)
    with torch.no_grad():
        s = sim.detach()
        semi = negative & (s - pos.detach() + margin > 0) & (s < pos.detach())
        pick = _draw_semi_hard(semi, s, generator)  # a uniformly random semi-hard column per row
        has_semi = semi.any(dim=1)
        if hardest_fallback:
            hardest = torch.where(negative, s, torch.full_like(s, float("-inf"))).argmax(dim=1)
            pick = torch.where(has_semi, pick, hardest)
            use = has_semi | negative.any(dim=1)
        else:
            use = has_semi
    s_neg = sim.gather(1, pick.unsqueeze(1))
    hinge = F.relu(margin - pos + s_neg).squeeze(1)
    return (hinge * use.to(hinge.dtype)).sum()


def ranking_loss_from_similarity(
    sim: torch.Tensor,
    targets: torch.Tensor,
    margin: float = 0.2,
    generator: torch.Generator | None = None,
    hardest_fallback: bool = False,
) -> torch.Tensor:
    """Eq. 5 on a similarity matrix.

    Args:
        sim: (N, N) with sim[i, j] = similarity of image i and text j; (i, i) are the pairs.
        targets: long (N,) identity of pair i (negatives are pairs of another identity).
        margin: alpha of Eq. 5.
        generator: random source of the semi-hard draws (None = torch's global RNG).
        hardest_fallback: anchors with no semi-hard negative use their hardest negative.
    Returns:
        0-d float32 tensor: sum over the N image anchors and the N text anchors.
    """
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1] or targets.shape != (sim.shape[0],):
        raise ValueError(f"ranking loss expects sim (N, N) and targets (N,), got "
                         f"{tuple(sim.shape)} and {tuple(targets.shape)}")
    with torch.autocast(device_type=sim.device.type, enabled=False):
        sim = sim.float()
        negative = targets.unsqueeze(0) != targets.unsqueeze(1)  # symmetric (N, N)
        i2t = _one_direction(sim, negative, margin, generator, hardest_fallback)
        t2i = _one_direction(sim.t(), negative, margin, generator, hardest_fallback)
        return i2t + t2i


def ranking_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    targets: torch.Tensor,
    margin: float = 0.2,
    generator: torch.Generator | None = None,
    hardest_fallback: bool = False,
    gather: bool = False,
) -> torch.Tensor:
    """Eq. 5 on image and text embeddings (cosine similarity; they are normalised here).

    Args:
        image_emb, text_emb: (N, D) embeddings of N pairs (row i of each is a pair).
        targets: long (N,) identity of pair i.
        margin, generator, hardest_fallback: as in :func:`ranking_loss_from_similarity`.
        gather: in a process group of W > 1 processes, rank this process's N anchors against
            the W * N candidates of every process (embeddings gathered with gradients, identity
            targets gathered too): own images vs every text and own texts vs every image, the
            positive of local anchor i being candidate rank * N + i and the negatives the
            candidates of another identity. Every process must pass the same N.
    Returns:
        0-d float32 tensor. Without gathering (or W = 1): the sum over the N image anchors and
        the N text anchors, as in :func:`ranking_loss_from_similarity`. With gathering: W times
        this process's sum over its 2N anchors. Why W: one process on the concatenated batch
        of W * N pairs minimises the SUM over all anchors, L = sum_r L_r with L_r the anchor sum
        of process r. When process r back-propagates c * L_r, the gather's backward (it sums,
        over processes, the gradients sent to each slice) gives its embeddings
        c * (dL_r/dx_r as anchors + sum_r' dL_r'/dx_r as candidates) = c * dL/dx_r, and
        DistributedDataParallel then AVERAGES the parameter gradients over the W processes:
        (c / W) * dL/dtheta. c = W makes them dL/dtheta, the gradients of the whole batch, and
        the mean over processes of the returned values is L, what a single process would log.
        A mean loss (contrastive, identity) needs no such factor.
    """
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2 or targets.shape != (image_emb.shape[0],):
        raise ValueError(f"ranking loss expects two (N, D) embeddings and targets (N,), got "
                         f"{tuple(image_emb.shape)}, {tuple(text_emb.shape)} and {tuple(targets.shape)}")
    with torch.autocast(device_type=image_emb.device.type, enabled=False):
        img = F.normalize(image_emb.float(), dim=-1)
        txt = F.normalize(text_emb.float(), dim=-1)
        rank, world = comm.get_rank(), comm.get_world_size()
        if not gather or world == 1:
            return ranking_loss_from_similarity(img @ txt.t(), targets, margin, generator, hardest_fallback)
        n = img.shape[0]
        all_img = all_gather_with_grad(img)  # (W*N, D)
        all_txt = all_gather_with_grad(txt)  # (W*N, D)
        all_targets = all_gather_with_grad(targets)  # (W*N,), no gradient
        negative = targets.unsqueeze(1) != all_targets.unsqueeze(0)  # (N, W*N)
        positive = torch.arange(rank * n, (rank + 1) * n, device=img.device)
        i2t = _one_direction(img @ all_txt.t(), negative, margin, generator, hardest_fallback, positive)
        t2i = _one_direction(txt @ all_img.t(), negative, margin, generator, hardest_fallback, positive)
        return world * (i2t + t2i)
