#!/usr/bin/env python
"""Text tokens per batch (B x L) with dynamic padding versus fixed padding to MAX_LENGTH.

Captions: the built-in demo's human-style synthetic captions (``unipt_plugin.synthetic``:
``sample_identity`` + ``describe``, 24.8 words on average with the default seed, against 23.5
for CUHK-PEDES), shuffled into batches of ``--batch-size``. Each batch is tokenised twice with
the project's tokenizer (``build_tokenizer``), once with INPUT.TEXT.PADDING "longest"
(the batch's longest caption rounded up to ``--pad-multiple``, at most ``--max-length``) and
once with "max_length" (always ``--max-length``), and B x L is summed over the batches. Also
printed: the real (non-padding) tokens, i.e. the share of each layout that is padding.

Training batches are random (as the training sampler draws them). Test batches are made the way
``build_t2i_test_loader`` makes them, queries sorted by caption length (``--test-batch-size``,
default 256 as the paper configs' TEST.IMS_PER_BATCH); they are reported on a second line.

The text encoder's cost per layer grows with B x L (and its attention with B x L^2), so the
ratio is the saving of text-side compute and of the token tensors' memory.

Example:
    python tools/benchmark_padding.py --batches 200 --batch-size 64
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

# Run from a checkout without installing: the repository root holds unipt_plugin/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import unipt_plugin  # noqa: E402,F401  (fast-reid compat first)
from unipt_plugin.config import get_unipt_cfg  # noqa: E402
from unipt_plugin.data.tokenizer import build_tokenizer  # noqa: E402
from unipt_plugin.synthetic.attributes import sample_identity  # noqa: E402
from unipt_plugin.synthetic.captions import describe  # noqa: E402


def synthetic_captions(num: int, seed: int) -> list[str]:
    """``num`` captions of random synthetic people (one caption each), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [describe(sample_identity(rng), rng) for _ in range(num)]


def count_tokens(captions: list[str], batch_size: int, max_length: int, pad_multiple: int,
                 tokenizer: str = "bert") -> dict[str, float]:
    """Sum over consecutive batches of B x L for both paddings, plus real tokens and widths.

    Returns {"batches", "dynamic", "fixed", "real", "attn_dynamic", "attn_fixed",
    "mean_width_dynamic", "ratio", "attn_ratio"}: "dynamic" / "fixed" are total tokens (B x L
    summed), "attn_*" attention scores per head and layer (B x L^2 summed), "ratio" = fixed /
    dynamic tokens, "attn_ratio" the same for attention scores.
    """
    toks = {}
    for mode in ("longest", "max_length"):
        cfg = get_unipt_cfg()
        cfg.INPUT.TEXT.TOKENIZER = tokenizer
        cfg.INPUT.TEXT.MAX_LENGTH = max_length
        cfg.INPUT.TEXT.PADDING = mode
        cfg.INPUT.TEXT.PAD_MULTIPLE = pad_multiple
        toks[mode] = build_tokenizer(cfg, warn_every=10 ** 9)
    totals = {"dynamic": 0, "fixed": 0, "real": 0, "attn_dynamic": 0, "attn_fixed": 0}
    widths = []
    num_batches = len(captions) // batch_size
    for i in range(num_batches):
        batch = captions[i * batch_size:(i + 1) * batch_size]
        dyn = toks["longest"](batch)
        fix = toks["max_length"](batch)
        totals["dynamic"] += dyn["input_ids"].numel()
        totals["fixed"] += fix["input_ids"].numel()
        totals["real"] += int(fix["attention_mask"].sum())
        totals["attn_dynamic"] += dyn["input_ids"].numel() * dyn["input_ids"].shape[1]
        totals["attn_fixed"] += fix["input_ids"].numel() * fix["input_ids"].shape[1]
        widths.append(dyn["input_ids"].shape[1])
    return {"batches": num_batches, **{k: float(v) for k, v in totals.items()},
            "mean_width_dynamic": float(np.mean(widths)) if widths else 0.0,
            "ratio": totals["fixed"] / max(1, totals["dynamic"]),
            "attn_ratio": totals["attn_fixed"] / max(1, totals["attn_dynamic"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=200, help="number of batches (default 200)")
    p.add_argument("--batch-size", type=int, default=64, help="captions per batch (default 64, the paper's)")
    p.add_argument("--max-length", type=int, default=100, help="INPUT.TEXT.MAX_LENGTH (default 100, the paper's)")
    p.add_argument("--pad-multiple", type=int, default=8, help="INPUT.TEXT.PAD_MULTIPLE (default 8)")
    p.add_argument("--tokenizer", default="bert", choices=("bert", "clip"), help="INPUT.TEXT.TOKENIZER")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic captions")
    p.add_argument("--test-batch-size", type=int, default=256, help="captions per test batch (default 256)")
    args = p.parse_args(argv)
    if args.batches < 1 or args.batch_size < 1:
        p.error("--batches and --batch-size must be >= 1")

    captions = synthetic_captions(args.batches * args.batch_size, args.seed)
    words = [len(c.split()) for c in captions]
    r = count_tokens(captions, args.batch_size, args.max_length, args.pad_multiple, args.tokenizer)
    n = r["batches"]
    print(f"captions: {len(captions)} synthetic (unipt_plugin.synthetic), {np.mean(words):.1f} words on average "
          f"(min {min(words)}, max {max(words)}); {args.tokenizer} tokenizer, {r['real'] / len(captions):.1f} "
          f"tokens per caption incl. start/end")
    print(f"batches: {n} x {args.batch_size} captions, MAX_LENGTH {args.max_length}, PAD_MULTIPLE {args.pad_multiple}")
    print(f"fixed padding (max_length): {r['fixed'] / n:9.1f} tokens per batch (L = {args.max_length}), "
          f"{100 * (1 - r['real'] / r['fixed']):.1f}% padding")
    print(f"dynamic padding (longest):  {r['dynamic'] / n:9.1f} tokens per batch (mean L = "
          f"{r['mean_width_dynamic']:.1f}), {100 * (1 - r['real'] / r['dynamic']):.1f}% padding")
    print(f"ratio fixed / dynamic:      {r['ratio']:9.2f}x fewer text tokens per batch (B x L), "
          f"{r['attn_ratio']:.2f}x fewer attention scores (B x L^2)")
    ordered = sorted(captions, key=len)  # the test loader's query order (build_t2i_test_loader)
    t = count_tokens(ordered, args.test_batch_size, args.max_length, args.pad_multiple, args.tokenizer)
    print(f"test batches of {args.test_batch_size}, queries sorted by length: {t['fixed'] / max(1, t['batches']):.1f} "
          f"fixed vs {t['dynamic'] / max(1, t['batches']):.1f} dynamic tokens per batch: {t['ratio']:.2f}x fewer")
    return 0
    ordered = sorted(captions, key=len)  # the test loader's order (build_t2i_test_loader)
    t = count_tokens(ordered, args.test_batch_size, args.max_length, args.pad_multiple, args.tokenizer)
    print(f"test batches of {args.test_batch_size}, sorted by length: {t['fixed'] / max(1, t['batches']):9.1f} fixed vs "
          f"{t['dynamic'] / max(1, t['batches']):9.1f} dynamic tokens per batch: {t['ratio']:.2f}x fewer")


if __name__ == "__main__":
    raise SystemExit(main())
