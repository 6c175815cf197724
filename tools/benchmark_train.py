#!/usr/bin/env python
"""Training-step throughput and where the step time goes, for a config on the current device.

Builds the run's components the way ``UniPTTrainer`` does (``build_train_loader``,
``build_model``, ``build_optimizer``, ``build_lr_scheduler`` and ``build_step_trainer``, i.e.
:class:`~unipt_plugin.engine.train_loop.UniPTStepTrainer` with ``torch.amp`` at
SOLVER.AMP.DTYPE and SOLVER.ACCUM_STEPS micro-batches), applies TF32 (CUDA) and
DETERMINISTIC as ``tools/train_net.py`` does, warms up, then times real training steps twice:

1. **plain**: the step trainer's own ``run_step`` (exactly what ``tools/train_net.py`` runs, plus
   the per-iteration LR scheduler step when SOLVER.SCHED = WarmupLinearLR) -> samples/s;
2. **instrumented**: the same step split into phases, with ``torch.cuda.synchronize()`` between
   them on CUDA so each phase is charged its own GPU work:

   * ``data``      - ``next(loader)``: waiting for the batch (decode, augment, tokenise, collate);
   * ``forward``   - ``model(micro_batch)`` under ``trainer.autocast()``, incl. the host-to-device
     copy, the loss computation, summing the loss terms and the GradScaler's scaling;
   * ``backward``  - ``loss.backward()`` (summed over the SOLVER.ACCUM_STEPS micro-batches, like
     ``forward``);
   * ``optimizer`` - ``trainer.optimizer_step()``: optimiser step (through the GradScaler under
     float16 AMP) and ``zero_grad``;
   * ``other``     - the trainer's metric bookkeeping (``_write_metrics``: one host copy of the
     losses, event storage), the per-iteration LR scheduler step, loop overhead.

   The instrumented step repeats ``UniPTStepTrainer.forward_backward`` phase by phase (it is
   single-process, so DDP's ``no_sync`` does not apply).

"outside" = data + other: the share of step time not spent in forward, backward or the
optimizer step (the target is < 10%). Per-epoch hooks (checkpoint, evaluation, epoch LR step)
and console writers are not run. On CUDA the peak GPU memory of the whole run
(``torch.cuda.max_memory_allocated``, warm-up included) is reported too.

``--synthetic-data N`` writes a temporary CUHK-PEDES-format dataset (``reid_raw.json`` + N
JPEG images of random noise at the config's training size, 2 captions each, 2 images per id, plus
2 test images the benchmark does not use) and trains on it (DATASETS.NAMES is set to
("CUHKPEDES",) for either meta-architecture).

``--paper-model`` replaces the config's model by the paper's, with random weights and no weight
file: ViT-B/16 (timm ``vit_base_patch16_384``) at 384x128, a text encoder with BERT-base's
architecture (``SmallBertTextEncoder``, 768 wide, 12 layers, 12 heads, 3072 FFN, as
``tests/test_paper_configs.py`` builds it), the paper's head sizes (PRETRAIN.EMBED_DIM 768,
T2I.EMBED_DIM 512, the authors' PGU: 6 prototypes, 6 heads x 512), 100-token captions, SOLVER.IMS_PER_BATCH 64 (the per-GPU batch)
and AMP on (CUDA only: ``setup_cfg`` turns AMP off on the CPU). The meta-architecture, losses and
solver stay the config's. ``--dtype`` sets SOLVER.AMP.DTYPE. ``KEY VALUE`` overrides are applied
after both, so they win.

Examples:
    python tools/benchmark_train.py --config-file configs/Tiny/t2i.yml --synthetic-data 256 \
        --steps 20 SOLVER.IMS_PER_BATCH 32
    python tools/benchmark_train.py --config-file configs/CUHK-PEDES/vit_base.yml --paper-model \
        --dtype bfloat16 --synthetic-data 256 --steps 20
    python tools/benchmark_train.py --config-file configs/LUPerson-T/vit_base.yml --paper-model \
        --synthetic-data 256 --steps 20
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
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import unipt_plugin  # noqa: E402,F401  (fast-reid compat first)
from fastreid.utils.events import EventStorage  # noqa: E402
from PIL import Image  # noqa: E402

from unipt_plugin.engine import ConfigError, UniPTTrainer, setup_cfg  # noqa: E402
from unipt_plugin.engine.defaults import set_tf32, use_deterministic_kernels  # noqa: E402
from unipt_plugin.engine.train_loop import UniPTStepTrainer, split_batch  # noqa: E402

PHASES = ("data", "forward", "backward", "optimizer", "other")
_WORDS = ("a man woman wearing black white red blue green grey shirt jacket coat trousers jeans shorts skirt "
          "dress shoes boots bag backpack carrying walking long short hair glasses hat with and the young "
          "holding phone umbrella striped dark light").split()

#: ``--paper-model``: ViT-B/16 at 384x128 + BERT-base-sized text encoder, random weights, the
#: paper's heads, per-GPU batch 64, AMP on.
PAPER_MODEL_OPTS: tuple[str, ...] = (
    "MODEL.WEIGHTS", "",
    "MODEL.BACKBONE.NAME", "build_timm_vit_backbone",
    "MODEL.VISUAL.ARCH", "vit_base_patch16_384", "MODEL.VISUAL.WEIGHTS", "", "MODEL.VISUAL.STRIDE", "16",
    "MODEL.VISUAL.DEPTH", "0", "MODEL.VISUAL.EMBED_DIM", "0", "MODEL.VISUAL.NUM_HEADS", "0",
    "MODEL.VISUAL.DROP_PATH", "0.1",
    "MODEL.TEXT.NAME", "SmallBertTextEncoder", "MODEL.TEXT.WEIGHTS", "",
    "MODEL.TEXT.HIDDEN_SIZE", "768", "MODEL.TEXT.NUM_LAYERS", "12", "MODEL.TEXT.NUM_HEADS", "12",
    "MODEL.TEXT.INTERMEDIATE_SIZE", "3072",
    "MODEL.PRETRAIN.EMBED_DIM", "768", "MODEL.T2I.EMBED_DIM", "512",
    # the authors' PGU (configs/Base-UniPT-T2I.yml, docs/choices.md)
    "MODEL.PGU.NUM_PROTOTYPES", "6", "MODEL.PGU.NUM_LAYERS", "2", "MODEL.PGU.DIM", "384",
    "MODEL.PGU.NUM_HEADS", "6", "MODEL.PGU.HEAD_DIM", "512", "MODEL.PGU.QKV_BIAS", "False",
    "MODEL.PGU.FFN_DIM", "512", "MODEL.PGU.DROPOUT", "0.0", "MODEL.PGU.IMAGE_TOKENS", "patches",
    "MODEL.PGU.PART_INIT", "kaiming_normal", "MODEL.PGU.PART_DIM", "512",
    "INPUT.SIZE_TRAIN", "[384, 128]", "INPUT.SIZE_TEST", "[384, 128]",
    "INPUT.TEXT.TOKENIZER", "bert", "INPUT.TEXT.MAX_LENGTH", "100",
    "SOLVER.IMS_PER_BATCH", "64", "SOLVER.AMP.ENABLED", "True",
)


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


def instrumented_step(trainer: UniPTStepTrainer, iter_sched, storage: EventStorage,
                      device: torch.device) -> dict[str, float]:
    """One training step of ``trainer`` (the logic of ``UniPTStepTrainer.run_step``) with
    per-phase wall times in seconds (keys: :data:`PHASES`)."""
    t = dict.fromkeys(PHASES, 0.0)
    t0 = time.perf_counter()
    data = next(trainer._data_loader_iter)
    t["data"] = time.perf_counter() - t0
    totals: dict[str, torch.Tensor] = {}
    for part in split_batch(data, trainer.accum_steps):
        a = time.perf_counter()
        with trainer.autocast():
            loss_dict = trainer.model(part)
        losses = sum(loss_dict.values()) / trainer.accum_steps
        if trainer.grad_scaler is not None:
            losses = trainer.grad_scaler.scale(losses)
        _sync(device)
        b = time.perf_counter()
        losses.backward()
        _sync(device)
        t["forward"] += b - a
        t["backward"] += time.perf_counter() - b
        for name, value in loss_dict.items():
            v = value.detach().float() / trainer.accum_steps
            totals[name] = totals[name] + v if name in totals else v
    a = time.perf_counter()
    trainer.optimizer_step()
    _sync(device)
    t["optimizer"] = time.perf_counter() - a
    trainer._write_metrics(totals, t["data"])
    if iter_sched is not None:
        iter_sched.step()
    storage.step()
    t["other"] = (time.perf_counter() - t0) - t["data"] - t["forward"] - t["backward"] - t["optimizer"]
    return t


def build_opts(args: argparse.Namespace) -> list[str]:
    """The config overrides of a benchmark run: ``--paper-model``'s, ``--dtype``'s, then the
    command line's ``KEY VALUE`` pairs (last wins)."""
    opts: list[str] = list(PAPER_MODEL_OPTS) if args.paper_model else []
    if args.dtype:
        opts += ["SOLVER.AMP.DTYPE", args.dtype]
    return opts + list(args.opts)


def _model_summary(cfg, model: torch.nn.Module) -> str:
    visual = cfg.MODEL.VISUAL.ARCH + (f" depth {cfg.MODEL.VISUAL.DEPTH}" if cfg.MODEL.VISUAL.DEPTH else "")
    if cfg.MODEL.TEXT.NAME == "SmallBertTextEncoder":
        text = (f"SmallBert {cfg.MODEL.TEXT.HIDDEN_SIZE}x{cfg.MODEL.TEXT.NUM_LAYERS} layers "
                f"({cfg.MODEL.TEXT.NUM_HEADS} heads, FFN {cfg.MODEL.TEXT.INTERMEDIATE_SIZE})")
    else:
        text = cfg.MODEL.TEXT.NAME
    size = "x".join(str(s) for s in cfg.INPUT.SIZE_TRAIN)
    params = sum(p.numel() for p in model.parameters())
    return f"{cfg.MODEL.META_ARCHITECTURE}: {visual} at {size} + {text}, {params / 1e6:.1f}M parameters"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the run, warm up, time ``args.steps`` plain and ``args.steps`` instrumented steps;
    returns the figures (see :func:`print_table`)."""
    opts = build_opts(args)
    tmp = None
    if args.synthetic_data:
        probe = setup_cfg(args.config_file, opts)
        tmp = tempfile.TemporaryDirectory(prefix="unipt_bench_")
        write_synthetic_cuhk_pedes(tmp.name, args.synthetic_data, tuple(probe.INPUT.SIZE_TRAIN))
        opts += ["DATASETS.ROOT", tmp.name, "DATASETS.NAMES", '("CUHKPEDES",)', "DATASETS.TESTS", "()"]
    opts += ["MODEL.WEIGHTS", ""]
    try:
        cfg = setup_cfg(args.config_file, opts, freeze=False)
        torch.manual_seed(max(0, int(cfg.SEED)))
        device = torch.device(cfg.MODEL.DEVICE)
        if args.threads:
            torch.set_num_threads(args.threads)
        if device.type == "cuda":
            set_tf32(bool(cfg.TF32))
        if cfg.DETERMINISTIC:
            use_deterministic_kernels()

        loader = UniPTTrainer.build_train_loader(cfg)
        if cfg.MODEL.HEADS.NUM_CLASSES == 0:
            cfg.MODEL.HEADS.NUM_CLASSES = loader.dataset.num_classes
        iters_per_epoch = len(loader.dataset) // int(cfg.SOLVER.IMS_PER_BATCH)
        cfg.freeze()
        model = UniPTTrainer.build_model(cfg)
        summary = _model_summary(cfg, model)
        optimizer, param_wrapper = UniPTTrainer.build_optimizer(cfg, model)
        # Schedule horizon at least the benchmark's length, so the learning rate never reaches 0 (a
        # frozen model trains at a different speed on the CPU than one whose weights move).
        horizon = -(-(args.warmup + 2 * args.steps + 1) // max(1, int(cfg.SOLVER.MAX_EPOCH)))
        scheds = UniPTTrainer.build_lr_scheduler(cfg, optimizer, max(1, iters_per_epoch, horizon))
        iter_sched = scheds.get("iter_sched")
        trainer = UniPTTrainer.build_step_trainer(cfg, model, loader, optimizer, param_wrapper)
        batch = int(cfg.SOLVER.IMS_PER_BATCH)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

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
                phases.append(instrumented_step(trainer, iter_sched, storage, device))
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    finally:
        if tmp is not None:
            tmp.cleanup()

    mean = {k: statistics.fmean(p[k] for p in phases) for k in PHASES}
    step = sum(mean.values())
    return {
        "config": args.config_file, "opts": list(args.opts), "paper_model": bool(args.paper_model),
        "dtype_flag": args.dtype or None,
        "model": summary, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": trainer.amp, "amp_dtype": str(cfg.SOLVER.AMP.DTYPE) if trainer.amp else None,
        "accum_steps": trainer.accum_steps, "batch": batch, "num_workers": int(cfg.DATALOADER.NUM_WORKERS),
        "torch_threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
        "plain_step_s": statistics.fmean(plain), "plain_median_step_s": statistics.median(plain),
        "plain_samples_per_s": batch / statistics.fmean(plain),
        "instrumented_step_s": step, "instrumented_samples_per_s": batch / step,
        "phase_s": mean, "phase_share": {k: v / step for k, v in mean.items()},
        "outside_share": (mean["data"] + mean["other"]) / step,
        "peak_gpu_mem_bytes": peak,
    }


def print_table(r: dict[str, Any]) -> None:
    """The figures of :func:`run` as text."""
    flags = (" --paper-model" if r.get("paper_model") else "") + \
        (f" --dtype {r['dtype_flag']}" if r.get("dtype_flag") else "")
    print(f"config {r['config']}{flags} {' '.join(r['opts'])}".rstrip())
    print(f"model {r['model']}")
    amp = f"True ({r['amp_dtype']})" if r["amp"] else "False"
    accum = f"  accum {r['accum_steps']}" if r["accum_steps"] > 1 else ""
    print(f"device {r['device_name']}  AMP {amp}  batch {r['batch']}{accum}  workers {r['num_workers']}  "
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
    if r["peak_gpu_mem_bytes"] is not None:
        print(f"peak GPU memory (torch.cuda.max_memory_allocated): {r['peak_gpu_mem_bytes'] / 1024 ** 3:.2f} GiB")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="a UniPT config (configs/...)")
    p.add_argument("--synthetic-data", type=int, default=0, metavar="N",
                   help="train on a temporary CUHK-PEDES-format dataset of N random images (default 0 = "
                        "use the config's DATASETS)")
    p.add_argument("--paper-model", action="store_true",
                   help="the paper's model with random weights: ViT-B/16 at 384x128 + a BERT-base-sized text "
                        "encoder, paper head sizes, SOLVER.IMS_PER_BATCH 64, AMP on (no weight files needed)")
    p.add_argument("--dtype", choices=("float16", "bfloat16"), default="",
                   help="mixed-precision dtype (sets SOLVER.AMP.DTYPE; AMP itself is SOLVER.AMP.ENABLED)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default 10)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0 = torch's choice)")
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ... (applied last)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    flags = [o for o in args.opts if o.startswith("--")]
    if flags:
        raise SystemExit(f"{flags[0]} comes after the KEY VALUE overrides: put the options (--json, --steps, ...) "
                         f"before them")
    if args.synthetic_data and args.synthetic_data < 4:
        raise SystemExit("--synthetic-data needs at least 4 images")
    try:
        r = run(args)
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print_table(r)
    if args.json:
        from unipt_plugin.utils.io import atomic_write_json
        atomic_write_json(args.json, r)


if __name__ == "__main__":
    main()
