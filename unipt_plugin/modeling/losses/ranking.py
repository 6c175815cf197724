"""Bidirectional ranking loss with semi-hard negatives (paper Eq. 5; method-notes section 3).

For an anchor (an image, say) the positive is its own paired caption (the diagonal of the
similarity matrix) and the negatives are the captions of *other* identities; captions of the
same identity are neither. A negative is semi-hard when 0 < s_neg - s_pos + margin < margin,
i.e. s_pos - margin < s_neg < s_pos. One semi-hard negative is drawn uniformly at random per
anchor and the anchor's loss is s_neg - s_pos + margin (the hinge of Eq. 5, positive by
construction). Anchors without a semi-hard negative contribute 0 by default (negatives that
already score above the positive are hard, not semi-hard, and are left out as in LGUR);
``hardest_fallback=True`` uses max(margin - s_pos + s_neg_hardest, 0) for them instead. The
loss is summed over anchors, in both directions (image -> text and text -> image).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ranking_loss", "ranking_loss_from_similarity"]


def _one_direction(sim: torch.Tensor, negative: torch.Tensor, margin: float,
                   generator: torch.Generator | None, hardest_fallback: bool) -> torch.Tensor:
    """sim (N, N): rows = anchors, column i of row i = its positive; negative: bool (N, N)."""
    pos = sim.diagonal().unsqueeze(1)  # (N, 1)
    with torch.no_grad():
        s = sim.detach()
        semi = negative & (s - pos.detach() + margin > 0) & (s < pos.detach())
        gen_device = generator.device if generator is not None else s.device
        u = torch.rand(s.shape, generator=generator, device=gen_device).to(s.device)
        u = torch.where(semi, u, torch.full_like(u, -1.0))
        pick = u.argmax(dim=1)  # a uniformly random semi-hard column per row
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
) -> torch.Tensor:
    """Eq. 5 on (N, D) image and text embeddings (cosine similarity; they are normalised here)."""
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float(), dim=-1)
    return ranking_loss_from_similarity(img @ txt.t(), targets, margin, generator, hardest_fallback)
