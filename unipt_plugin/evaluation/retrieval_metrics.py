"""Exact cross-modal retrieval metrics (CMC Rank-k, mAP, mINP) without sorting the score matrix.

Definitions (docs/evaluation.md, Metrics), for one query with ``P`` positives ranked ``r_1 < ... < r_P``
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
``chunk_size`` at a time (``S = q_chunk @ g.T``, float32, into one reused buffer). Fast path
(:func:`_fast_ranks`): only items scoring at least the row's lowest positive (the candidates)
can rank before a positive. A coarse histogram of the candidates (``int(score * 2^e - lo *
2^e)``, monotone in the score, one ``torch.bincount``) counts the items in bins above each
positive's bin; the few candidates that share a bin with a positive are located among the row's
sorted positive scores (as order-preserving integer keys, each with the key of the next float
up) by one ``torch.searchsorted`` and counted with one ``torch.bincount``, giving
``#{score > t}`` and ``#{score == t}`` for every positive score ``t``. When only the positive
itself scores ``t``, its rank is ``#{score > t} + 1``. Rows where an exact tie touches a
positive (rare on real features) are recomputed by :func:`_exact_key_ranks`: every (score,
index) pair becomes one 64-bit key that grows with the score and, among equal scores, with
decreasing index, so the tie rule holds by construction.

Device: everything runs on the query features' device (the other inputs are moved there) with
torch operations only; the ranks (integers) come back to the CPU, where the metrics are summed
in float64 in query order, so the floats returned depend neither on the device nor on the
chunking for the same scores. On the CPU, W = ``torch.get_num_threads()`` workers rank blocks
of chunk / W queries side by side, each with single-threaded torch operations.
"""
from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Sequence

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
        # The extremes propagate NaN and reach +-inf: one pass, no (N, D) temporary.
        if feats.is_floating_point() and feats.numel() and not bool(
                torch.isfinite(torch.stack(torch.aminmax(feats))).all()):
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
    device = pos_idx.device
    row_ids = torch.arange(c, dtype=torch.int64, device=device)[:, None]
    pos_keys = (_score_keys(pos_scores) << score_shift) | (rev - pos_idx)
    # Padding gets the largest key of its row so it sorts last and no item passes it.
    pos_keys = torch.where(valid, pos_keys, torch.full_like(pos_keys, (1 << row_shift) - 1))
    pos_keys = torch.sort(pos_keys, dim=1).values  # ascending: worst positive first

    if num_candidates * _DENSE_FRACTION > c * num_gallery:
        # Most items are candidates: locate every item in its own row's keys (batched search).
        del candidate_mask
        keys = _score_keys(scores) << score_shift
        del scores
        keys |= rev - torch.arange(num_gallery, dtype=torch.int64, device=device)
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
    take = (npos[:, None] - 1 - torch.arange(num_pos, device=device)[None, :]) % num_pos
    return ranks_ascending_key.gather(1, take)


# Bits of a score key (0 .. 2^32, the top value for "just above +inf") inside a (row, score) key.
_ROW_SHIFT = 33
_PAD_KEY = (1 << _ROW_SHIFT) - 1
# CPU: at most one worker per _MIN_CPU_ROWS queries of a chunk (see retrieval_metrics).
_MIN_CPU_ROWS = 128
# Bins per row of the fast path's coarse histogram (about; at most twice as many).
_COARSE_BINS = 2048


def _coarse_scale(lo: float, hi: float) -> float:
    """Power of two 2^e that spreads [lo, hi] over about _COARSE_BINS bins, with
    max(|lo|, |hi|) * 2^e <= 2^60 (no overflow in float32 or int64)."""
    if not hi > lo:
        return 1.0
    e = math.floor(math.log2(_COARSE_BINS / (hi - lo)))
    top = max(abs(lo), abs(hi))
    if top > 0:
        e = min(e, 60 - math.ceil(math.log2(top)))
    return math.ldexp(1.0, e)


def _coarse_bins(scores: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    """int64 coarse bins ``int(score * scale - offset)`` (float32 steps; >= 0 for scores >= lo)."""
    return torch.mul(scores, scale).sub_(offset).to(torch.int64)


def _suffix_sum(x: torch.Tensor) -> torch.Tensor:
    """(c, n) -> (c, n): out[:, k] = x[:, k:].sum(1)."""
    return x.flip(1).cumsum(1).flip(1)


def _fast_ranks(scores: torch.Tensor, pos_idx: torch.Tensor, valid: torch.Tensor,
                workspace: Optional["_Workspace"] = None):
    """Ranks of the positives of a chunk from score comparisons only (no gallery index).

    scores: (c, G) float32; pos_idx: (c, P) gallery indices of the positives (padded);
    valid: (c, P) bool, False on padding (every row has at least one True); workspace:
    optional buffers (at least c rows) for the candidate mask and indices, reused by the
    next block.

    Only the candidates (items scoring at least the row's lowest positive) can rank before a
    positive. Let ``key`` be the order-preserving integer form of a float32 (``key(t) + 1`` is
    the key of the next float up) and ``t_0 < ... < t_{n-1}`` a row's positive scores.

    1. Coarse count: every candidate falls in one of about _COARSE_BINS bins per row,
       ``int(score * 2^e - lo * 2^e)`` (one power of two and one ``lo`` for the chunk), counted
       with one ``bincount``; bins never decrease with the score, so a cumulative sum gives the
       items in bins above the bin ``B_k`` of ``t_k``.
    2. Fine count, for the few candidates that share a bin with some positive (found through
       a (row, bin) flag table): located among the row's boundaries ``key(t_k)``,
       ``key(t_k) + 1`` by one ``searchsorted`` over all rows' boundaries (row id in the high
       bits) and counted with one ``bincount``: bucket ``2k + 1`` holds the items scoring
       exactly ``t_k``, buckets above ``2k + 1`` those scoring more.

    ``#{score > t_k}`` = items in bins above ``B_k`` + items of bin ``B_k`` scoring more than
    ``t_k``. When every ``t_k`` is held by its positive alone, the rank is
    ``#{score > t_k} + 1`` and the tie rule never applies; rows where some score equals a
    positive's score (another item, or two positives with the same score) are flagged for
    :func:`_exact_key_ranks`.

    Returns ``(ranks, needs_exact)``: (c, P) int64 ranks, ascending along P for the valid
    entries with padding at the end (meaningless where ``needs_exact``), and (c,) bool.
    """
    c, num_pos = pos_idx.shape
    num_gallery = scores.shape[1]
    device = scores.device
    pos_scores = scores.gather(1, pos_idx)  # (c, P)
    # Ascending positive scores, padding (+inf) last; their keys (padding: the row's top key).
    pos_sorted = torch.sort(torch.where(valid, pos_scores, torch.full_like(pos_scores, float("inf"))),
                            dim=1).values
    lowest = pos_sorted[:, 0]
    npos = valid.sum(1)
    slots = torch.arange(num_pos, device=device)
    valid_sorted = slots[None, :] < npos[:, None]
    pos_keys = torch.where(valid_sorted, _score_keys(pos_sorted), torch.full_like(pos_idx, _PAD_KEY))
    duplicate = ((pos_keys[:, 1:] == pos_keys[:, :-1]) & valid_sorted[:, 1:]).any(1)

    # Candidates: the only items that can score at least some positive's score.
    if workspace is None:
        mask = scores >= lowest[:, None]
        flat = torch.nonzero(mask.view(-1)).squeeze(1)
    else:
        mask = torch.ge(scores, lowest[:, None], out=workspace.mask[:c])
        flat = torch.nonzero(mask.view(-1), out=workspace.flat.resize_(0, 1)).squeeze(1)  # keeps its storage
    del mask
    cand = scores.take(flat)  # (N,) float32
    rows = flat.div_(num_gallery, rounding_mode="floor")  # (N,) row of each candidate

    # 1. Coarse bins: bin = int(score * 2^e - lo * 2^e) for the whole chunk (lo: the lowest
    # positive score, so every candidate's bin is >= 0). Both steps round monotonically, so
    # bins never decrease with the score; the positives' bins are computed the same way.
    # Infinite or NaN scores (products that overflow): one bin per row, i.e. every candidate
    # goes to the fine search.
    lo, hi = float(lowest.min()), float(cand.max())
    if math.isfinite(lo) and math.isfinite(hi) and not bool(torch.isnan(pos_sorted).any()):
        scale = _coarse_scale(lo, hi)
        offset = lo * scale  # exact: lo is a float32, scale a power of two
        bins = _coarse_bins(cand, scale, offset)
        num_bins = int(_coarse_bins(cand.new_tensor([hi]), scale, offset)) + 1
        pos_bin = _coarse_bins(pos_sorted.clamp(max=hi), scale, offset)
    else:
        bins, num_bins, pos_bin = torch.zeros_like(rows), 1, torch.zeros_like(pos_keys)
    bins.add_(rows, alpha=num_bins)  # row * num_bins + bin (int64)
    hist = torch.bincount(bins, minlength=c * num_bins).view(c, num_bins)
    cum = hist.cumsum(1)
    pos_bin = torch.where(valid_sorted, pos_bin, torch.zeros_like(pos_bin))  # (c, P), non-decreasing along P
    coarse_above = cum[:, -1:] - cum.gather(1, pos_bin)  # items in bins above B_k
    # Items of the positive bins above B_k (each distinct bin once): already in coarse_above,
    # and also counted by the fine search below; subtracted once.
    first = torch.ones_like(valid_sorted)
    first[:, 1:] = pos_bin[:, 1:] != pos_bin[:, :-1]
    in_bin = torch.where(first & valid_sorted, hist.gather(1, pos_bin), torch.zeros_like(pos_bin))
    pos_bins_above = torch.zeros_like(pos_bin)
    pos_bins_above[:, :-1] = _suffix_sum(in_bin)[:, 1:]
    del cum, hist

    # 2. Fine search of the candidates in positive bins (flag table over (row, bin)).
    flags = torch.zeros(c * num_bins, dtype=torch.bool, device=device)
    row_ids = torch.arange(c, dtype=torch.int64, device=device)
    flags[(pos_bin + row_ids[:, None] * num_bins)[valid_sorted]] = True
    sel = torch.nonzero(flags.take(bins)).squeeze(1)
    del bins, flags
    sel_rows = rows[sel]
    sel_keys = _score_keys(cand[sel]) | (sel_rows << _ROW_SHIFT)
    del cand, rows, sel
    # Boundaries key(t_k), key(t_k) + 1 per row; cummax keeps rows with duplicates sorted
    # (they are flagged anyway); padding stays at the row's top key.
    bounds = torch.stack((pos_keys, (pos_keys + 1).clamp_(max=_PAD_KEY)), dim=2).view(c, 2 * num_pos)
    bounds = torch.cummax(bounds, dim=1).values
    bounds = (bounds | (row_ids[:, None] << _ROW_SHIFT)).view(-1)
    # Global position among all boundaries = row * 2P + local bucket; bin = row * (2P+1) + bucket.
    fine_bins = torch.searchsorted(bounds, sel_keys, right=True)
    fine_bins += sel_rows
    fine = torch.bincount(fine_bins, minlength=c * (2 * num_pos + 1)).view(c, 2 * num_pos + 1)
    equal = fine[:, 1::2]  # (c, P): items scoring exactly t_k
    fine_above = _suffix_sum(fine)[:, 2::2]  # (c, P): positive-bin items scoring more than t_k
    above = coarse_above + fine_above - pos_bins_above  # (c, P): items scoring more than t_k
    needs_exact = duplicate | ((equal != 1) & valid_sorted).any(1)
    # Reverse so that the best positive comes first, padding last (as _exact_key_ranks).
    take = (npos[:, None] - 1 - slots[None, :]) % num_pos
    return (above + 1).gather(1, take), needs_exact


class _Workspace:
    """Score and candidate-mask buffers of one (rows, G) shape and the candidates' index
    buffer, reused by every block of one worker.

    Fresh allocations of this size are served by the OS as new pages on the CPU; writing into
    the same buffers avoids paying for them again at every block.
    """

    def __init__(self, rows: int, num_gallery: int, device: torch.device) -> None:
        self.scores = torch.empty(rows, num_gallery, dtype=torch.float32, device=device)
        self.mask = torch.empty(rows, num_gallery, dtype=torch.bool, device=device)
        self.flat = torch.empty(0, 1, dtype=torch.int64, device=device)  # grows as needed


def _chunk_ranks(q: torch.Tensor, g_t: torch.Tensor, pos_idx: torch.Tensor,
                 valid: torch.Tensor, idx_bits: int, num_gallery: int,
                 workspace: Optional[_Workspace] = None) -> torch.Tensor:
    """1-based ranks of the positives of a chunk of queries (exact, tie rule included).

    q: (c, D); g_t: (D, G); pos_idx, valid: (c, P) as in :func:`_fast_ranks`; workspace:
    buffers of at least c rows (optional). All on one device.
    Returns (c, P) int64 ranks, ascending along P for the valid entries, padding at the end.
    """
    c = q.shape[0]
    if workspace is None:
        scores = torch.mm(q, g_t)  # (c, G)
    else:
        scores = torch.mm(q, g_t, out=workspace.scores[:c])
    ranks, needs_exact = _fast_ranks(scores, pos_idx, valid, workspace)
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
    device = query_feats.device
    q_all = query_feats.detach().to(device=device, dtype=torch.float32).contiguous()
    g_t = gallery_feats.detach().to(device=device, dtype=torch.float32).t()
    qp = query_pids.detach().to(device=device, dtype=torch.int64)
    gp = gallery_pids.detach().to(device=device, dtype=torch.int64)
    num_query, num_gallery = q_all.shape[0], g_t.shape[1]

    idx_bits = max(1, (num_gallery - 1).bit_length())
    if idx_bits > 30:
        raise ValueError(f"gallery too large for 64-bit rank keys: {num_gallery} items")
    # Row ids share the 64-bit key with 32 score bits and idx_bits index bits.
    max_rows = 1 << (31 - idx_bits)
    chunk = min(int(chunk_size), max_rows, num_query)

    order, start, count = _positive_lists(qp, gp)
    count_cpu = count.cpu()
    no_positive = int((count_cpu == 0).sum())
    if no_positive == num_query:
        raise ValueError(f"none of the {num_query} queries has a positive (same id) among the "
                         f"{num_gallery} gallery items: check the query and gallery ids")
    if no_positive:
        logger.warning("%d of %d queries have no positive in the gallery and are left out of "
                       "the metrics", no_positive, num_query)

    # Blocks of queries: the whole chunk on an accelerator. On the CPU, W workers (W = torch's
    # thread count, at most one per _MIN_CPU_ROWS rows of the chunk) rank blocks of chunk / W
    # queries side by side, each with torch's threads divided among them (one each on a small
    # machine): the W blocks in flight hold about chunk x G scores, as one chunk would, and
    # torch has no parallel region left in which one thread waits for another (hundreds per
    # chunk otherwise, each waiting for a descheduled thread on a busy machine).
    threads = torch.get_num_threads()
    workers = max(1, min(threads, chunk // _MIN_CPU_ROWS)) if device.type == "cpu" else 1
    rows = -(-chunk // workers)
    blocks = []
    for begin in range(0, num_query, rows):
        end = min(begin + rows, num_query)
        kept_cpu = torch.nonzero(count_cpu[begin:end] > 0).squeeze(1) + begin
        if kept_cpu.numel():
            blocks.append((begin, end, kept_cpu))
    workers = min(workers, len(blocks))
    local = threading.local()

    def rank_block(block):
        """(kept query indices (c,), their (c, P) int64 ranks on the CPU) for one block."""
        begin, end, kept_cpu = block
        workspace = getattr(local, "workspace", None)
        if workspace is None:
            workspace = local.workspace = _Workspace(rows, num_gallery, device)
        npos_cpu = count_cpu[kept_cpu]
        num_pos = int(npos_cpu.max())
        kept = kept_cpu.to(device)
        npos = npos_cpu.to(device)
        slots = torch.arange(num_pos, device=device)[None, :]
        valid = slots < npos[:, None]
        flat = (start[kept][:, None] + torch.minimum(slots, npos[:, None] - 1))
        pos_idx = order[flat]  # (c, P) positives in increasing gallery index, padding repeats
        q = q_all[begin:end] if kept_cpu.numel() == end - begin else q_all[kept]
        return kept_cpu, _chunk_ranks(q, g_t, pos_idx, valid, idx_bits, num_gallery, workspace).cpu()

    # Ranks are integers computed on ``device``; the metrics are accumulated from them on the
    # CPU in float64, in query order, so the floats returned depend neither on the device nor
    # on the blocks.
    ks = [int(k) for k in topk]
    hits = torch.zeros(len(ks), dtype=torch.float64, device="cpu")
    ap_parts, inp_parts = [], []  # per-query values, summed once at the end
    kept_total = 0
    k_tensor = torch.tensor(ks, dtype=torch.int64, device="cpu")
    pool = ThreadPoolExecutor(workers, thread_name_prefix="retrieval_metrics") if workers > 1 else None
    try:
        if pool is not None:
            torch.set_num_threads(max(1, threads // workers))  # restored below
        ranked = pool.map(rank_block, blocks) if pool else map(rank_block, blocks)
        for kept_cpu, ranks in ranked:
            npos_cpu = count_cpu[kept_cpu]
            slots_cpu = torch.arange(ranks.shape[1], device="cpu")[None, :]
            valid_cpu = slots_cpu < npos_cpu[:, None]
            first = ranks[:, 0]
            hits += (first[:, None] <= k_tensor[None, :]).sum(0).to(torch.float64)
            position = (slots_cpu + 1).to(torch.float64)
            precision = torch.where(valid_cpu, position / ranks.to(torch.float64),
                                    torch.zeros((), dtype=torch.float64, device="cpu"))
            # Left-to-right running sum: each query's value depends on its own ranks only
            # (not on the padding width of its block).
            ap_sum = precision.cumsum(1).gather(1, (npos_cpu - 1)[:, None]).squeeze(1)
            ap_parts.append(ap_sum / npos_cpu.to(torch.float64))
            last = ranks.gather(1, (npos_cpu - 1)[:, None]).squeeze(1)
            inp_parts.append(npos_cpu.to(torch.float64) / last.to(torch.float64))
            kept_total += kept_cpu.numel()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
            torch.set_num_threads(threads)

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
