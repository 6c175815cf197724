"""Retrieval metrics against a brute-force reference (plain loops, stable sort) and by hand."""
import logging

import pytest
import torch

import unipt_plugin  # noqa: F401
import importlib

rm_module = importlib.import_module("unipt_plugin.evaluation.retrieval_metrics")
from unipt_plugin.evaluation.retrieval_metrics import image_to_text, retrieval_metrics

TOPK = (1, 2, 5)


def brute_force(q, g, qp, gp, topk=TOPK):
    """Reference: per query, a stable descending sort of the scores, then the definitions."""
    return brute_force_scores(q.double() @ g.double().T, qp, gp, topk)  # exact for these inputs


def brute_force_scores(scores, qp, gp, topk=TOPK):
    """The reference on a given (Q, G) score matrix."""
    scores = scores.tolist()
    qp, gp = qp.tolist(), gp.tolist()
    hits = {k: 0 for k in topk}
    ap_sum = inp_sum = 0.0
    kept = 0
    for i, row in enumerate(scores):
        order = sorted(range(len(gp)), key=lambda j: -row[j])  # Python's sort is stable
        ranks = [r + 1 for r, j in enumerate(order) if gp[j] == qp[i]]
        if not ranks:
            continue
        kept += 1
        for k in topk:
            hits[k] += ranks[0] <= k
        ap_sum += sum((n + 1) / r for n, r in enumerate(ranks)) / len(ranks)
        inp_sum += len(ranks) / ranks[-1]
    out = {f"Rank-{k}": 100.0 * hits[k] / kept for k in topk}
    out["mAP"] = 100.0 * ap_sum / kept
    out["mINP"] = 100.0 * inp_sum / kept
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-9), key


@pytest.fixture(params=["auto", "dense", "sparse"])
def path(request, monkeypatch):
    """Run each case through both ranking paths (all items / candidates only)."""
    if request.param == "dense":
        monkeypatch.setattr(rm_module, "_DENSE_FRACTION", 10 ** 9)
    elif request.param == "sparse":
        monkeypatch.setattr(rm_module, "_DENSE_FRACTION", 0)
    return request.param


@pytest.mark.parametrize("seed", range(3))
def test_random_float_features_match_brute_force(seed, path):
    gen = torch.Generator().manual_seed(seed)
    q, g = torch.randn(23, 6, generator=gen), torch.randn(41, 6, generator=gen)
    qp, gp = torch.randint(0, 6, (23,), generator=gen), torch.randint(0, 6, (41,), generator=gen)
    assert_same(retrieval_metrics(q, g, qp, gp, topk=TOPK, chunk_size=5),
                brute_force(q, g, qp, gp))


@pytest.mark.parametrize("seed", range(3))
def test_integer_features_with_many_exact_ties(seed, path):
    gen = torch.Generator().manual_seed(100 + seed)
    q = torch.randint(-1, 2, (30, 3), generator=gen).float()
    g = torch.randint(-1, 2, (50, 3), generator=gen).float()
    qp, gp = torch.randint(0, 4, (30,), generator=gen), torch.randint(0, 4, (50,), generator=gen)
    scores = q @ g.T
    assert (scores.unsqueeze(2) == scores.unsqueeze(1)).sum() > 30 * 50 * 5  # ties everywhere
    assert_same(retrieval_metrics(q, g, qp, gp, topk=TOPK, chunk_size=7),
                brute_force(q, g, qp, gp))


def test_one_positive_and_many_positives(path):
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(40, 5, generator=gen)
    gp = torch.tensor([0] + [1] * 30 + list(range(2, 11)))  # id 0: one image, id 1: thirty
    q = torch.randn(6, 5, generator=gen)
    qp = torch.tensor([0, 1, 0, 1, 5, 1])
    assert_same(retrieval_metrics(q, g, qp, gp, topk=TOPK), brute_force(q, g, qp, gp))


def test_positives_all_ranked_last(path):
    # Gallery scores along a line; the query's two positives have the lowest scores.
    g = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0], [0.5]])
    gp = torch.tensor([1, 2, 3, 4, 0, 0])
    q, qp = torch.tensor([[1.0]]), torch.tensor([0])
    out = retrieval_metrics(q, g, qp, gp, topk=(1, 5, 6))
    # ranks 5 and 6: AP = (1/5 + 2/6) / 2, INP = 2/6.
    assert out["Rank-1"] == 0.0 and out["Rank-5"] == 100.0 and out["Rank-6"] == 100.0
    assert out["mAP"] == pytest.approx(100 * (1 / 5 + 2 / 6) / 2)
    assert out["mINP"] == pytest.approx(100 * 2 / 6)
    assert_same(out, brute_force(q, g, qp, gp, topk=(1, 5, 6)))


def test_hand_computed_example_with_tie_rule(path):
    # 1-d features, score = q * g. Gallery scores for q=1: [3, 2, 2, 1, 2].
    g = torch.tensor([[3.0], [2.0], [2.0], [1.0], [2.0]])
    gp = torch.tensor([7, 8, 9, 9, 8])
    q = torch.tensor([[1.0], [1.0], [-1.0]])
    qp = torch.tensor([9, 8, 7])
    # Order for q=1 (ties by smaller index first): indices 0, 1, 2, 4, 3.
    #   query 0 (id 9): positives 2, 3 -> ranks 3, 5: AP = (1/3 + 2/5)/2 = 11/30, INP = 2/5, R1 0
    #   query 1 (id 8): positives 1, 4 -> ranks 2, 4: AP = (1/2 + 2/4)/2 = 1/2, INP = 2/4, R1 0
    # Order for q=-1: scores [-3,-2,-2,-1,-2] -> indices 3, 1, 2, 4, 0.
    #   query 2 (id 7): positive 0 -> rank 5: AP = 1/5, INP = 1/5, R1 0, R5 1
    out = retrieval_metrics(q, g, qp, gp, topk=(1, 2, 3, 5), chunk_size=2)
    assert out["Rank-1"] == 0.0
    assert out["Rank-2"] == pytest.approx(100 / 3)
    assert out["Rank-3"] == pytest.approx(200 / 3)
    assert out["Rank-5"] == pytest.approx(100.0)
    assert out["mAP"] == pytest.approx(100 * (11 / 30 + 1 / 2 + 1 / 5) / 3)
    assert out["mINP"] == pytest.approx(100 * (2 / 5 + 2 / 4 + 1 / 5) / 3)


def test_chunk_sizes_give_identical_results():
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(-2, 3, (17, 4), generator=gen).float()
    g = torch.randint(-2, 3, (29, 4), generator=gen).float()
    qp, gp = torch.randint(0, 5, (17,), generator=gen), torch.randint(0, 5, (29,), generator=gen)
    results = [retrieval_metrics(q, g, qp, gp, topk=TOPK, chunk_size=c) for c in (1, 3, 100)]
    assert results[0] == results[1] == results[2]


def test_queries_without_positive_are_excluded(caplog):
    gen = torch.Generator().manual_seed(4)
    q, g = torch.randn(8, 4, generator=gen), torch.randn(12, 4, generator=gen)
    gp = torch.randint(0, 3, (12,), generator=gen)
    qp = torch.tensor([0, 1, 2, 0, 50, 51, 1, 2])  # ids 50, 51 absent from the gallery
    with caplog.at_level(logging.WARNING):
        out = retrieval_metrics(q, g, qp, gp, topk=TOPK)
    assert "2 of 8 queries have no positive" in caplog.text
    keep = torch.tensor([0, 1, 2, 3, 6, 7])
    assert_same(out, retrieval_metrics(q[keep], g, qp[keep], gp, topk=TOPK))
    assert_same(out, brute_force(q, g, qp, gp))


def test_no_query_with_positive_raises():
    with pytest.raises(ValueError, match="none of the 3 queries has a positive"):
        retrieval_metrics(torch.randn(3, 2), torch.randn(4, 2), torch.tensor([5, 6, 7]),
                          torch.tensor([0, 1, 2, 3]))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        retrieval_metrics(torch.randn(3, 2), torch.randn(4, 5), torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="query_pids must have shape"):
        retrieval_metrics(torch.randn(3, 2), torch.randn(4, 2), torch.zeros(2), torch.zeros(4))
    with pytest.raises(ValueError, match="NaN or infinite"):
        retrieval_metrics(torch.full((3, 2), float("nan")), torch.randn(4, 2),
                          torch.zeros(3), torch.zeros(4))


def test_image_to_text_swaps_roles():
    gen = torch.Generator().manual_seed(5)
    text, image = torch.randn(20, 4, generator=gen), torch.randn(9, 4, generator=gen)
    tp, ip = torch.randint(0, 4, (20,), generator=gen), torch.randint(0, 4, (9,), generator=gen)
    out = image_to_text(text, image, tp, ip, topk=TOPK, chunk_size=4)
    assert_same(out, brute_force(image, text, ip, tp))
    assert out != retrieval_metrics(text, image, tp, ip, topk=TOPK)


def _chunk_inputs(q, g, qp, gp):
    """(scores, pos_idx, valid) for _fast_ranks / _exact_key_ranks, every query kept."""
    scores = q @ g.T
    pos = [torch.nonzero(gp == p).squeeze(1) for p in qp.tolist()]
    width = max(len(x) for x in pos)
    pos_idx = torch.stack([torch.cat([x, x[-1:].repeat(width - len(x))]) for x in pos])
    valid = torch.arange(width)[None, :] < torch.tensor([len(x) for x in pos])[:, None]
    return scores, pos_idx, valid


def _brute_ranks(scores, pos_idx, valid):
    """Per row, the sorted 1-based ranks of the positives under the tie rule (stable sort)."""
    out = []
    for row, idx, ok in zip(scores.tolist(), pos_idx.tolist(), valid.tolist()):
        order = sorted(range(len(row)), key=lambda j: -row[j])
        rank_of = {j: r + 1 for r, j in enumerate(order)}
        out.append(sorted(rank_of[j] for j, v in zip(idx, ok) if v))
    return out


def test_fast_path_alone_on_tie_free_rows():
    gen = torch.Generator().manual_seed(11)
    q, g = torch.randn(9, 8, generator=gen), torch.randn(60, 8, generator=gen)
    qp = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 2])
    gp = torch.cat([torch.tensor([0, 1, 2, 3]), torch.randint(0, 4, (56,), generator=gen)])
    scores, pos_idx, valid = _chunk_inputs(q, g, qp, gp)
    ranks, needs_exact = rm_module._fast_ranks(scores, pos_idx, valid)
    assert not needs_exact.any()  # random floats: no exact ties, the fast path decides alone
    expected = _brute_ranks(scores, pos_idx, valid)
    for i, exp in enumerate(expected):
        assert ranks[i, :len(exp)].tolist() == exp


def test_fast_path_flags_every_row_with_a_tie():
    # Row 0: another item equals a positive's score; row 1: two positives share a score;
    # row 2: -0.0 and +0.0 (equal scores); row 3: adjacent floats (no tie, must not be flagged).
    up = torch.nextafter(torch.tensor(0.25), torch.tensor(1.0)).item()
    scores = torch.stack([
        torch.tensor([0.9, 0.5, 0.25, 0.5, 0.1]),    # positives 1, 4; item 3 ties item 1
        torch.tensor([0.9, 0.5, 0.25, 0.5, 0.1]),    # positives 1, 3 (same score)
        torch.tensor([0.9, -0.0, 0.0, 0.3, 0.1]),    # positive 2 (+0.0) ties item 1 (-0.0)
        torch.tensor([0.9, up, 0.25, 0.5, 0.1]),     # positive 2 at 0.25, item 1 just above
    ])
    pos_idx = torch.tensor([[1, 4], [1, 3], [2, 2], [2, 2]])
    valid = torch.tensor([[True, True], [True, True], [True, False], [True, False]])
    ranks, needs_exact = rm_module._fast_ranks(scores, pos_idx, valid)
    assert needs_exact.tolist() == [True, True, True, False]
    assert ranks[3, 0].item() == 4  # 0.9, 0.5 and next-float-above-0.25 are strictly higher
    exact = rm_module._exact_key_ranks(scores.clone(), pos_idx, valid, 3, 5)
    for i, exp in enumerate(_brute_ranks(scores, pos_idx, valid)):
        assert exact[i, :len(exp)].tolist() == exp


@pytest.mark.parametrize("seed", range(2))
def test_chunk_mixing_tied_and_tie_free_rows(seed, path):
    # Float features for most queries, plus gallery duplicates so that some rows have exact
    # ties: the fast path settles the tie-free rows, the exact path the others.
    gen = torch.Generator().manual_seed(200 + seed)
    g = torch.randn(50, 6, generator=gen)
    gp = torch.randint(0, 5, (50,), generator=gen)
    gp[5], gp[6] = 0, 1
    g[30], gp[30] = g[5], 0  # a duplicate positive of id 0: two positives with equal scores
    g[31], gp[31] = g[6], 2  # a copy of an id-1 image under id 2: an item ties a positive
    q = torch.randn(19, 6, generator=gen)
    qp = torch.randint(0, 5, (19,), generator=gen)
    scores, pos_idx, valid = _chunk_inputs(q, g, qp, gp)
    _, needs_exact = rm_module._fast_ranks(scores, pos_idx, valid)
    assert 0 < int(needs_exact.sum()) < len(qp)  # both paths are exercised
    assert_same(retrieval_metrics(q, g, qp, gp, topk=TOPK, chunk_size=6),
                brute_force(q, g, qp, gp))


class _DeviceCheckedTorch:
    """torch, except that its tensor factories refuse calls without an explicit device=: what
    keeps retrieval_metrics on the inputs' device (checked here without a GPU)."""

    FACTORIES = {"arange", "zeros", "ones", "empty", "full", "tensor", "as_tensor", "rand", "randn",
                 "randint", "linspace", "eye"}

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        attr = getattr(torch, name)
        if name not in self.FACTORIES:
            return attr

        def factory(*args, **kwargs):
            if "device" not in kwargs:
                raise AssertionError(f"torch.{name} called without device=")
            self.calls.append(name)
            return attr(*args, **kwargs)

        return factory


def test_every_tensor_factory_names_its_device(monkeypatch, path):
    checked = _DeviceCheckedTorch()
    monkeypatch.setattr(rm_module, "torch", checked)
    gen = torch.Generator().manual_seed(9)
    q = torch.randint(-1, 2, (30, 3), generator=gen).float()  # exact ties: the exact path too
    g = torch.randint(-1, 2, (50, 3), generator=gen).float()
    qp, gp = torch.randint(0, 4, (30,), generator=gen), torch.randint(0, 4, (50,), generator=gen)
    out = retrieval_metrics(q, g, qp, gp, topk=TOPK, chunk_size=7)
    monkeypatch.undo()
    assert {"arange", "zeros", "empty"} <= set(checked.calls)
    assert_same(out, brute_force(q, g, qp, gp))


@pytest.mark.parametrize("bins", [1, 3, 2 ** 15])
def test_any_coarse_bin_width(bins, monkeypatch):
    """One bin per row (every candidate searched finely), a few wide bins shared by many items
    and positives, or very fine bins: same exact results."""
    monkeypatch.setattr(rm_module, "_COARSE_BINS", bins)
    gen = torch.Generator().manual_seed(12)
    q, g = torch.randn(21, 5, generator=gen), torch.randn(60, 5, generator=gen)
    qp, gp = torch.randint(0, 4, (21,), generator=gen), torch.randint(0, 4, (60,), generator=gen)
    assert_same(retrieval_metrics(q, g, qp, gp, topk=TOPK, chunk_size=8), brute_force(q, g, qp, gp))
    qi = torch.randint(-2, 3, (21, 3), generator=gen).float()
    gi = torch.randint(-2, 3, (60, 3), generator=gen).float()
    assert_same(retrieval_metrics(qi, gi, qp, gp, topk=TOPK, chunk_size=8), brute_force(qi, gi, qp, gp))


def test_negative_and_zero_scores_and_one_score_per_chunk(path):
    # All scores <= 0 in some rows, -0.0 and +0.0 among them, and a chunk where every
    # candidate has the same score (coarse range of zero width).
    g = torch.tensor([[-1.0, 0.0], [-0.5, 0.0], [0.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    gp = torch.tensor([0, 1, 0, 1, 2, 2])
    q = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-0.0, 0.0]])
    qp = torch.tensor([0, 1, 2, 1, 0])
    for chunk in (1, 2, 5):
        assert_same(retrieval_metrics(q, g, qp, gp, topk=TOPK, chunk_size=chunk), brute_force(q, g, qp, gp))


def test_scores_that_overflow_to_infinity(path):
    """Finite features whose products overflow float32 (+inf and -inf scores, ties among them):
    the metrics follow the float32 scores the function computes (reference: those scores,
    stable sort)."""
    gen = torch.Generator().manual_seed(13)
    q = torch.rand(9, 4, generator=gen) * 1e20 + 1e19
    big = torch.rand(6, 4, generator=gen) * 1e20 + 1e19
    g = torch.cat([big, -big, torch.randn(8, 4, generator=gen)])  # +inf, -inf, finite scores
    qp, gp = torch.randint(0, 3, (9,), generator=gen), torch.randint(0, 3, (20,), generator=gen)
    scores = q @ g.T
    assert torch.isinf(scores).any() and torch.isfinite(scores).any() and not torch.isnan(scores).any()
    assert_same(retrieval_metrics(q, g, qp, gp, topk=TOPK, chunk_size=4), brute_force_scores(scores, qp, gp))


def _dyadic(gen, rows, dim=16):
    """Features k / 4: products and sums are exact in float32 (and TF32) on every device."""
    return torch.randint(-8, 9, (rows, dim), generator=gen) / 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("chunk", [7, 128, 1024])
def test_cuda_equals_cpu_exactly(chunk, path, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what DETERMINISTIC mode sets
    gen = torch.Generator().manual_seed(14)
    q, g = _dyadic(gen, 700), _dyadic(gen, 900)
    qp = torch.randint(0, 60, (700,), generator=gen)
    gp = torch.randint(0, 60, (900,), generator=gen)
    cpu = retrieval_metrics(q, g, qp, gp, topk=TOPK, chunk_size=chunk)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # the project's DETERMINISTIC mode must work too
    try:
        cuda = retrieval_metrics(q.cuda(), g.cuda(), qp.cuda(), gp, topk=TOPK, chunk_size=chunk)
        i2t_cuda = image_to_text(q.cuda(), g.cuda(), qp, gp.cuda(), topk=TOPK, chunk_size=chunk)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert cuda == cpu
    assert i2t_cuda == image_to_text(q, g, qp, gp, topk=TOPK, chunk_size=chunk)
    if chunk == 7:
        assert_same(cpu, brute_force(q, g, qp, gp))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_memory_stays_within_the_chunk_bound():
    gen = torch.Generator().manual_seed(15)
    num, chunk = 16384, 128
    centres = torch.nn.functional.normalize(torch.randn(500, 64, generator=gen), dim=1)
    qp, gp = torch.randint(0, 500, (num,), generator=gen), torch.randint(0, 500, (num,), generator=gen)
    q = torch.nn.functional.normalize(centres[qp] + 0.3 * torch.randn(num, 64, generator=gen), dim=1)
    g = torch.nn.functional.normalize(centres[gp] + 0.2 * torch.randn(num, 64, generator=gen), dim=1)
    q, g, qp, gp = q.cuda(), g.cuda(), qp.cuda(), gp.cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    retrieval_metrics(q, g, qp, gp, chunk_size=chunk)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    full_matrix = num * num * 4
    assert extra < full_matrix / 8, (extra, full_matrix)


def test_cpu_workers_give_identical_results(monkeypatch, path):
    """Blocks ranked side by side by several CPU workers: the same floats as one worker, the
    brute-force values, and torch's thread count is restored."""
    gen = torch.Generator().manual_seed(16)
    q, g = torch.randn(47, 6, generator=gen), torch.randn(80, 6, generator=gen)
    q[5], q[30] = g[3], g[3]  # exact ties for a few rows: the exact path inside the workers
    qp, gp = torch.randint(0, 7, (47,), generator=gen), torch.randint(0, 7, (80,), generator=gen)
    monkeypatch.setattr(rm_module, "_MIN_CPU_ROWS", 1)
    pools = []

    class RecordingPool(rm_module.ThreadPoolExecutor):
        def __init__(self, workers, **kwargs):
            pools.append(workers)
            super().__init__(workers, **kwargs)

    monkeypatch.setattr(rm_module, "ThreadPoolExecutor", RecordingPool)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = retrieval_metrics(q, g, qp, gp, topk=TOPK, chunk_size=10)
        torch.set_num_threads(3)  # 3 workers of 4 rows per chunk of 10
        several = retrieval_metrics(q, g, qp, gp, topk=TOPK, chunk_size=10)
        assert torch.get_num_threads() == 3
        assert pools == [3]  # one worker per thread; the single-thread call used none
    finally:
        torch.set_num_threads(threads)
    assert several == one
    assert_same(several, brute_force(q, g, qp, gp))
