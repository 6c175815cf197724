#!/usr/bin/env python
"""Benchmark the text-to-image evaluator at ICFG-PEDES test scale (19,848 x 19,848, 1,000 ids) at
512-d (the global embedding) and 3,584-d (TEST_SCORE "sum": 512 + 6 x 512, the global and the six
PGU part embeddings scored by one inner product), on the CPU or on a CUDA device.

Variants, all on the same synthetic features in one run, each in a fresh subprocess:
  (a) the full evaluator: ``TextToImageEvaluator.process`` on every test batch (``--batch``
      rows, as the test loader yields them) and ``evaluate()``, i.e. ``retrieval_metrics``
      (chunked, no sort of the score matrix) on the features' device;
  (b) a straightforward full-sort implementation written here: the full Q x G score matrix,
      a stable descending argsort of every row, metrics from the sorted positive mask;
  (c) the similarity matrix product ``q @ g.T`` alone (one Q x G result);
  (d) for reference, the products the evaluator itself computes, alone: ``--chunk`` queries at
      a time into one reused (chunk x G) buffer; (a) / (d) is what ranking adds to them.
It checks (a) == (b) on every metric and prints, per dimension, the ratios measured in this
run against the targets: (a) / (c) time <= 1.2, (b) / (a) time >= 5, (a) / (b) memory <= 0.25.

Features: 1,000 unit-norm id centres; every gallery image gets an id, every query (caption)
the id of a gallery image (a permutation, as in ICFG-PEDES, one caption per image); a query is
normalise(centre + noise * N(0, I/D)) and a gallery image normalise(centre + gallery_noise *
N(0, I/D)). Calibration: the defaults (--noise 5.3, --gallery-noise 1.05: noisy captions,
tighter images) were chosen so that the metrics resemble a real trained model on ICFG-PEDES
(IRRA reports Rank-1 63.5, mAP 38.1, mINP 7.9); on 3,072 queries x the full gallery they give
Rank-1 62.0, mAP 36.0, mINP 6.1, with about 10% of the items scoring above a query's lowest
positive. The calibration holds at 512-d: features are drawn there and, for a larger D, mapped
to D dimensions by a random linear map with orthonormal columns, which keeps every inner product,
so 3,584-d has the same metrics (and the same candidates) as 512-d while its products cost
seven times more. (Drawn at 3,584-d directly, the same noise levels would give Rank-1 100.)
``--noise 0`` replaces the features by pure random ones with no id structure, the hard case for
(a), whose cost grows with the number of items scoring above a query's lowest positive.

Memory method. CPU: torch's CPU allocations are invisible to tracemalloc, so each variant runs
in a fresh Python subprocess which loads the saved features, records its resident set size
(RSS, from /proc/self/statm) and then reports the peak RSS of the process (getrusage
ru_maxrss, which counts every allocation that was touched, torch's included); the figure is
the peak minus the RSS before the variant ran. CUDA: ``torch.cuda.max_memory_allocated()``
minus the memory allocated before the variant. Time: the wall time of the variant alone
(perf_counter, with a CUDA synchronisation before and after), and the process's CPU time (user
+ system, all threads), which tells a busy shared machine apart from a slow variant.
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

TOPK = (1, 5, 10)
# The dimension the default noise levels are calibrated at (see the module docstring).
CALIBRATION_DIM = 512
TARGET_OVER_PRODUCT = 1.2
TARGET_SPEEDUP = 5.0
TARGET_MEMORY = 0.25


def make_features(args: argparse.Namespace, dim: int):
    """(query (Q, D), gallery (G, D), query ids (Q,), gallery ids (G,)) on the CPU.

    Drawn at min(D, CALIBRATION_DIM) dimensions; above, mapped to D by a random linear map
    with orthonormal columns, which keeps every inner product (so the scores, up to float32
    rounding, and the metrics) of the calibrated features while the product costs D.
    """
    gen = torch.Generator().manual_seed(args.seed)
    base = min(dim, CALIBRATION_DIM)
    gallery_pids = torch.randint(0, args.ids, (args.gallery,), generator=gen)
    query_pids = gallery_pids[torch.randint(0, args.gallery, (args.queries,), generator=gen)]
    if args.queries == args.gallery:
        query_pids = gallery_pids[torch.randperm(args.gallery, generator=gen)]
    if args.noise > 0:
        centres = torch.nn.functional.normalize(torch.randn(args.ids, base, generator=gen), dim=1)

        def sample(pids, scale):
            noise = torch.randn(len(pids), base, generator=gen) * (scale / base ** 0.5)
            return torch.nn.functional.normalize(centres[pids] + noise, dim=1)
    else:
        def sample(pids, scale):
            return torch.nn.functional.normalize(torch.randn(len(pids), base, generator=gen), dim=1)
    q, g = sample(query_pids, args.noise), sample(gallery_pids, args.gallery_noise)
    if dim > base:
        lift = torch.linalg.qr(torch.randn(dim, base, generator=gen, dtype=torch.float64)).Q  # (D, base)
        lift = lift.T.contiguous().to(torch.float32)  # (base, D), orthonormal rows
        q, g = q @ lift, g @ lift
    return q, g, query_pids, gallery_pids


def full_sort_metrics(q, g, qp, gp, topk=TOPK, block=2048):
    """(b): full score matrix, stable argsort per row, metrics from the sorted positive mask.

    q: (Q, D), g: (G, D) features, qp: (Q,), gp: (G,) ids, all on one device. Returns floats.
    """
    device = q.device
    scores = q @ g.T  # (Q, G)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)  # (Q, G) int64
    del scores
    hits = torch.zeros(len(topk), dtype=torch.float64, device=device)
    k_tensor = torch.tensor(topk, device=device)
    rank = torch.arange(1, g.shape[0] + 1, dtype=torch.float64, device=device)
    ap, inp, kept = [], [], 0
    for begin in range(0, q.shape[0], block):
        matches = gp[order[begin:begin + block]] == qp[begin:begin + block, None]  # (b, G)
        npos = matches.sum(1)
        has = npos > 0
        matches, npos = matches[has], npos[has].double()
        kept += int(has.sum())
        cum = matches.cumsum(1).double()
        ap.append((cum / rank * matches).sum(1) / npos)
        last = (matches * rank).amax(1)
        inp.append(npos / last)
        first = matches.double().argmax(1) + 1
        hits += (first[:, None] <= k_tensor[None, :]).sum(0).double()
    out = {f"Rank-{k}": 100.0 * h / kept for k, h in zip(topk, hits.tolist())}
    out["mAP"] = 100.0 * float(torch.cat(ap).sum()) / kept
    out["mINP"] = 100.0 * float(torch.cat(inp).sum()) / kept
    return out


def evaluator_batches(q, g, qp, gp, batch: int):
    """(inputs, outputs) test batches in loader order: captions, then images."""
    out = []
    for begin in range(0, q.shape[0], batch):
        n = min(batch, q.shape[0] - begin)
        out.append(({"text_ids": torch.zeros(n, 1, dtype=torch.long), "targets": qp[begin:begin + n]},
                    q[begin:begin + n]))
    for begin in range(0, g.shape[0], batch):
        n = min(batch, g.shape[0] - begin)
        out.append(({"images": torch.zeros(n, 1), "targets": gp[begin:begin + n]}, g[begin:begin + n]))
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(variant: str, path: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    q, g, qp, gp = torch.load(path, weights_only=True)
    q, g = q.to(device), g.to(device)  # the model's features are on its device
    evaluator, batches = None, None
    if variant == "a":
        import unipt_plugin  # noqa: F401
        from unipt_plugin.config.defaults import get_unipt_cfg
        from unipt_plugin.evaluation import TextToImageEvaluator
        cfg = get_unipt_cfg()
        cfg.TEST.T2I.CHUNK_SIZE = args.chunk
        cfg.TEST.T2I.TOPK = list(TOPK)
        evaluator = TextToImageEvaluator(cfg, num_query=q.shape[0])
        batches = evaluator_batches(q, g, qp, gp, args.batch)
    elif variant == "b":
        qp, gp = qp.to(device), gp.to(device)
    torch.mm(q[:64], g[:64].T)  # warm up BLAS threads / cuBLAS
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if device.type == "cuda" else rss_bytes()
    cpu_start = cpu_seconds()
    start = time.perf_counter()
    if variant == "a":
        evaluator.reset()
        for inputs, outputs in batches:
            evaluator.process(inputs, outputs)
        metrics = dict(evaluator.evaluate())
    elif variant == "b":
        metrics = full_sort_metrics(q, g, qp, gp)
    elif variant == "c":
        scores = q @ g.T
        metrics = {"checksum": float(scores[0, 0])}
        del scores
    else:
        buffer = torch.empty(min(args.chunk, q.shape[0]), g.shape[0], device=device)
        g_t = g.T
        for begin in range(0, q.shape[0], args.chunk):
            rows = q[begin:begin + args.chunk]
            torch.mm(rows, g_t, out=buffer[:rows.shape[0]])
        metrics = {"checksum": float(buffer[0, 0])}
        del buffer
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu_start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_extra_bytes": max(0, peak - before),
                      "metrics": metrics}))


def run_dim(args: argparse.Namespace, dim: int) -> bool:
    """Runs the variants at one dimension, prints their table; returns whether (a) == (b)."""
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "features.pt")
        torch.save(make_features(args, dim), path)
        for variant in ("c", "d", "a", "b"):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, path,
                   "--threads", str(args.threads), "--chunk", str(args.chunk), "--batch", str(args.batch),
                   "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"variant ({variant}) failed at D={dim}:\n{proc.stderr}")
            runs[variant] = json.loads(proc.stdout.strip().splitlines()[-1])

    a, b, c, d = runs["a"], runs["b"], runs["c"], runs["d"]
    gib = 1024 ** 3
    print(f"\nQ={args.queries} G={args.gallery} D={dim} ids={args.ids} noise={args.noise} "
          f"gallery_noise={args.gallery_noise} chunk={args.chunk} batch={args.batch} "
          f"device={args.device} threads={args.threads} seed={args.seed}")
    shared = [k for k in b["metrics"] if k in a["metrics"]]
    print("metrics (a): " + ", ".join(f"{k}={a['metrics'][k]:.4f}" for k in shared))
    mismatch = {k: (a["metrics"][k], b["metrics"][k]) for k in shared
                if abs(a["metrics"][k] - b["metrics"][k]) > 1e-6}
    print(f"(a) and (b) agree on all metrics: {not mismatch}" + (f" {mismatch}" if mismatch else ""))
    print(f"{'variant':<44}{'time (s)':>10}{'peak extra mem (GiB)':>22}")
    for name, key in (("(a) full evaluator (chunked, no sort)", "a"), ("(b) full sort", "b"),
                      ("(c) matrix product alone", "c"),
                      ("(d) the evaluator's chunked products alone", "d")):
        run = runs[key]
        print(f"{name:<44}{run['seconds']:>10.2f}{run['peak_extra_bytes'] / gib:>22.3f}")
    print("cpu time (s, all threads): " + ", ".join(f"({k}) {runs[k]['cpu_seconds']:.2f}" for k in "abcd"))
    over_product = a["seconds"] / c["seconds"]
    speedup = b["seconds"] / a["seconds"]
    mem_ratio = a["peak_extra_bytes"] / max(1, b["peak_extra_bytes"])

    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    print(f"a/c time   = {over_product:6.3f}  (target <= {TARGET_OVER_PRODUCT}):  "
          f"{verdict(over_product <= TARGET_OVER_PRODUCT)}   "
          f"[cpu time a/c = {a['cpu_seconds'] / max(1e-9, c['cpu_seconds']):.2f}]")
    print(f"b/a time   = {speedup:6.3f}  (target >= {TARGET_SPEEDUP:g}):    {verdict(speedup >= TARGET_SPEEDUP)}")
    print(f"a/b memory = {mem_ratio:6.3f}  (target <= {TARGET_MEMORY}): {verdict(mem_ratio <= TARGET_MEMORY)}")
    print(f"a/d time   = {a['seconds'] / d['seconds']:6.3f}  (ranking over the evaluator's own products; "
          f"d/c = {d['seconds'] / c['seconds']:.3f})")
    return not mismatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=19848, help="Q (default: ICFG-PEDES test)")
    parser.add_argument("--gallery", type=int, default=19848, help="G (default: ICFG-PEDES test)")
    parser.add_argument("--dims", "--dim", type=int, nargs="+", default=[512, 3584],
                        help="feature dimensions D, one table each (default: 512 and 3584 = 512 + 6 x 512)")
    parser.add_argument("--ids", type=int, default=1000, help="number of person ids")
    parser.add_argument("--noise", type=float, default=5.3,
                        help="query (caption) noise around the id centre; default calibrated "
                             "to IRRA-like ICFG-PEDES metrics; 0 = pure random features")
    parser.add_argument("--gallery-noise", type=float, default=1.05,
                        help="gallery (image) noise around the id centre (default calibrated)")
    parser.add_argument("--chunk", type=int, default=1024, help="TEST.T2I.CHUNK_SIZE for (a) and (d)")
    parser.add_argument("--batch", type=int, default=256, help="rows per test batch fed to (a)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per variant")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args)
        return
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: CUDA is not available here")
    agree = [run_dim(args, dim) for dim in args.dims]
    if not all(agree):
        sys.exit(1)


if __name__ == "__main__":
    main()
