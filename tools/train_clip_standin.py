#!/usr/bin/env python
"""Train the small CLIP stand-in on the labeled TRAIN split and measure its attribute selection accuracy.

    # train (writes clip_standin.pt + clip_standin.json), then score the conquer stage on the test split
    python tools/train_clip_standin.py --root datasets --output datasets/clip_standin/clip_standin.pt \
        --accuracy-md datasets/clip_standin/attribute_accuracy.md
    # the pseudo-text tool then uses it as
    python tools/generate_pseudo_texts.py --images datasets/LUPerson-T/imgs --output ... \
        --model-config datasets/clip_standin/clip_standin.json --weights datasets/clip_standin/clip_standin.pt
    # only score existing weights
    python tools/train_clip_standin.py --skip-train --output datasets/clip_standin/clip_standin.pt --accuracy-md acc.md

No pretrained CLIP can be downloaded in the built-in demo, so its conquer stage uses this model.
"""
import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import unipt_plugin  # noqa: E402,F401  (compat shims before fastreid)
from unipt_plugin.synthetic.clip_standin import (  # noqa: E402
    accuracy_markdown,
    attribute_accuracy,
    standin_model_config,
    train_clip_standin,
)
from unipt_plugin.utils.io import atomic_write_text  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    d = standin_model_config()
    v, t = d["vision_cfg"], d["text_cfg"]
    p = argparse.ArgumentParser(description="Train a small open_clip CLIP on the labeled TRAIN split (CUHK-PEDES format) "
                                            "and report its per-attribute selection accuracy in the pseudo-text conquer stage.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", default="datasets", help="datasets root holding CUHK-PEDES/reid_raw.json, imgs/ and attributes.json")
    p.add_argument("--output", default="datasets/clip_standin/clip_standin.pt",
                   help="weights file to write (.pt); the open_clip model config goes next to it as .json")
    p.add_argument("--skip-train", action="store_true", help="do not train; score the existing --output weights")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="", help="an open_clip architecture name instead of the small config below")
    g.add_argument("--image-size", type=int, nargs=2, default=list(v["image_size"]), metavar=("H", "W"))
    g.add_argument("--patch-size", type=int, default=v["patch_size"])
    g.add_argument("--vision-width", type=int, default=v["width"])
    g.add_argument("--vision-layers", type=int, default=v["layers"])
    g.add_argument("--vision-head-width", type=int, default=v["head_width"])
    g.add_argument("--text-width", type=int, default=t["width"])
    g.add_argument("--text-layers", type=int, default=t["layers"])
    g.add_argument("--text-heads", type=int, default=t["heads"])
    g.add_argument("--embed-dim", type=int, default=d["embed_dim"])
    g.add_argument("--context-length", type=int, default=t["context_length"])
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=8, help="passes over every training caption")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=5e-4, help="AdamW peak learning rate (warm-up, then cosine to 0)")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--warmup-fraction", type=float, default=0.1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--resize-mode", default="longest", choices=("longest", "shortest", "squash"),
                   help="how images are fitted to the image size (use the same in generate_pseudo_texts.py)")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    g.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("attribute accuracy")
    g.add_argument("--eval-split", default="test", choices=("test", "val"), help="labeled split to score")
    g.add_argument("--skip-accuracy", action="store_true", help="do not measure the attribute accuracy")
    g.add_argument("--vocabulary", default="", help="attribute vocabulary YAML (default: the pseudo-text package's)")
    g.add_argument("--threshold", type=float, default=0.9, help="optional-attribute probability threshold (as the tool)")
    g.add_argument("--logit-scale", type=float, default=0.0, help="softmax scale for optional attributes (0 = the model's)")
    g.add_argument("--accuracy-md", default="", help="write the accuracy table as Markdown to this file")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The plugin's INFO lines: with --no-progress, the training progress every ~10 s.
    logging.getLogger("unipt_plugin").setLevel(logging.INFO)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not args.skip_train:
        config = None
        if not args.arch:
            config = standin_model_config(args.image_size, args.patch_size, args.vision_width, args.vision_layers,
                                          args.vision_head_width, args.text_width, args.text_layers, args.text_heads,
                                          args.embed_dim, args.context_length)
        start = time.time()
        path = train_clip_standin(args.root, args.output, model_config=config, arch=args.arch, image_size=args.image_size,
                                  epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                                  warmup_fraction=args.warmup_fraction, seed=args.seed, device=args.device,
                                  resize_mode=args.resize_mode, num_workers=args.num_workers,
                                  show_progress=not args.no_progress)
        print(f"CLIP stand-in trained in {time.time() - start:.1f} s -> {path} (+ {path.with_suffix('.json')})")
    if args.skip_accuracy:
        return
    start = time.time()
    rows = attribute_accuracy(args.root, args.output, split=args.eval_split, vocabulary=args.vocabulary or None,
                              threshold=args.threshold, logit_scale=args.logit_scale or None, resize_mode=args.resize_mode,
                              batch_size=args.batch_size, num_workers=args.num_workers, device=args.device)
    table = accuracy_markdown(rows)
    print(f"attribute selection accuracy on the {args.eval_split} split ({time.time() - start:.1f} s):\n{table}")
    if args.accuracy_md:
        atomic_write_text(args.accuracy_md, f"# CLIP stand-in: attribute selection accuracy ({args.eval_split} split)\n\n"
                                            f"Weights: `{args.output}`; threshold {args.threshold}.\n\n{table}")
        print(f"wrote {args.accuracy_md}")


if __name__ == "__main__":
    main()
