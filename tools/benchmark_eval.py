#!/usr/bin/env python
"""Benchmark the text-to-image evaluator at ICFG-PEDES test scale (19,848 x 19,848, 512-d, 1,000 ids).

Variants, all on the same synthetic features in one run:
  (a) ``retrieval_metrics`` (chunked, no sort of the score matrix);
  (b) a straightforward full-sort implementation written here: the full Q x G score matrix,
      a stable descending argsort of every row, metrics from the sorted positive mask;
  (c) the similarity matrix product ``q @ g.T`` alone.

Features: 1,000 unit-norm id centres; every gallery image gets an id, every query (caption)
the id of a gallery image (a permutation, as in ICFG-PEDES, one caption per image); a query is
normalise(centre + noise * N(0, I/D)) and a gallery image normalise(centre + gallery_noise *
N(0, I/D)). Calibration: the defaults (--noise 5.3, --gallery-noise 1.05: noisy captions,
tighter images) were chosen so that the metrics resemble a real trained model on ICFG-PEDES
(IRRA reports Rank-1 63.5, mAP 38.1, mINP 7.9); on 3,072 queries x the full gallery they give
Rank-1 62.0, mAP 36.0, mINP 6.1, with about 10% of the items scoring above a query's lowest
positive. ``--noise 0`` replaces the features by pure random ones with no id structure, the
hard case for (a), whose cost grows with the number of items scoring above a query's lowest
positive (report both).

Memory method: torch's CPU allocations are invisible to tracemalloc, so each variant runs in a
fresh Python subprocess which loads the saved features, records its resident set size (RSS,
from /proc/self/statm) and then reports the peak RSS of the process (getrusage ru_maxrss, which
counts every allocation that was touched, torch's included). The figure printed is the peak
minus the RSS before the variant ran, i.e. the extra memory the variant needed. Time is the
wall time of the variant call alone (perf_counter), with ``--threads`` torch threads.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

# Run from a checkout without installing: the repository root holds unipt_plugin/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_features(args):
    gen = torch.Generator().manual_seed(args.seed)
    gallery_pids = torch.randint(0, args.ids, (args.gallery,), generator=gen)
    query_pids = gallery_pids[torch.randint(0, args.gallery, (args.queries,), generator=gen)]
    if args.queries == args.gallery:
        query_pids = gallery_pids[torch.randperm(args.gallery, generator=gen)]
    if args.noise > 0:
        centres = torch.nn.functional.normalize(torch.randn(args.ids, args.dim, generator=gen), dim=1)

        def sample(pids, scale):
            noise = torch.randn(len(pids), args.dim, generator=gen) * (scale / args.dim ** 0.5)
            return torch.nn.functional.normalize(centres[pids] + noise, dim=1)
    else:
        def sample(pids, scale):
            return torch.nn.functional.normalize(torch.randn(len(pids), args.dim, generator=gen), dim=1)
    return (sample(query_pids, args.noise), sample(gallery_pids, args.gallery_noise),
            query_pids, gallery_pids)


def full_sort_metrics(q, g, qp, gp, topk=(1, 5, 10), block=2048):
    """(b): full score matrix, stable argsort per row, metrics from the sorted positive mask."""
    scores = q @ g.T  # (Q, G)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)  # (Q, G) int64
    del scores
    hits = torch.zeros(len(topk), dtype=torch.float64)
    ap, inp, kept = [], [], 0
    for begin in range(0, q.shape[0], block):
        matches = gp[order[begin:begin + block]] == qp[begin:begin + block, None]  # (b, G)
        npos = matches.sum(1)
        has = npos > 0
        matches, npos = matches[has], npos[has].double()
        kept += int(has.sum())
        rank = torch.arange(1, g.shape[0] + 1, dtype=torch.float64)
        cum = matches.cumsum(1).double()
        ap.append((cum / rank * matches).sum(1) / npos)
        last = (matches * torch.arange(1, g.shape[0] + 1)).amax(1).double()
        inp.append(npos / last)
        first = matches.double().argmax(1) + 1
        hits += torch.tensor([(first <= k).sum().item() for k in topk], dtype=torch.float64)
    out = {f"Rank-{k}": 100.0 * h / kept for k, h in zip(topk, hits.tolist())}
    out["mAP"] = 100.0 * float(torch.cat(ap).sum()) / kept
    out["mINP"] = 100.0 * float(torch.cat(inp).sum()) / kept
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(variant: str, path: str, threads: int, chunk: int) -> None:
    torch.set_num_threads(threads)
    q, g, qp, gp = torch.load(path, weights_only=True)
    import unipt_plugin  # noqa: F401
    from unipt_plugin.evaluation.retrieval_metrics import retrieval_metrics
    torch.mm(q[:64], g[:64].T)  # warm up BLAS threads
    before = rss_bytes()
    start = time.perf_counter()
    if variant == "a":
        metrics = retrieval_metrics(q, g, qp, gp, chunk_size=chunk)
    elif variant == "b":
        metrics = full_sort_metrics(q, g, qp, gp)
    else:
        scores = q @ g.T
        metrics = {"checksum": float(scores[0, 0])}
        del scores
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"seconds": seconds, "peak_extra_bytes": max(0, peak - before),
                      "metrics": metrics}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=19848, help="Q (default: ICFG-PEDES test)")
    parser.add_argument("--gallery", type=int, default=19848, help="G (default: ICFG-PEDES test)")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension D")
    parser.add_argument("--ids", type=int, default=1000, help="number of person ids")
    parser.add_argument("--noise", type=float, default=5.3,
                        help="query (caption) noise around the id centre; default calibrated "
                             "to IRRA-like ICFG-PEDES metrics; 0 = pure random features")
    parser.add_argument("--gallery-noise", type=float, default=1.05,
                        help="gallery (image) noise around the id centre (default calibrated)")
    parser.add_argument("--chunk", type=int, default=1024, help="queries per chunk for (a)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per variant")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.threads, args.chunk)
        return

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "features.pt")
        torch.save(make_features(args), path)
        runs = {}
        for variant in ("c", "a", "b"):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, path,
                   "--threads", str(args.threads), "--chunk", str(args.chunk)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"variant ({variant}) failed:\n{proc.stderr}")
            runs[variant] = json.loads(proc.stdout.strip().splitlines()[-1])

    a, b, c = runs["a"], runs["b"], runs["c"]
    gib = 1024 ** 3
    print(f"Q={args.queries} G={args.gallery} D={args.dim} ids={args.ids} noise={args.noise} "
          f"gallery_noise={args.gallery_noise} "
          f"chunk={args.chunk} threads={args.threads} seed={args.seed}")
    print("metrics (a): " + ", ".join(f"{k}={v:.4f}" for k, v in a["metrics"].items()))
    mismatch = {k: (a["metrics"][k], b["metrics"][k]) for k in a["metrics"]
                if abs(a["metrics"][k] - b["metrics"][k]) > 1e-6}
    print(f"(a) and (b) agree on all metrics: {not mismatch}" + (f" {mismatch}" if mismatch else ""))
    print(f"{'variant':<34}{'time (s)':>10}{'peak extra mem (GiB)':>22}")
    for name, key in (("(a) evaluator (chunked, no sort)", "a"), ("(b) full sort", "b"),
                      ("(c) matrix product alone", "c")):
        print(f"{name:<34}{runs[key]['seconds']:>10.2f}{runs[key]['peak_extra_bytes'] / gib:>22.3f}")
    speedup = b["seconds"] / a["seconds"]
    mem_ratio = a["peak_extra_bytes"] / max(1, b["peak_extra_bytes"])
    over_mm = a["seconds"] / c["seconds"]
    print(f"b/a time   = {speedup:6.2f}  (target >= 5):    {'MET' if speedup >= 5 else 'MISSED'}")
    print(f"a/b memory = {mem_ratio:6.3f}  (target <= 0.25): {'MET' if mem_ratio <= 0.25 else 'MISSED'}")
    print(f"a/c time   = {over_mm:6.2f}  (target <= 2):    {'MET' if over_mm <= 2 else 'MISSED'}")
    if mismatch:
        sys.exit(1)


if __name__ == "__main__":
    main()
