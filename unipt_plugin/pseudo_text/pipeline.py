"""Command-line pipeline of ``tools/generate_pseudo_texts.py``: arguments, one shard, merge, report.

Kept in the library so the tests drive exactly what the tool runs.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import torch

from .clip_model import load_frozen_clip
from .combine import CaptionBuilder
from .conquer import ClipConquer
from .generate import Conqueror, RunSettings, default_work_dir, files_sha256, merge_shards, run_shard
from .image_list import clip_transform, list_images, read_list_file
from .report import write_report
from .templates import build_templates
from .vocabulary import load_vocabulary

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "run_one_shard", "run_merge", "resolve_inputs"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Generate LUPerson-T pseudo texts (divide, conquer, combine) for a folder "
                                            "or list of person images with a frozen open_clip model.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", default="", help="folder of images (searched recursively); paths in the output are relative to it")
    src.add_argument("--list", default="", help="text file of image paths (one per line) relative to --image-root")
    p.add_argument("--image-root", default="", help="root of the paths in --list (default: the list file's folder)")
    p.add_argument("--output", required=True, help="annotation JSON to write: [{\"file_path\", \"captions\"}]")
    p.add_argument("--work-dir", default="", help="folder of per-chunk results (default: <output>.parts)")
    p.add_argument("--model", default="ViT-B-16", help="open_clip model name (paper: ViT-B-16)")
    p.add_argument("--weights", default=None, help="local CLIP weights file (OpenAI .pt, open_clip .pt/.safetensors)")
    p.add_argument("--random-init-ok", action="store_true", help="allow --weights '' (random init: tests and demos only)")
    p.add_argument("--model-config", default="", help="JSON open_clip model config for a custom model (replaces --model)")
    p.add_argument("--quick-gelu", default="auto", choices=("auto", "on", "off"),
                   help="QuickGELU activations; auto = on for TorchScript (OpenAI) weights files")
    p.add_argument("--vocabulary", default="", help="attribute vocabulary YAML (default: the one shipped with the package)")
    p.add_argument("--threshold", type=float, default=0.9, help="softmax probability an optional attribute must exceed (paper: 0.9)")
    p.add_argument("--logit-scale", type=float, default=0.0, help="softmax scale for optional attributes (0 = the model's own)")
    p.add_argument("--captions-per-image", type=int, default=2, help="captions written per image")
    p.add_argument("--num-templates", type=int, default=0, help="use this many of the generated templates (0 = all; paper: 456)")
    p.add_argument("--resize-mode", default="longest", choices=("longest", "shortest", "squash"),
                   help="longest = pad to square (keeps the whole person); shortest = open_clip's centre crop")
    p.add_argument("--seed", type=int, default=0, help="seed of template and synonym draws")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader worker processes decoding images")
    p.add_argument("--chunk-size", type=int, default=2048, help="images per resumable output chunk")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shard", type=int, default=0, help="index of this shard")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards; with 1 the merge runs at the end")
    p.add_argument("--merge", action="store_true", help="only merge finished shards (and write the report)")
    p.add_argument("--report-dir", default="", help="write report.md/json and PNG charts here after the merge")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per machine, one per GPU (or CPU processes with --device cpu), via unipt_plugin.engine.launch")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto")
    return p


def resolve_inputs(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """(image root, sorted relative image paths) from --images or --list."""
    if args.images:
        return Path(args.images), list_images(args.images, what="--images")
    if args.list:
        root = Path(args.image_root) if args.image_root else Path(args.list).parent
        return root, read_list_file(args.list)
    raise SystemExit("give --images DIR or --list FILE")


def _settings(args: argparse.Namespace, vocab_sha: str, files: list[str]) -> RunSettings:
    for name in ("captions_per_image", "chunk_size", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return RunSettings(
        model=args.model_config and Path(args.model_config).name or args.model,
        weights=args.weights or "",
        vocabulary_sha256=vocab_sha,
        threshold=args.threshold,
        seed=args.seed,
        captions_per_image=args.captions_per_image,
        num_templates=args.num_templates,
        resize_mode=args.resize_mode,
        chunk_size=args.chunk_size,
        files_sha256=files_sha256(files),
        num_images=len(files),
    )


def _check_weights_flag(args: argparse.Namespace) -> None:
    if args.weights is None:
        raise SystemExit("--weights is required (a local CLIP weights file; '' with --random-init-ok for tests)")
    if args.weights == "" and not args.random_init_ok:
        raise SystemExit("--weights '' (random initialisation) needs --random-init-ok")


def run_one_shard(args: argparse.Namespace, shard: int, num_shards: int, device: str, stop_after_chunks: int | None = None) -> dict:
    """Run shard ``shard`` of ``num_shards`` of the inputs in ``args``."""
    _check_weights_flag(args)
    vocab = load_vocabulary(args.vocabulary or None)
    root, files = resolve_inputs(args)
    settings = _settings(args, vocab.sha256, files)
    builder = CaptionBuilder(vocab, build_templates(args.num_templates, args.seed))

    def make() -> Conqueror:
        model, tokenizer = load_frozen_clip(args.model, args.weights, args.model_config, device, args.quick_gelu, args.random_init_ok)
        conquer = ClipConquer(model, tokenizer, vocab, device, args.threshold, args.logit_scale or None)
        size = model.visual.image_size
        h, w = (size, size) if isinstance(size, int) else size
        return Conqueror(conquer=conquer, transform=clip_transform(model, args.resize_mode), image_shape=(3, h, w))

    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir(args.output)
    return run_shard(files, root, work_dir, shard, num_shards, settings, builder, make, args.batch_size,
                     args.num_workers, not args.no_progress, stop_after_chunks)


def run_merge(args: argparse.Namespace) -> dict | None:
    """Merge every finished shard into --output (+ sidecar, failed list) and write the report."""
    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir(args.output)
    stats = merge_shards(work_dir, args.output)
    summary = None
    if args.report_dir:
        vocab = load_vocabulary(args.vocabulary or None)
        summary = write_report(stats, vocab, args.report_dir, len(build_templates(args.num_templates, args.seed)))
    print(f"{stats.num_images} images captioned ({stats.num_captions} captions, {stats.num_distinct_captions} distinct), "
          f"{len(stats.failed)} failed -> {args.output}")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """Single-process entry (no launch): one shard, then the merge when the run has one shard."""
    args = build_parser().parse_args(argv)
    if not args.merge:
        stats = run_one_shard(args, args.shard, args.num_shards, args.device)
        print(f"shard {args.shard}/{args.num_shards}: {stats}")
    if args.merge or args.num_shards == 1:
        run_merge(args)
