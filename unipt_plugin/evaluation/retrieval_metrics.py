"""Exact cross-modal retrieval metrics (CMC Rank-k, mAP, mINP) without sorting the score matrix.

Definitions (method-notes section 4), for one query with ``P`` positives ranked ``r_1 < ... < r_P``
(1-based ranks in the gallery ordered by decreasing score):

* CMC Rank-k = 1 if ``r_1 <= k`` else 0;
* AP = (1/P) * sum_i i / r_i   (positives ranked at or above the i-th one, over its rank);
* INP = P / r_P                (number of positives over the rank of the last positive).

Each is averaged over the queries that have at least one positive and reported in percent.
The score is the inner product of the features.

Tie rule: among gallery items with exactly the same score, the item with the smaller gallery
index ranks first (what a stable descending sort would give). So the rank of a positive with
score ``s`` at gallery index ``j`` is::

    #{items with score > s} + #{items with score == s and index < j} + 1

How it is computed (no sort of the similarity matrix, memory O(chunk x G)): queries are scored
``chunk_size`` at a time (``S = q_chunk @ g.T``, float32). Fast path (:func:`_fast_ranks`): only
items scoring at least the row's lowest positive (the candidates) can rank before a positive;
they are located among the row's sorted positive scores (as order-preserving integer keys, each
with the key of the next float up) by one ``torch.searchsorted`` and counted with one
``torch.bincount``, giving ``#{score > t}`` and ``#{score == t}`` for every positive score ``t``.
When only the positive itself scores ``t``, its rank is ``#{score > t} + 1``. Rows where an
exact tie touches a positive (rare on real features) are recomputed by
:func:`_exact_key_ranks`: every (score, index) pair becomes one 64-bit key that grows with the
score and, among equal scores, with decreasing index, so the tie rule holds by construction.
"""
from __future__ import annotations

import logging
from typing import Dict, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = ["retrieval_metrics", "image_to_text"]

_SIGN_FLIP = 0x7FFFFFFF
_U32_OFFSET = 1 << 31
# Use the dense (all items) search when more than 1/_DENSE_FRACTION of the items are candidates.
_DENSE_FRACTION = 4


def _check_inputs(query_feats: torch.Tensor, gallery_feats: torch.Tensor,
                  query_pids: torch.Tensor, gallery_pids: torch.Tensor,
                  topk: Sequence[int], chunk_size: int) -> None:
    if query_feats.dim() != 2 or gallery_feats.dim() != 2:
        raise ValueError(f"query_feats and gallery_feats must be 2-D (N, D); got shapes "
                         f"{tuple(query_feats.shape)} and {tuple(gallery_feats.shape)}")
    if query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"feature dimensions differ: query D={query_feats.shape[1]}, "
                         f"gallery D={gallery_feats.shape[1]}")
    if query_pids.dim() != 1 or query_pids.numel() != query_feats.shape[0]:
        raise ValueError(f"query_pids must have shape ({query_feats.shape[0]},); "
                         f"got {tuple(query_pids.shape)}")
    if gallery_pids.dim() != 1 or gallery_pids.numel() != gallery_feats.shape[0]:
        raise ValueError(f"gallery_pids must have shape ({gallery_feats.shape[0]},); "
                         f"got {tuple(gallery_pids.shape)}")
    if query_feats.shape[0] == 0 or gallery_feats.shape[0] == 0:
        raise ValueError(f"empty query ({query_feats.shape[0]}) or gallery "
                         f"({gallery_feats.shape[0]}) set")
    if not topk or any(int(k) < 1 for k in topk):
        raise ValueError(f"topk must be a non-empty list of ranks >= 1; got {list(topk)}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    for name, feats in (("query_feats", query_feats), ("gallery_feats", gallery_feats)):
        # amax / amin propagate NaN and reach +-inf: no (N, D) temporary is made.
        if feats.is_floating_point() and feats.numel() and not (
                bool(torch.isfinite(feats.amax())) and bool(torch.isfinite(feats.amin()))):
            raise ValueError(f"{name} holds NaN or infinite values")


def _score_keys(scores: torch.Tensor) -> torch.Tensor:
    """Map float32 scores (any shape) to int64 in [0, 2^32) with the same order (-0.0 == +0.0)."""
    bits = (scores + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    ordered = bits ^ ((bits >> 31) & _SIGN_FLIP)  # signed int32 ordered like the floats
    return ordered.to(torch.int64) + _U32_OFFSET


def _positive_lists(query_pids: torch.Tensor, gallery_pids: torch.Tensor):
    """Gallery indices of each query's positives, as a CSR-like layout.

    Returns ``(order, start, count)``: the positives of query ``i`` are
    ``order[start[i] : start[i] + count[i]]`` in increasing gallery index.
    """
    order = torch.sort(gallery_pids, stable=True).indices
    sorted_pids = gallery_pids[order]
    uniq, counts = torch.unique_consecutive(sorted_pids, return_counts=True)
    offsets = torch.cumsum(counts, 0) - counts
    slot = torch.searchsorted(uniq, query_pids).clamp_(max=uniq.numel() - 1)
    found = uniq[slot] == query_pids
    count = torch.where(found, counts[slot], torch.zeros_like(slot))
    start = torch.where(found, offsets[slot], torch.zeros_like(slot))
    return order, start, count


def _exact_key_ranks(scores: torch.Tensor, pos_idx: torch.Tensor,
                     valid: torch.Tensor, idx_bits: int, num_gallery: int) -> torch.Tensor:
    """1-based ranks of the positives of some queries, with 64-bit (score, index) keys.

    Handles every tie exactly; used for the rows the fast path cannot settle.
    scores: (c, G) float32 (consumed: may be freed); pos_idx: (c, P) gallery indices of the
    positives (padded);
    valid: (c, P) bool, False on padding (every row has at least one True).
    Returns (c, P) int64 ranks, ascending along P for the valid entries (best first), with
    padding moved to the end (value meaningless).
    """
    c, num_pos = pos_idx.shape
    pos_scores = scores.gather(1, pos_idx)  # (c, P)
    lowest = torch.where(valid, pos_scores, torch.full_like(pos_scores, float("inf"))).amin(1)

    # Candidates: the only items that can rank before some positive (score >= lowest positive).
    candidate_mask = scores >= lowest[:, None]
    num_candidates = int(candidate_mask.sum())

    # key = [row |] score | (G - 1 - index): larger key = ranks earlier; distinct within a row.
    score_shift = idx_bits
    row_shift = 32 + idx_bits
    rev = num_gallery - 1
    row_ids = torch.arange(c, dtype=torch.int64)[:, None]
    pos_keys = (_score_keys(pos_scores) << score_shift) | (rev - pos_idx)
    # Padding gets the largest key of its row so it sorts last and no item passes it.
    pos_keys = torch.where(valid, pos_keys, torch.full_like(pos_keys, (1 << row_shift) - 1))
    pos_keys = torch.sort(pos_keys, dim=1).values  # ascending: worst positive first

    if num_candidates * _DENSE_FRACTION > c * num_gallery:
        # Most items are candidates: locate every item in its own row's keys (batched search).
        del candidate_mask
        keys = _score_keys(scores) << score_shift
        del scores
        keys |= rev - torch.arange(num_gallery, dtype=torch.int64)
        below = torch.searchsorted(pos_keys, keys)
        del keys
        below += row_ids * (num_pos + 1)
        hist = torch.bincount(below.view(-1), minlength=c * (num_pos + 1))
    else:
        # Few candidates: one search of their (row, score, index) keys in all rows' keys.
        rows, cols = torch.nonzero(candidate_mask, as_tuple=True)
        cand_scores = scores[rows, cols]
        del scores, candidate_mask
        cand_keys = (rows << row_shift) | (_score_keys(cand_scores) << score_shift) | (rev - cols)
        flat_keys = (pos_keys | (row_ids << row_shift)).reshape(-1)
        # below[x] = number of the row's positive keys smaller than x's key.
        below = torch.searchsorted(flat_keys, cand_keys) - rows * num_pos
        hist = torch.bincount(rows * (num_pos + 1) + below, minlength=c * (num_pos + 1))
    hist = hist.view(c, num_pos + 1)
    # Items ranked before the k-th (ascending) positive key = those with below > k.
    ahead = hist.flip(1).cumsum(1).flip(1)[:, 1:]  # (c, P)
    ranks_ascending_key = ahead + 1
    # Reverse so that the best positive comes first; padding (at the end of the ascending
    # order) is moved to the end by rolling each row by its number of positives.
    npos = valid.sum(1)
    take = (npos[:, None] - 1 - torch.arange(num_pos)[None, :]) % num_pos
    return ranks_ascending_key.gather(1, take)

# Bits of a score key (0 .. 2^32, the top value for "just above +inf") inside a (row, score) key.
_ROW_SHIFT = 33
_PAD_KEY = (1 << _ROW_SHIFT) - 1


def _fast_ranks(scores: torch.Tensor, pos_idx: torch.Tensor, valid: torch.Tensor):
    """Ranks of the positives of a chunk from score comparisons only (no gallery index).

    scores: (c, G) float32; pos_idx: (c, P) gallery indices of the positives (padded);
    valid: (c, P) bool, False on padding (every row has at least one True).

    Each row's positive scores ``t_0 < ... < t_{n-1}`` become 2n boundaries ``key(t_k)`` and
    ``key(t_k) + 1`` (key: order-preserving integer form of a float32, so ``key(t) + 1`` is
    the key of the next float up). Only the candidates (items scoring at least the row's lowest
    positive) are located among them, in one ``searchsorted`` over all rows' boundaries (row
    id in the high bits), and counted with one ``bincount``: bucket ``2k + 1`` holds the items
    scoring exactly ``t_k``, buckets above ``2k + 1`` those scoring more. When every
    ``t_k`` is held by its positive alone, the rank is ``#{score > t_k} + 1`` and the tie rule
    never applies; rows where some score equals a positive's score (another item, or two
    positives with the same score) are flagged for :func:`_exact_key_ranks`.

    Returns ``(ranks, needs_exact)``: (c, P) int64 ranks, ascending along P for the valid
    entries with padding at the end (meaningless where ``needs_exact``), and (c,) bool.
    """
    c, num_pos = pos_idx.shape
    num_gallery = scores.shape[1]
    pos_scores = scores.gather(1, pos_idx)  # (c, P)
    lowest = torch.where(valid, pos_scores, torch.full_like(pos_scores, float("inf"))).amin(1)
    pos_keys = torch.where(valid, _score_keys(pos_scores), torch.full_like(pos_idx, _PAD_KEY))
    pos_keys = torch.sort(pos_keys, dim=1).values  # ascending, padding last
    npos = valid.sum(1)
    valid_sorted = torch.arange(num_pos)[None, :] < npos[:, None]
    duplicate = ((pos_keys[:, 1:] == pos_keys[:, :-1]) & valid_sorted[:, 1:]).any(1)

    # Boundaries key(t_k), key(t_k) + 1 per row; cummax keeps rows with duplicates sorted
    # (they are flagged anyway); padding stays at the row's top key.
    bounds = torch.stack((pos_keys, (pos_keys + 1).clamp_(max=_PAD_KEY)), dim=2).view(c, 2 * num_pos)
    bounds = torch.cummax(bounds, dim=1).values
    row_ids = torch.arange(c, dtype=torch.int64)
    bounds = (bounds | (row_ids[:, None] << _ROW_SHIFT)).view(-1)

    # Candidates: the only items that can score at least some positive's score.
    flat = torch.nonzero((scores >= lowest[:, None]).view(-1)).squeeze(1)
    cand_keys = _score_keys(scores.view(-1)[flat])
    rows = flat.div_(num_gallery, rounding_mode="floor")
    cand_keys |= rows << _ROW_SHIFT
    # Global position among all boundaries = row * 2P + local bucket; bin = row * (2P+1) + bucket.
    bins = torch.searchsorted(bounds, cand_keys, right=True)
    del cand_keys
    bins += rows
    hist = torch.bincount(bins, minlength=c * (2 * num_pos + 1)).view(c, 2 * num_pos + 1)
    equal = hist[:, 1::2]  # (c, P): items scoring exactly t_k
    above = hist.flip(1).cumsum(1).flip(1)[:, 2::2]  # (c, P): items scoring more than t_k
    needs_exact = duplicate | ((equal != 1) & valid_sorted).any(1)
    # Reverse so that the best positive comes first, padding last (as _exact_key_ranks).
    take = (npos[:, None] - 1 - torch.arange(num_pos)[None, :]) % num_pos
    return (above + 1).gather(1, take), needs_exact


def _chunk_ranks(q: torch.Tensor, g_t: torch.Tensor, pos_idx: torch.Tensor,
                 valid: torch.Tensor, idx_bits: int, num_gallery: int) -> torch.Tensor:
    """1-based ranks of the positives of a chunk of queries (exact, tie rule included).

    q: (c, D); g_t: (D, G); pos_idx, valid: (c, P) as in :func:`_fast_ranks`.
    Returns (c, P) int64 ranks, ascending along P for the valid entries, padding at the end.
    """
    scores = torch.mm(q, g_t)  # (c, G)
    ranks, needs_exact = _fast_ranks(scores, pos_idx, valid)
    if bool(needs_exact.any()):
        rows = torch.nonzero(needs_exact).squeeze(1)
        ranks[rows] = _exact_key_ranks(scores[rows], pos_idx[rows], valid[rows], idx_bits,
                                       num_gallery)
    return ranks


def retrieval_metrics(query_feats: torch.Tensor, gallery_feats: torch.Tensor,
                      query_pids: torch.Tensor, gallery_pids: torch.Tensor,
                      topk: Sequence[int] = (1, 5, 10),
                      chunk_size: int = 1024) -> Dict[str, float]:
    """Exact CMC Rank-k, mAP and mINP (percent) of retrieving the gallery with every query.

    Args:
        query_feats: (Q, D) query features; the score is the inner product.
        gallery_feats: (G, D) gallery features.
        query_pids: (Q,) integer person ids of the queries.
        gallery_pids: (G,) integer person ids of the gallery items; an item is a positive of a
            query when the ids are equal.
        topk: ranks k of the CMC "Rank-k" entries.
        chunk_size: queries scored at a time; peak memory is O(chunk_size x G), never O(Q x G).

    Tie rule: gallery items with exactly equal scores are ordered by increasing gallery index
    (the order of a stable descending sort).

    Queries without any positive in the gallery are left out of the averages (a warning gives
    their number); ``ValueError`` if no query has a positive.

    Returns:
        dict with "Rank-k" for every k in ``topk``, "mAP" and "mINP", floats in percent.
    """
    _check_inputs(query_feats, gallery_feats, query_pids, gallery_pids, topk, chunk_size)
    q_all = query_feats.detach().to("cpu", torch.float32).contiguous()
    g_t = gallery_feats.detach().to("cpu", torch.float32).t()
    qp = query_pids.detach().to("cpu", torch.int64)
    gp = gallery_pids.detach().to("cpu", torch.int64)
    num_query, num_gallery = q_all.shape[0], g_t.shape[1]

    idx_bits = max(1, (num_gallery - 1).bit_length())
    if idx_bits > 30:
        raise ValueError(f"gallery too large for 64-bit rank keys: {num_gallery} items")
    # Row ids share the 64-bit key with 32 score bits and idx_bits index bits.
    max_rows = 1 << (31 - idx_bits)
    chunk = min(int(chunk_size), max_rows)

    order, start, count = _positive_lists(qp, gp)
    no_positive = int((count == 0).sum())
    if no_positive == num_query:
        raise ValueError(f"none of the {num_query} queries has a positive (same id) among the "
                         f"{num_gallery} gallery items: check the query and gallery ids")
    if no_positive:
        logger.warning("%d of %d queries have no positive in the gallery and are left out of "
                       "the metrics", no_positive, num_query)

    ks = [int(k) for k in topk]
    hits = torch.zeros(len(ks), dtype=torch.float64)
    ap_parts, inp_parts = [], []  # per-query values, summed once: results independent of chunk
    kept_total = 0
    k_tensor = torch.tensor(ks, dtype=torch.int64)
    for begin in range(0, num_query, chunk):
        end = min(begin + chunk, num_query)
        kept = torch.nonzero(count[begin:end] > 0).squeeze(1) + begin
        if kept.numel() == 0:
            continue
        npos = count[kept]
        num_pos = int(npos.max())
        slots = torch.arange(num_pos)[None, :]
        valid = slots < npos[:, None]
        flat = (start[kept][:, None] + torch.minimum(slots, npos[:, None] - 1))
        pos_idx = order[flat]  # (c, P) positives in increasing gallery index, padding repeats
        ranks = _chunk_ranks(q_all[kept], g_t, pos_idx, valid, idx_bits, num_gallery)

        first = ranks[:, 0]
        hits += (first[:, None] <= k_tensor[None, :]).sum(0).to(torch.float64)
        position = (slots + 1).to(torch.float64)
        precision = torch.where(valid, position / ranks.to(torch.float64),
                                torch.zeros((), dtype=torch.float64))
        ap_parts.append(precision.sum(1) / npos.to(torch.float64))
        last = ranks.gather(1, (npos - 1)[:, None]).squeeze(1)
        inp_parts.append(npos.to(torch.float64) / last.to(torch.float64))
        kept_total += kept.numel()

    results: Dict[str, float] = {}
    for k, h in zip(ks, hits.tolist()):
        results[f"Rank-{k}"] = 100.0 * h / kept_total
    results["mAP"] = 100.0 * float(torch.cat(ap_parts).sum()) / kept_total
    results["mINP"] = 100.0 * float(torch.cat(inp_parts).sum()) / kept_total
    return results


def image_to_text(text_feats: torch.Tensor, image_feats: torch.Tensor,
                  text_pids: torch.Tensor, image_pids: torch.Tensor,
                  topk: Sequence[int] = (1, 5, 10),
                  chunk_size: int = 1024) -> Dict[str, float]:
    """Image-to-text retrieval: every image (I, D) queries the captions (T, D).

    Same metrics, tie rule and chunking as :func:`retrieval_metrics`, with the roles swapped
    (ties are ordered by increasing caption index).
    """
    return retrieval_metrics(image_feats, text_feats, image_pids, text_pids,
                             topk=topk, chunk_size=chunk_size)
