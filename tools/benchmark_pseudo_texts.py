#!/usr/bin/env python
"""Throughput of the conquer stage versus CLIP image encoding alone, same images, same run.

    python tools/benchmark_pseudo_texts.py --model ViT-B-16 --weights /models/ViT-B-16.pt --device cuda
    python tools/benchmark_pseudo_texts.py --model ViT-B-16 --random-init-ok --device cuda   # speed only

Both measurements use the same preprocessed batches already on the device (image decoding is a
separate, parallel DataLoader cost), alternate round by round, and report the median:
  encode  = model.encode_image (the floor: what CLIP costs anyway)
  conquer = encode + cosine similarities to every class + required argmax / optional softmax
            threshold + the transfer of the choices to the host (what the generator runs)
  combine = captions from the choices (host side, reported separately)
Target: conquer >= 0.9 x encode.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import unipt_plugin  # noqa: E402,F401
from unipt_plugin.pseudo_text.clip_model import load_frozen_clip  # noqa: E402
from unipt_plugin.pseudo_text.combine import CaptionBuilder  # noqa: E402
from unipt_plugin.pseudo_text.conquer import ClipConquer  # noqa: E402
from unipt_plugin.pseudo_text.vocabulary import load_vocabulary  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--model-config", default="")
    p.add_argument("--weights", default="")
    p.add_argument("--random-init-ok", action="store_true")
    p.add_argument("--vocabulary", default="")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-batches", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    device = torch.device(args.device)
    vocab = load_vocabulary(args.vocabulary or None)
    model, tok = load_frozen_clip(args.model, args.weights, args.model_config, device, "auto", args.random_init_ok)
    t0 = time.perf_counter()
    conquer = ClipConquer(model, tok, vocab, device)
    sync(device)
    prompt_s = time.perf_counter() - t0
    size = model.visual.image_size
    h, w = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch_size, 3, h, w, generator=gen).to(device) for _ in range(args.num_batches)]
    n = args.batch_size * args.num_batches

    def run_encode():
        with torch.no_grad():
            for b in batches:
                conquer.encode_images(b)
        sync(device)

    selections = []

    def run_conquer():
        selections.clear()
        for b in batches:
            selections.append(conquer(b))
        sync(device)

    run_encode(), run_conquer()  # warm-up
    enc, con = [], []
    for _ in range(args.rounds):
        for fn, out in ((run_encode, enc), (run_conquer, con)):
            t = time.perf_counter()
            fn()
            out.append(n / (time.perf_counter() - t))
    builder = CaptionBuilder(vocab)
    t = time.perf_counter()
    for k, sel in enumerate(selections):
        for i, ids in enumerate(sel.ids):
            builder.captions(ids, f"{k}/{i}", 0, 2)
    combine = n / (time.perf_counter() - t)
    e, c = statistics.median(enc), statistics.median(con)
    name = args.model_config or args.model
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; model {name}; "
          f"{vocab.num_classes} classes; batch {args.batch_size} x {args.num_batches}; {args.rounds} rounds (median)")
    print(f"prompt embeddings (once per run): {prompt_s:.2f} s")
    print(f"CLIP image encoding alone: {e:9.1f} images/s")
    print(f"conquer stage:             {c:9.1f} images/s")
    print(f"ratio conquer / encode:    {c / e:9.3f}  (target >= 0.9)")
    print(f"combine (2 captions/img):  {combine:9.1f} images/s on the host")


if __name__ == "__main__":
    main()
