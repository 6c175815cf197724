#!/usr/bin/env python
"""Scene indexing throughput and HOG's recall, on synthetic street scenes (no downloads).

Renders ``--images`` synthetic street scenes of ``--size`` (default 720x1280, 2-4 people each,
``unipt_plugin.synthetic.scenes.render_scene_images``, people of the synthetic world with their
true boxes) and ``--video-frames`` frames of a synthetic street video, then measures:

1. **HOG frames/s**: ``HogDetector.detect`` (``tools/search.py index --detector hog`` with its
   defaults, or ``--hog-side`` / ``--hog-scale``) on every scene, one frame at a time;
2. **HOG recall**: the fraction of the true boxes that some HOG box overlaps with IoU >= 0.5
   (``--iou``), and the precision (the fraction of HOG boxes that overlap a true box so);
3. **crops/s encoded**: the image encoder of ``--config-file`` (randomly initialised weights of
   that architecture unless ``--weights``: the time does not depend on the weight values) on
   the true-box crops of the scenes, in batches of ``--batch-size``, transform included;
4. **end to end**: ``pipeline.index_folder`` on the video with ``--detector hog`` at ``--fps``
   (sampling, detection, cropping, encoding, de-duplication, crops written, index saved):
   sampled frames/s.

Nothing is asserted; the figures are printed.

    python tools/benchmark_scenes.py                       # 24 scenes 1280x720, a 10 s video
    python tools/benchmark_scenes.py --images 8 --threads 2
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_encoder(config_file: str, weights: str, batch_size: int):
    """(cfg, SearchEncoder, description of the weights)."""
    import torch
    from fastreid.modeling.meta_arch import build_model

    from unipt_plugin.engine import setup_cfg
    from unipt_plugin.modeling.weight_loading import encoder_weights_skipped
    from unipt_plugin.search import SearchEncoder, load_model

    opts = ["MODEL.DEVICE", "cpu"] + (["MODEL.WEIGHTS", weights] if weights else [])
    cfg = setup_cfg(config_file, opts, freeze=True)
    if weights:
        model, what = load_model(cfg), f"weights {weights}"
    else:
        torch.manual_seed(0)
        with encoder_weights_skipped():
            model = build_model(cfg)
        model.eval()
        what = "randomly initialised weights (no --weights)"
    return cfg, SearchEncoder(model, cfg, batch_size=batch_size, num_threads=1), what


def recall_precision(dets_per_frame, rows, iou: float) -> tuple[int, int, int, int]:
    """(true boxes found, true boxes, HOG boxes on a true box, HOG boxes) at IoU >= ``iou``."""
    from unipt_plugin.search.detectors import box_iou

    found = total = good = boxes = 0
    for frame, dets in enumerate(dets_per_frame, 1):
        truth = [(r.x, r.y, r.w, r.h) for r in rows if r.frame == frame]
        total += len(truth)
        boxes += len(dets)
        found += sum(any(box_iou(t, d.box) >= iou for d in dets) for t in truth)
        good += sum(any(box_iou(t, d.box) >= iou for t in truth) for d in dets)
    return found, total, good, boxes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24, help="synthetic scenes rendered (default 24)")
    p.add_argument("--size", default="720x1280", help="scene size HxW (default 720x1280)")
    p.add_argument("--video-frames", type=int, default=80, help="frames of the synthetic video (default 80: 10 s at 8 fps)")
    p.add_argument("--fps", type=float, default=2.0, help="video sampling rate of the end-to-end run (default 2)")
    p.add_argument("--hog-side", type=int, default=640, help="HOG working size (default 640, as `index`)")
    p.add_argument("--hog-scale", type=float, default=1.05, help="HOG pyramid step (default 1.05, as `index`)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU for a true box to count as found (default 0.5)")
    p.add_argument("--config-file", default="configs/Synthetic/finetune.yml",
                   help="model whose image encoder is timed (default configs/Synthetic/finetune.yml, the demo's)")
    p.add_argument("--weights", default="", help="checkpoint (default: random weights of the config's model)")
    p.add_argument("--batch-size", type=int, default=32, help="crops per forward pass (default 32)")
    p.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (default 1)")
    p.add_argument("--seed", type=int, default=11, help="scene seed (default 11)")
    p.add_argument("--work-dir", default=None, help="where scenes and the index go (default: a temporary folder)")
    args = p.parse_args(argv)

    import cv2
    import torch
    from PIL import Image

    import unipt_plugin  # noqa: F401
    from unipt_plugin.search.detectors import DetectorOptions, HogDetector
    from unipt_plugin.search.pipeline import SceneOptions, index_folder
    from unipt_plugin.synthetic.attributes import sample_identity
    from unipt_plugin.synthetic.scenes import render_scene_images, render_scene_video

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    H, W = (int(v) for v in args.size.lower().split("x"))
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_scenes_")
    try:
        rng = np.random.default_rng(args.seed)
        ids = [sample_identity(rng) for _ in range(16)]
        t0 = time.perf_counter()
        scenes = render_scene_images(os.path.join(work, "scenes"), ids, num_images=args.images, size=(H, W),
                                     people_per_image=(2, 4), seed=args.seed)
        video = render_scene_video(os.path.join(work, "video"), ids, num_frames=args.video_frames, fps=8.0,
                                   size=(H, W), num_people=3, seed=args.seed)
        print(f"rendered {args.images} scenes ({len(scenes.rows)} people) and a {args.video_frames}-frame video "
              f"at {W}x{H} in {time.perf_counter() - t0:.1f} s; {args.threads} thread(s)")

        frames = [np.asarray(Image.open(f).convert("RGB")) for f in scenes.files]
        hog = HogDetector(DetectorOptions(hog_side=args.hog_side, hog_scale=args.hog_scale))
        hog.detect(frames[0])  # warm-up
        dets, t0 = [], time.perf_counter()
        for img in frames:
            dets.append(hog.detect(img))
        hog_s = time.perf_counter() - t0
        found, total, good, boxes = recall_precision(dets, scenes.rows, args.iou)
        print(f"HOG at {W}x{H} (--hog-side {args.hog_side}, --hog-scale {args.hog_scale}): "
              f"{len(frames) / hog_s:.2f} frames/s ({1000 * hog_s / len(frames):.0f} ms per frame)")
        print(f"HOG recall at IoU >= {args.iou}: {found}/{total} = {found / max(1, total):.3f}; "
              f"precision {good}/{boxes} = {good / max(1, boxes):.3f}")

        cfg, encoder, what = build_encoder(args.config_file, args.weights, args.batch_size)
        crops = [Image.open(scenes.files[r.frame - 1]).convert("RGB").crop((int(r.x), int(r.y), int(r.x + r.w),
                                                                             int(r.y + r.h))) for r in scenes.rows]
        with torch.inference_mode():
            encoder.encode_image_tensor(torch.stack([encoder.transform(c) for c in crops[:2]]))  # warm-up
            t0 = time.perf_counter()
            for start in range(0, len(crops), args.batch_size):
                chunk = crops[start:start + args.batch_size]
                encoder.encode_image_tensor(torch.stack([encoder.transform(c) for c in chunk]))
            enc_s = time.perf_counter() - t0
        print(f"encoding ({cfg.MODEL.META_ARCHITECTURE} of {args.config_file}, {what}; input "
              f"{tuple(cfg.INPUT.SIZE_TEST)}): {len(crops) / enc_s:.1f} crops/s in batches of {args.batch_size}")

        index_dir = os.path.join(work, "index")
        shutil.rmtree(index_dir, ignore_errors=True)
        t0 = time.perf_counter()
        try:
            report = index_folder(encoder, cfg, video.files[0], index_dir,
                                  options=SceneOptions(detector="hog", fps=args.fps,
                                                       detector_options=DetectorOptions(hog_side=args.hog_side,
                                                                                        hog_scale=args.hog_scale)))
        except ValueError as e:  # HOG kept nobody: nothing to index
            print(f"end to end: {e}")
            return 0
        e2e_s = time.perf_counter() - t0
        print(f"end to end (index --detector hog --fps {args.fps:g}, a {args.video_frames / 8:.0f} s video): "
              f"{report.frames} frames sampled, {report.detections} boxes, {report.duplicates} near-duplicates "
              f"dropped, {report.total} entries in {e2e_s:.1f} s = {report.frames / e2e_s:.2f} sampled frames/s")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
