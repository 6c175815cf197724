#!/usr/bin/env python
"""Paper-scale data: dataset construction, loader throughput and worker memory on LUPerson-T.

Generates (once; reused when present and complete) a LUPerson-T set of N images under
``--work-dir``:

    <work-dir>/sources/src_<k>.jpg                      a few small JPEGs (128x64)
    <work-dir>/LUPerson-T/imgs/<folder>/<index>.jpg     N hard links to them, --per-folder per folder
    <work-dir>/LUPerson-T/luperson_t.json               [{"file_path", "captions": [...]}, ...]
    <work-dir>/LUPerson-T/LUPerson_train.arrow          the same set in the packed Arrow layout
                                                        (written by tools/pack_dataset.py's packer)

then measures, each in a fresh child process so that every figure starts from the same state:

1. **construction** of the ``LUPersonT`` dataset for each layout (JSON + folder, Arrow) and each
   DATASETS.VERIFY_IMAGES mode ("full", "lazy"; the Arrow layout has no image files, its "full"
   checks that every row has image bytes): seconds, the peak resident memory added during
   construction (VmHWM), and the memory the dataset keeps afterwards (anonymous resident
   memory, after ``gc.collect()``, minus what the process held before), plus the size of the
   item buffers themselves;
2. **the training loader** (``build_t2i_train_loader``, TrainingSampler, batches of
   --batch-size at 384x128, --workers worker processes) for each layout: samples/s per worker,
   and every worker's private memory (USS = Private_Clean + Private_Dirty from
   /proc/<pid>/smaps_rollup) after the first batch and after --batches batches, with the
   growth; Private_Dirty (copied-on-write or newly allocated pages) is shown separately.

Figures are compared with the baseline measured on the code before the packed items (issue
"Paper-scale data", 1.3M images x 1 caption): construction 27 s with a 2.5 GiB peak, and worker
USS growing from 52 MiB to 143 and 179 MiB within 200 batches of 64. Nothing is asserted.

Example (the full-size run; the first run spends a few minutes generating the set):
    python tools/benchmark_data.py --work-dir output/benchmark_data --batches 2000
    python tools/benchmark_data.py --work-dir /tmp/bench100k --num-images 100000 --batches 200
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIB = 2 ** 20
GIB = 2 ** 30
#: the code before packed items, 1.3M images x 1 caption (issue "Paper-scale data")
BASELINE = {"num_images": 1_300_000, "construct_s": 27.0, "construct_peak_gib": 2.5,
            "worker_uss_start_mib": 52.0, "worker_uss_after_mib": (143.0, 179.0), "worker_batches": 200}

_SUBJECTS = ("A man", "A woman", "A young man", "A young woman", "An old man", "An old woman", "A boy", "A girl")
_HAIR = ("short black hair", "long brown hair", "short grey hair", "long black hair", "blond hair", "a bald head")
_UPPER = ("a white t-shirt", "a black jacket", "a red coat", "a blue shirt", "a green sweater", "a grey hoodie")
_LOWER = ("blue jeans", "black trousers", "a long skirt", "grey shorts", "white pants", "a black dress")
_SHOES = ("white sneakers", "black shoes", "brown boots", "sandals", "red shoes", "grey sneakers")
_EXTRA = ("carrying a black backpack", "holding a phone", "carrying a red bag", "with a pair of glasses",
          "wearing a hat", "walking with an umbrella", "pushing a bicycle", "carrying nothing")


def _captions(num: int, seed: int) -> list[str]:
    """``num`` pseudo-text-like captions (~20 words) drawn from a few phrase lists."""
    rng = np.random.default_rng(seed)
    lists = (_SUBJECTS, _HAIR, _UPPER, _LOWER, _SHOES, _EXTRA)
    picks = [rng.integers(0, len(lst), num) for lst in lists]
    out = []
    for s, h, u, lo, sh, e in zip(*picks):
        out.append(f"{_SUBJECTS[s]} with {_HAIR[h]} is wearing {_UPPER[u]} and {_LOWER[lo]} with {_SHOES[sh]}, "
                   f"{_EXTRA[e]}.")
    return out


def _write_sources(folder: str, count: int) -> list[str]:
    """``count`` small smooth JPEGs (128x64, ~2 KB each) -> their paths."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        y, x = np.mgrid[0:128, 0:64]
        base = np.stack([(x * 3 + k * 20) % 256, (y * 2 + k * 40) % 256, (x + y + k * 10) % 256], -1).astype(np.float32)
        base += rng.normal(0, 8, base.shape)
        path = os.path.join(folder, f"src_{k}.jpg")
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=75)
        paths.append(path)
    return paths


def generate(work_dir: str, num_images: int, per_folder: int, captions_per_image: int, seed: int = 0) -> dict[str, str]:
    """Write (or reuse) the JSON + folder set under ``work_dir``; -> {"root", "annotation", "image_dir"}.

    Reused when ``LUPerson-T/.complete`` records the same parameters; otherwise the image folder
    and annotation are written anew (an interrupted generation leaves no ``.complete``, so the
    next run redoes it from scratch).
    """
    from tqdm import tqdm

    root = os.path.abspath(work_dir)
    ds = os.path.join(root, "LUPerson-T")
    image_dir = os.path.join(ds, "imgs")
    annotation = os.path.join(ds, "luperson_t.json")
    marker = os.path.join(ds, ".complete")
    params = {"num_images": num_images, "per_folder": per_folder, "captions_per_image": captions_per_image,
              "seed": seed, "version": 1}
    out = {"root": root, "annotation": annotation, "image_dir": image_dir}
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            if json.load(f) == params:
                return out
        os.remove(marker)
    shutil.rmtree(image_dir, ignore_errors=True)  # other parameters, or an interrupted generation
    # ext4 allows 65,000 links per file: one source JPEG per 50,000 images (at least 8)
    sources = _write_sources(os.path.join(root, "sources"), max(8, -(-num_images // 50_000)))
    os.makedirs(image_dir, exist_ok=True)
    rels = []
    for i in tqdm(range(num_images), desc="linking images", unit="img", mininterval=2.0):
        folder = f"{i // per_folder:05d}"
        if i % per_folder == 0:
            os.makedirs(os.path.join(image_dir, folder), exist_ok=True)
        rel = f"{folder}/{i:08d}.jpg"
        os.link(sources[i % len(sources)], os.path.join(image_dir, rel))
        rels.append(rel)
    caps = _captions(num_images * captions_per_image, seed)
    entries = [{"file_path": rel, "captions": caps[i * captions_per_image:(i + 1) * captions_per_image]}
               for i, rel in enumerate(rels)]
    tmp = annotation + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    os.replace(tmp, annotation)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump(params, f)
    return out


def pack(paths: dict[str, str]) -> str:
    """The Arrow layout of the generated set (written once with the library's packer; reused)."""
    from unipt_plugin.data.datasets.arrow_layout import pack_luperson_t

    output = os.path.join(os.path.dirname(paths["annotation"]), "LUPerson_train.arrow")
    if not (os.path.isfile(output) and os.path.getmtime(output) >= os.path.getmtime(paths["annotation"])):
        pack_luperson_t(paths["annotation"], paths["image_dir"], output)
    return output


# ---------------------------------------------------------------------------------------------- measurements
def _status() -> dict[str, int]:
    """VmRSS, VmHWM (peak), RssAnon of this process, bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _private_once(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Private_Clean", "Private_Dirty"):
                fields[key] = int(value.split()[0]) * 1024
    return {"uss": fields["Private_Clean"] + fields["Private_Dirty"], "dirty": fields["Private_Dirty"]}


def _private(pid: int, samples: int = 5, gap_s: float = 0.02) -> dict[str, int]:
    """USS (Private_Clean + Private_Dirty) and Private_Dirty of process ``pid``, bytes: the smallest
    of a few readings, so that a batch the worker is assembling at that moment (its image buffers
    and its shared-memory tensors, private to it until the main process maps them: ~10 MiB at
    64 x 384x128) is not counted as growth."""
    readings = []
    for k in range(samples):
        if k:
            time.sleep(gap_s)
        readings.append(_private_once(pid))
    return min(readings, key=lambda r: r["uss"])


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cfg(spec: dict[str, Any]) -> Any:
    from unipt_plugin.config import get_unipt_cfg

    cfg = get_unipt_cfg()
    cfg.DATASETS.ROOT = spec["root"]
    cfg.DATASETS.NAMES = ("LUPersonT",)
    cfg.DATASETS.LUPERSON_T.ANNOTATION = spec["annotation"]
    cfg.DATASETS.LUPERSON_T.IMAGE_DIR = spec["image_dir"]
    if "VERIFY_IMAGES" in cfg.DATASETS:
        cfg.DATASETS.VERIFY_IMAGES = spec["mode"]
    cfg.INPUT.SIZE_TRAIN = list(spec.get("size", [384, 128]))
    cfg.SOLVER.IMS_PER_BATCH = int(spec.get("batch_size", 64))
    cfg.DATALOADER.NUM_WORKERS = int(spec.get("workers", 2))
    cfg.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
    return cfg


def child_construct(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the dataset once in this (fresh) process: time and memory."""
    import unipt_plugin  # noqa: F401  (imports first, so that they are not counted)
    from unipt_plugin.data.datasets import LUPersonT

    cfg = _cfg(spec)
    gc.collect()
    before = _status()
    t0, c0 = time.perf_counter(), _cpu()
    data = LUPersonT(root=spec["root"], cfg=cfg, verify_images=spec["mode"] == "full")
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    gc.collect()
    after = _status()
    nbytes = getattr(data.train, "nbytes", None)
    return {"seconds": seconds, "cpu": cpu, "items": len(data.train), "before": before, "after": after,
            "items_bytes": nbytes}


def child_loader(spec: dict[str, Any]) -> dict[str, Any]:
    """The training loader: samples/s and each worker's private memory over ``batches`` batches."""
    import unipt_plugin  # noqa: F401
    from unipt_plugin.data import build_t2i_train_loader

    cfg = _cfg(spec)
    t0 = time.perf_counter()
    loader = build_t2i_train_loader(cfg)
    build_s = time.perf_counter() - t0
    gc.collect()
    main_after_build = _status()
    it = iter(loader)
    next(it)
    pids = [w.pid for w in it._workers]
    start = [_private(p) for p in pids]
    batches, trace = int(spec["batches"]), []
    checkpoints = {max(1, batches * k // 4) for k in (1, 2, 3)}
    t0 = time.perf_counter()
    for k in range(1, batches):
        next(it)
        if k in checkpoints:
            trace.append((k + 1, [_private(p)["uss"] for p in pids]))
    seconds = time.perf_counter() - t0
    end = [_private(p) for p in pids]
    return {"build_s": build_s, "main": main_after_build, "seconds": seconds, "batches": batches,
            "batch_size": int(spec.get("batch_size", 64)), "workers": len(pids), "start": start, "end": end,
            "trace": trace}


def run_child(kind: str, spec: dict[str, Any], code_dir: str | None = None) -> dict[str, Any]:
    """Run ``child_<kind>(spec)`` in a fresh interpreter (with ``code_dir`` first on sys.path)."""
    env = dict(os.environ)
    if code_dir:
        env["UNIPT_BENCH_CODE"] = os.path.abspath(code_dir)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, json.dumps(spec)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {kind} {spec} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report
def _mib(x: float) -> float:
    return x / MIB


def print_construction(rows: list[tuple[str, str, dict[str, Any]]], num_images: int) -> None:
    scale = num_images / BASELINE["num_images"]
    print("\nconstruction of LUPersonT (fresh process each; memory above what the process held before it)")
    print(f"{'layout':<15}{'VERIFY':<8}{'wall s':>8}{'cpu s':>8}{'peak MiB':>10}{'kept MiB':>10}{'items MiB':>11}"
          f"{'peak total GiB':>16}   vs baseline (27 s{'' if scale == 1 else f' x {scale:.3f}'})")
    for layout, mode, r in rows:
        peak = r["after"]["VmHWM"] - r["before"]["VmRSS"]
        kept = r["after"]["RssAnon"] - r["before"]["RssAnon"]
        items = f"{_mib(r['items_bytes']):.1f}" if r.get("items_bytes") else "-"
        base_s = BASELINE["construct_s"] * scale
        print(f"{layout:<15}{mode:<8}{r['seconds']:>8.2f}{r['cpu']:>8.2f}{_mib(peak):>10.0f}{_mib(kept):>10.0f}"
              f"{items:>11}{r['after']['VmHWM'] / GIB:>16.2f}   {base_s / r['seconds']:.1f}x faster")


def print_loader(rows: list[tuple[str, dict[str, Any]]], num_images: int) -> None:
    print("\ntraining loader (build_t2i_train_loader, TrainingSampler, batches of "
          f"{rows[0][1]['batch_size']} at 384x128, {rows[0][1]['workers']} workers; private memory = USS = "
          "Private_Clean + Private_Dirty of /proc/<pid>/smaps_rollup, after the first batch and after the last)")
    base = BASELINE
    for layout, r in rows:
        per_worker = r["batches"] * r["batch_size"] / r["seconds"] / r["workers"]
        print(f"{layout}: loader built in {r['build_s']:.1f} s (main process {r['main']['VmRSS'] / GIB:.2f} GiB "
              f"resident after it), {per_worker:.0f} samples/s per worker over {r['batches']} batches")
        for w, (a, b) in enumerate(zip(r["start"], r["end"])):
            trace = ", ".join(f"{n}: {_mib(u[w]):.0f}" for n, u in r["trace"])
            print(f"  worker {w}: USS {_mib(a['uss']):.1f} -> {_mib(b['uss']):.1f} MiB, growth "
                  f"{_mib(b['uss'] - a['uss']):+.1f} MiB (Private_Dirty {_mib(b['dirty'] - a['dirty']):+.1f}); "
                  f"USS after batch {trace}")
    growth = [(base["worker_uss_after_mib"][i] - base["worker_uss_start_mib"]) for i in range(2)]
    print(f"  baseline (list of tuples, {base['num_images']:,} images): USS {base['worker_uss_start_mib']:.0f} -> "
          f"{base['worker_uss_after_mib'][0]:.0f} / {base['worker_uss_after_mib'][1]:.0f} MiB within "
          f"{base['worker_batches']} batches, growth +{growth[0]:.0f} / +{growth[1]:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default=os.path.join("output", "benchmark_data"),
                        help="where the generated set lives (reused when present)")
    parser.add_argument("--num-images", type=int, default=BASELINE["num_images"])
    parser.add_argument("--captions-per-image", type=int, default=1)
    parser.add_argument("--per-folder", type=int, default=1000, help="images per folder")
    parser.add_argument("--batches", type=int, default=2000, help="K: loader batches per layout")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--layouts", nargs="+", default=["json", "arrow"], choices=["json", "arrow"])
    parser.add_argument("--modes", nargs="+", default=["full", "lazy"], choices=["full", "lazy"])
    parser.add_argument("--skip-loader", action="store_true", help="construction only")
    parser.add_argument("--compare-with", metavar="DIR",
                        help="also measure the code in DIR (e.g. `git archive <commit> | tar -x -C DIR`) on the "
                             "JSON layout, in the same way (rows 'json (before)')")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        code = os.environ.get("UNIPT_BENCH_CODE")
        if code:
            sys.path.insert(0, code)
        kind, spec = args.child
        print(json.dumps({"construct": child_construct, "loader": child_loader}[kind](json.loads(spec))))
        return

    t0 = time.perf_counter()
    paths = generate(args.work_dir, args.num_images, args.per_folder, args.captions_per_image)
    arrow = pack(paths) if "arrow" in args.layouts else None
    print(f"LUPerson-T set: {args.num_images:,} images x {args.captions_per_image} caption(s) under {paths['root']} "
          f"(ready in {time.perf_counter() - t0:.0f} s; JSON {os.path.getsize(paths['annotation']) / MIB:.0f} MiB"
          + (f", Arrow {os.path.getsize(arrow) / MIB:.0f} MiB)" if arrow else ")"))
    specs = {"json": dict(paths, mode="full"), "arrow": dict(paths, annotation=arrow or "", mode="full")}
    rows = []
    for layout in args.layouts:
        for mode in args.modes:
            rows.append((layout, mode, run_child("construct", dict(specs[layout], mode=mode))))
    if args.compare_with:
        for mode in args.modes:
            rows.append(("json (before)", mode, run_child("construct", dict(specs["json"], mode=mode),
                                                          args.compare_with)))
    print_construction(rows, args.num_images)
    if args.skip_loader:
        return
    loader_rows = []
    extra = {"batches": args.batches, "batch_size": args.batch_size, "workers": args.workers, "mode": "lazy"}
    for layout in args.layouts:
        loader_rows.append((layout, run_child("loader", dict(specs[layout], **extra))))
    if args.compare_with:
        loader_rows.append(("json (before)", run_child("loader", dict(specs["json"], **extra), args.compare_with)))
    print_loader(loader_rows, args.num_images)


if __name__ == "__main__":
    main()
