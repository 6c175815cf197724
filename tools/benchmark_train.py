#!/usr/bin/env python
"""Training-step throughput and where the step time goes, for a config on the current device.

Builds the run's components the way ``UniPTTrainer`` does (``build_train_loader``,
``build_model``, ``build_optimizer``, ``build_lr_scheduler``, and fast-reid's ``SimpleTrainer``
or ``AMPTrainer`` when SOLVER.AMP.ENABLED on CUDA), warms up, then times real training steps
twice:

1. **plain**: the trainer's own ``run_step`` (exactly what ``tools/train_net.py`` runs, plus the
   per-iteration LR scheduler step when SOLVER.SCHED = WarmupLinearLR) -> samples/s;
2. **instrumented**: the same step split into phases, with ``torch.cuda.synchronize()`` between
   them on CUDA so each phase is charged its own GPU work:

   * ``data``      - ``next(loader)``: waiting for the batch (decode, augment, tokenise, collate);
   * ``forward``   - ``model(batch)`` incl. host-to-device copy and the loss computation;
   * ``backward``  - ``zero_grad`` + ``(scaled) loss.backward()``;
   * ``optimizer`` - ``optimizer.step()`` (+ GradScaler step/update under AMP);
   * ``other``     - fast-reid's metric bookkeeping (``_write_metrics``: loss ``.item()``, gather,
     event storage), summing the loss dict, the per-iteration LR scheduler step, loop overhead.

"outside" = data + other: the share of step time not spent in forward, backward or the
optimizer step (the target is < 10%). Per-epoch hooks (checkpoint, evaluation, epoch LR step)
and console writers are not run.

``--synthetic-data N`` writes a temporary CUHK-PEDES-format dataset (``reid_raw.json`` + N
JPEG images of random noise at the config's training size, 2 captions each, 2 images per id, plus
2 test images the benchmark does not use) and
trains on it (DATASETS.NAMES is set to ("CUHKPEDES",) for either meta-architecture).

Example:
    python tools/benchmark_train.py --config-file configs/Tiny/t2i.yml --synthetic-data 256 \
        --steps 20 SOLVER.IMS_PER_BATCH 32
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import unipt_plugin  # noqa: E402,F401  (fast-reid compat first)
from fastreid.engine.train_loop import AMPTrainer, SimpleTrainer  # noqa: E402
from fastreid.utils.events import EventStorage  # noqa: E402
from PIL import Image  # noqa: E402

from unipt_plugin.engine import UniPTTrainer, setup_cfg  # noqa: E402

PHASES = ("data", "forward", "backward", "optimizer", "other")
_WORDS = ("a man woman wearing black white red blue green grey shirt jacket coat trousers jeans shorts skirt "
          "dress shoes boots bag backpack carrying walking long short hair glasses hat with and the young "
          "holding phone umbrella striped dark light").split()


def write_synthetic_cuhk_pedes(root: str, num_images: int, size: tuple[int, int], seed: int = 0) -> str:
    """Write ``<root>/CUHK-PEDES/`` (raw format) with ``num_images`` train images (H, W = size),
    2 per identity, 2 captions of 15-40 words each; returns the dataset folder."""
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    folder = os.path.join(root, "CUHK-PEDES")
    entries = []
    # The loader reads every split the dataset declares; two extra test images satisfy it.
    for i in range(num_images + 2):
        rel = f"CUHK01/{i:07d}.jpg"
        path = os.path.join(folder, "imgs", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        arr = nprng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
        Image.fromarray(arr, "RGB").save(path, quality=90)
        captions = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(15, 40))) + "." for _ in range(2)]
        split = "train" if i < num_images else "test"
        entries.append({"split": split, "captions": captions, "file_path": rel, "id": 1 + i // 2})
    with open(os.path.join(folder, "reid_raw.json"), "w", encoding="utf-8") as f:
        json.dump(entries, f)
    return folder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def instrumented_step(trainer: SimpleTrainer, iter_sched, device: torch.device) -> dict[str, float]:
    """One training step of ``trainer`` (SimpleTrainer / AMPTrainer logic) with per-phase times."""
    amp = isinstance(trainer, AMPTrainer)
    t = {}
    t0 = time.perf_counter()
    data = next(trainer._data_loader_iter)
    t1 = time.perf_counter()
    t["data"] = t1 - t0
    with torch.autocast("cuda") if amp else nullcontext():
        loss_dict = trainer.model(data)
    _sync(device)
    t2 = time.perf_counter()
    t["forward"] = t2 - t1
    losses = sum(loss_dict.values())
    t3 = time.perf_counter()
    trainer.optimizer.zero_grad()
    (trainer.grad_scaler.scale(losses) if amp else losses).backward()
    _sync(device)
    t4 = time.perf_counter()
    t["backward"] = t4 - t3
    trainer._write_metrics(loss_dict, t["data"])
    t5 = time.perf_counter()
    if amp:
        trainer.grad_scaler.step(trainer.optimizer)
        trainer.grad_scaler.update()
    else:
        trainer.optimizer.step()
    _sync(device)
    t6 = time.perf_counter()
    t["optimizer"] = t6 - t5
    if iter_sched is not None:
        iter_sched.step()
    trainer.storage.step()
    t7 = time.perf_counter()
    t["other"] = (t7 - t0) - t["data"] - t["forward"] - t["backward"] - t["optimizer"]
    return t


def run(args) -> dict:
    opts = list(args.opts)
    tmp = None
    if args.synthetic_data:
        probe = setup_cfg(args.config_file, opts)
        tmp = tempfile.TemporaryDirectory(prefix="unipt_bench_")
        write_synthetic_cuhk_pedes(tmp.name, args.synthetic_data, tuple(probe.INPUT.SIZE_TRAIN))
        opts += ["DATASETS.ROOT", tmp.name, "DATASETS.NAMES", '("CUHKPEDES",)', "DATASETS.TESTS", "()"]
    opts += ["MODEL.WEIGHTS", ""]
    cfg = setup_cfg(args.config_file, opts, freeze=False)
    torch.manual_seed(max(0, int(cfg.SEED)))
    device = torch.device(cfg.MODEL.DEVICE)
    if args.threads:
        torch.set_num_threads(args.threads)

    loader = UniPTTrainer.build_train_loader(cfg)
    if cfg.MODEL.HEADS.NUM_CLASSES == 0:
        cfg.MODEL.HEADS.NUM_CLASSES = loader.dataset.num_classes
    iters_per_epoch = len(loader.dataset) // int(cfg.SOLVER.IMS_PER_BATCH)
    cfg.freeze()
    model = UniPTTrainer.build_model(cfg)
    optimizer, param_wrapper = UniPTTrainer.build_optimizer(cfg, model)
    # Schedule horizon at least the benchmark's length, so the learning rate never reaches 0 (a
    # frozen model trains at a different speed on the CPU than one whose weights move).
    horizon = -(-(args.warmup + 2 * args.steps + 1) // max(1, int(cfg.SOLVER.MAX_EPOCH)))
    scheds = UniPTTrainer.build_lr_scheduler(cfg, optimizer, max(1, iters_per_epoch, horizon))
    iter_sched = scheds.get("iter_sched")
    amp = bool(cfg.SOLVER.AMP.ENABLED) and device.type == "cuda"
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, loader, optimizer, param_wrapper)
    batch = int(cfg.SOLVER.IMS_PER_BATCH)

    plain, phases = [], []
    with EventStorage(0) as storage:
        trainer.storage = storage
        for _ in range(args.warmup):
            trainer.run_step()
            if iter_sched is not None:
                iter_sched.step()
            storage.step()
        _sync(device)
        for _ in range(args.steps):
            t0 = time.perf_counter()
            trainer.run_step()
            if iter_sched is not None:
                iter_sched.step()
            storage.step()
            _sync(device)
            plain.append(time.perf_counter() - t0)
        for _ in range(args.steps):
            phases.append(instrumented_step(trainer, iter_sched, device))
    if tmp is not None:
        tmp.cleanup()

    mean = {k: statistics.fmean(p[k] for p in phases) for k in PHASES}
    step = sum(mean.values())
    return {
        "config": args.config_file, "opts": list(args.opts), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": amp, "batch": batch, "num_workers": int(cfg.DATALOADER.NUM_WORKERS),
        "torch_threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
        "plain_step_s": statistics.fmean(plain), "plain_median_step_s": statistics.median(plain), "plain_samples_per_s": batch / statistics.fmean(plain),
        "instrumented_step_s": step, "instrumented_samples_per_s": batch / step,
        "phase_s": mean, "phase_share": {k: v / step for k, v in mean.items()},
        "outside_share": (mean["data"] + mean["other"]) / step,
    }


def print_table(r: dict) -> None:
    print(f"config {r['config']} {' '.join(r['opts'])}")
    print(f"device {r['device_name']}  AMP {r['amp']}  batch {r['batch']}  workers {r['num_workers']}  "
          f"threads {r['torch_threads']}  steps {r['steps']} (after {r['warmup']} warm-up)")
    print(f"plain run_step:      {r['plain_step_s'] * 1000:9.1f} ms/step  {r['plain_samples_per_s']:9.1f} samples/s"
          f"  (median {r['plain_median_step_s'] * 1000:.1f} ms/step)")
    print(f"instrumented step:   {r['instrumented_step_s'] * 1000:9.1f} ms/step  "
          f"{r['instrumented_samples_per_s']:9.1f} samples/s")
    print(f"{'phase':<12}{'ms/step':>10}{'share':>9}")
    for k in PHASES:
        print(f"{k:<12}{r['phase_s'][k] * 1000:>10.2f}{r['phase_share'][k] * 100:>8.1f}%")
    verdict = "OK" if r["outside_share"] < 0.10 else "ABOVE TARGET"
    print(f"outside forward+backward+optimizer (data + other): {r['outside_share'] * 100:.1f}%  "
          f"(target < 10%: {verdict})")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="a UniPT config (configs/...)")
    p.add_argument("--synthetic-data", type=int, default=0, metavar="N",
                   help="train on a temporary CUHK-PEDES-format dataset of N random images (default 0 = "
                        "use the config's DATASETS)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default 10)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0 = torch's choice)")
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    if args.synthetic_data and args.synthetic_data < 4:
        raise SystemExit("--synthetic-data needs at least 4 images")
    r = run(args)
    print_table(r)
    if args.json:
        from unipt_plugin.utils.io import atomic_write_json
        atomic_write_json(args.json, r)


if __name__ == "__main__":
    main()
