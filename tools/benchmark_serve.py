#!/usr/bin/env python
"""Query latency of `tools/search.py serve`: p50 / p95 over ``--queries`` queries, per gallery size
and index kind, through the running server's HTTP API.

For each size in ``--sizes`` a gallery of random unit features of the model's dimension is made
(the faiss search cost depends on the size and dimension, not on what the features show) and
indexed as each kind of ``--kinds`` (``GalleryIndex``, the server's defaults or ``--nlist`` /
``--nprobe``). The text encoder is the real model of ``--config-file`` (with ``--weights``, or
randomly initialised weights of that architecture when none are given: the time per query does
not depend on the weight values). A ``SearchService`` + FastAPI app is then served by uvicorn on a
free local port and queried one request at a time with httpx, as the page does. Printed per row:

* ``http``: wall time of ``GET /api/search?q=...&k=...`` seen by the client (HTTP, JSON, text
  encoding under ``torch.inference_mode``, faiss search);
* ``service``: the same request's time inside the endpoint (``SearchService.search``: encoding +
  ``pipeline.search_texts``), as the API reports it (``elapsed_ms``);

and once, the text encoding alone (``SearchEncoder.encode_texts`` of one query). Queries are
synthetic-world descriptions (``unipt_plugin.synthetic.captions.describe``), all different.

    python tools/benchmark_serve.py                                  # 10,000 and 1,000,000; flat and ivf
    python tools/benchmark_serve.py --config-file logs/demo/seed0/unipt/config.yaml \\
        --weights logs/demo/seed0/unipt/model_final.pth --sizes 10000

Memory: size x dim x 4 bytes for the features, plus each index's copy (1M x 128: 0.5 GB each).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def percentiles(ms: list[float]) -> tuple[float, float]:
    """(p50, p95) of ``ms`` (numpy's linear interpolation)."""
    a = np.asarray(ms, dtype=np.float64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def make_queries(num: int, seed: int) -> list[str]:
    """``num`` distinct synthetic-world descriptions (the demo's caption grammar)."""
    from unipt_plugin.synthetic.attributes import sample_identity
    from unipt_plugin.synthetic.captions import describe

    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < num:
        text = describe(sample_identity(rng), rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def random_gallery(num: int, dim: int, seed: int, chunk: int = 100_000):
    """(num, dim) float32 L2-normalised Gaussian rows."""
    rng = np.random.default_rng(seed)
    out = np.empty((num, dim), dtype=np.float32)
    for start in range(0, num, chunk):
        x = rng.standard_normal((min(chunk, num - start), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:start + len(x)] = x
    return out


def build_encoder(args: argparse.Namespace):
    """(cfg, SearchEncoder, description of the weights) for ``args``."""
    import torch
    from fastreid.modeling.meta_arch import build_model

    from unipt_plugin.engine import setup_cfg
    from unipt_plugin.modeling.weight_loading import encoder_weights_skipped
    from unipt_plugin.search import SearchEncoder, load_model

    opts = ["MODEL.DEVICE", args.device]
    if args.weights:
        opts += ["MODEL.WEIGHTS", args.weights]
    cfg = setup_cfg(args.config_file, opts, freeze=True)
    if args.weights:
        model, what = load_model(cfg), f"weights {args.weights}"
    else:
        torch.manual_seed(0)
        with encoder_weights_skipped():
            model = build_model(cfg)
        model.eval()
        what = "randomly initialised weights (no --weights; timing does not depend on their values)"
    return cfg, SearchEncoder(model, cfg, batch_size=1, num_threads=1), what


def time_encoding(encoder, queries: list[str]) -> list[float]:
    """Milliseconds of ``encoder.encode_texts([q])`` per query, under inference mode."""
    import torch

    ms = []
    with torch.inference_mode():
        encoder.encode_texts(queries[:1])  # warm-up
        for q in queries:
            t0 = time.perf_counter()
            encoder.encode_texts([q])
            ms.append(1000.0 * (time.perf_counter() - t0))
    return ms


def time_server(service, queries: list[str], topk: int) -> tuple[list[float], list[float]]:
    """(client-side ms, in-endpoint ms) of ``GET /api/search`` per query on a live uvicorn server."""
    import httpx

    from unipt_plugin.search.server import create_app, running_server

    http_ms, service_ms = [], []
    with running_server(create_app(service)) as url, httpx.Client(base_url=url, timeout=60.0) as client:
        client.get("/api/search", params={"q": queries[0], "k": topk}).raise_for_status()  # warm-up
        for q in queries:
            t0 = time.perf_counter()
            r = client.get("/api/search", params={"q": q, "k": topk})
            http_ms.append(1000.0 * (time.perf_counter() - t0))
            r.raise_for_status()
            data = r.json()
            if len(data["hits"]) != min(topk, len(service.gallery)):
                raise RuntimeError(f"query {q!r}: {len(data['hits'])} hits, expected {topk}")
            service_ms.append(float(data["elapsed_ms"]))
    return http_ms, service_ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="configs/Synthetic/finetune.yml",
                   help="model config (default configs/Synthetic/finetune.yml, the demo's model)")
    p.add_argument("--weights", default="", help="checkpoint (default: random weights of the config's model)")
    p.add_argument("--device", default="cpu", help="MODEL.DEVICE for the text encoder (default cpu)")
    p.add_argument("--sizes", default="10000,1000000", help="comma list of gallery sizes (default 10000,1000000)")
    p.add_argument("--kinds", default="flat,ivf", help="comma list of index kinds: flat, ivf, hnsw (default flat,ivf)")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default: the index's, 1024; fewer on small galleries)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists scanned per query (default: the index's, 32)")
    p.add_argument("--queries", type=int, default=200, help="timed queries per row (default 200)")
    p.add_argument("--topk", type=int, default=10, help="k per query (default 10)")
    p.add_argument("--threads", type=int, default=1, help="torch and faiss threads (default 1)")
    p.add_argument("--target-ms", type=float, default=200.0,
                   help="p95 target at the smallest size, flat index (default 200 ms)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import faiss
    import torch

    import unipt_plugin  # noqa: F401  (fast-reid shims and registries)
    from unipt_plugin.search import GalleryIndex
    from unipt_plugin.search.server import SearchService

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in kinds:
        if k not in ("flat", "ivf", "hnsw"):
            p.error(f"--kinds: unknown kind {k!r}; expected flat, ivf or hnsw")
    params = {k: v for k, v in (("nlist", args.nlist), ("nprobe", args.nprobe)) if v is not None}

    cfg, encoder, what = build_encoder(args)
    queries = make_queries(args.queries, args.seed)
    enc_ms = time_encoding(encoder, queries)
    dim = int(encoder.encode_texts(queries[:1]).features.shape[1])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"text encoder: {cfg.MODEL.META_ARCHITECTURE} of {args.config_file}, {what}; feature dim {dim}; "
          f"device {args.device}; {args.threads} torch/faiss thread(s); {os.cpu_count()} CPUs, load average "
          f"{load:.1f}; faiss {faiss.__version__}")
    e50, e95 = percentiles(enc_ms)
    print(f"text encoding alone: p50 {e50:.1f} ms, p95 {e95:.1f} ms over {len(queries)} queries")

    rows = []
    for size in sizes:
        t0 = time.perf_counter()
        features = random_gallery(size, dim, args.seed + size)
        files = [f"entry{i:07d}.jpg" for i in range(size)]
        gen_s = time.perf_counter() - t0
        for kind in kinds:
            gallery = GalleryIndex(dim=dim, config_hash="benchmark", weights_hash="benchmark", kind=kind,
                                   params=params if kind == "ivf" else {}, files=files, features=features)
            t0 = time.perf_counter()
            gallery.rebuild()
            build_s = time.perf_counter() - t0
            service = SearchService(encoder, gallery, None, max_topk=max(args.topk, 1), default_topk=args.topk)
            http_ms, service_ms = time_server(service, queries, args.topk)
            label = kind + (f" nlist={gallery.params['nlist']} nprobe={gallery.params['nprobe']}" if kind == "ivf" else "")
            rows.append((size, label, build_s, *percentiles(http_ms), *percentiles(service_ms)))
            print(f"  {size:,} {label}: built in {build_s:.1f} s (features drawn in {gen_s:.1f} s); "
                  f"http p50 {rows[-1][3]:.1f} ms p95 {rows[-1][4]:.1f} ms", flush=True)
            del service, gallery

    header = ("entries", "index", "build s", "http p50 ms", "http p95 ms", "service p50 ms", "service p95 ms")
    table = [header] + [(f"{a:,}", b, f"{c:.1f}", f"{d:.1f}", f"{e:.1f}", f"{f:.1f}", f"{g:.1f}")
                        for a, b, c, d, e, f, g in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print(f"\n{len(queries)} queries per row, k={args.topk}, one request at a time")
    for i, r in enumerate(table):
        print(" | ".join(cell.ljust(w) for cell, w in zip(r, widths)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    first = [r for r in rows if r[0] == min(sizes) and r[1] == "flat"]
    if first:
        ok = first[0][4] < args.target_ms
        print(f"target {'met' if ok else 'NOT met'}: p95 {first[0][4]:.1f} ms through the API at "
              f"{min(sizes):,} entries, exact index (target < {args.target_ms:g} ms)")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
