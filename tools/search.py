#!/usr/bin/env python
"""Search people by description with a trained UniPT checkpoint (see docs/search.md).

    # encode a folder of images (recursive) into an index; re-running adds only new files
    python tools/search.py index --config-file CFG --weights model_final.pth \\
        --images photos/ --index photos.index [--kind flat|ivf|hnsw]
    # people found in scene photos and videos (HOG, an ONNX detector or MOT box files)
    python tools/search.py index --config-file CFG --weights model_final.pth \\
        --images street_videos/ --index street.index --detector hog --fps 2
    # top-k images for one or more descriptions: text, JSON, PNG grid, HTML page
    python tools/search.py query --config-file CFG --weights model_final.pth --index photos.index \\
        --text "a woman in a red coat carrying a black bag" --topk 10 --grid top.png --html top.html
    # search a registered dataset's test gallery directly (no index)
    python tools/search.py query --config-file CFG --weights model_final.pth \\
        --gallery-from-dataset CUHKPEDES --text "..."
    # a local search page + JSON API (model and index loaded once; http://127.0.0.1:8000/)
    python tools/search.py serve --config-file CFG --weights model_final.pth --index photos.index
    # both encoders as torch.export programs (.pt2) and ONNX models, checked against the model
    python tools/search.py export --config-file CFG --weights model_final.pth --out exported/
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-file", required=True, metavar="FILE", help="the checkpoint's config (yaml)")
    p.add_argument("--weights", default="", metavar="FILE",
                   help="checkpoint (.pth / .safetensors); default: the config's MODEL.WEIGHTS")
    p.add_argument("--batch-size", type=int, default=32, help="images or queries per forward pass (default 32)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides as KEY VALUE pairs, e.g. MODEL.DEVICE cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="encode the people in a folder of images and videos into an index "
                                     "(adds only new files)")
    p.add_argument("--images", required=True, metavar="DIR",
                   help="folder searched recursively for images (.jpg .jpeg .png .bmp .webp .tif .tiff) and "
                        "videos (.mp4 .avi .mkv .mov .webm .m4v .mpg .mpeg .wmv .flv .ts), or one such file")
    p.add_argument("--detector", default="auto", metavar="SPEC",
                   help="how people are found: none (each image is one person crop), hog (OpenCV's HOG "
                        "pedestrian detector), onnx:FILE (a person detector exported to ONNX), boxes:FILE "
                        "(MOT det.txt/gt.txt boxes) or auto (default: none for images, hog for videos)")
    p.add_argument("--min-box", type=int, default=48,
                   help="drop detected boxes lower than this many source pixels (default 48)")
    p.add_argument("--max-side", type=int, default=1280,
                   help="images and frames with a longer side above this are downscaled before detection "
                        "and cropping; boxes stay in source pixels (default 1280)")
    p.add_argument("--det-threshold", type=float, default=None,
                   help="minimum detector score kept (default: hog 0 (SVM margin), onnx 0.25, boxes: all rows)")
    p.add_argument("--nms-iou", type=float, default=0.45,
                   help="non-maximum suppression IoU of hog and onnx boxes (default 0.45)")
    p.add_argument("--person-class", type=int, default=0,
                   help="class index of 'person' in an ONNX detector's output (default 0, COCO's)")
    p.add_argument("--detector-size", type=int, default=640,
                   help="ONNX detector input side: images are letterboxed to SIZE x SIZE (default 640; a "
                        "model with a fixed input size uses its own)")
    p.add_argument("--hog-side", type=int, default=640,
                   help="HOG searches the image downscaled to this longer side; people below about 100 "
                        "pixels there are not found (default 640)")
    p.add_argument("--hog-scale", type=float, default=1.05, help="HOG image pyramid step (default 1.05)")
    p.add_argument("--fps", type=float, default=2.0,
                   help="video frames sampled per second of video; 0 = every frame (default 2)")
    p.add_argument("--dedup-iou", type=float, default=0.7,
                   help="a video crop whose box overlaps a crop kept in the previous sampled frame by more "
                        "than this IoU, and whose features' cosine with it is above --dedup-sim, is the same "
                        "person standing still: not indexed again (default 0.7)")
    p.add_argument("--dedup-sim", type=float, default=0.9,
                   help="feature cosine similarity above which such a crop is a near-duplicate (default 0.9)")
    p.add_argument("--index", required=True, metavar="DIR", help="index folder (created or extended)")
    p.add_argument("--kind", choices=("flat", "ivf", "hnsw"), default=None,
                   help="faiss index: flat (exact IndexFlatIP, default for a new index), ivf (IVF-Flat) "
                        "or hnsw (HNSW-Flat); on an existing index a new kind rebuilds it from the "
                        "stored features")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default 1024; fewer on small galleries)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists scanned per query (default 32)")
    p.add_argument("--hnsw-m", type=int, default=None, help="HNSW links per node (default 32)")
    p.add_argument("--ef-construction", type=int, default=None, help="HNSW build beam width (default 80)")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW query beam width (default 64)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_args(p)

    q = sub.add_parser("query", help="top-k images for text queries")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--index", metavar="DIR", help="index folder made by `index`")
    src.add_argument("--gallery-from-dataset", metavar="NAME",
                     help="search the test gallery of a registered dataset (e.g. CUHKPEDES) under "
                          "DATASETS.ROOT, without an index")
    q.add_argument("--text", action="append", required=True, metavar="QUERY",
                   help="a description of the person (quote it); repeat --text for several queries")
    q.add_argument("--topk", type=int, default=10, help="results per query (default 10)")
    q.add_argument("--nprobe", type=int, default=None, help="override the IVF index's nprobe")
    q.add_argument("--ef-search", type=int, default=None, help="override the HNSW index's efSearch")
    q.add_argument("--json", metavar="FILE", help="write the results as JSON ('-' = stdout)")
    q.add_argument("--grid", metavar="PNG", help="write a PNG grid of the top-k images with scores")
    q.add_argument("--html", metavar="PAGE", help="write a self-contained HTML page of the results")
    _add_model_args(q)

    e = sub.add_parser("export", help="export the image and text encoders as torch.export programs (.pt2) "
                                      "and ONNX models, checked against the eager model")
    e.add_argument("--out", required=True, metavar="DIR", help="output folder")
    e.add_argument("--formats", nargs="+", choices=("torch_export", "onnx"), default=["torch_export", "onnx"],
                   help="what to write: torch_export (image/text_encoder.pt2, torch.export.load) and/or onnx "
                        "(image/text_encoder.onnx, checked with onnxruntime); default both")
    e.add_argument("--opset", type=int, default=None,
                   help="ONNX opset version (default: torch.onnx.export's, 20 in torch 2.14)")
    e.add_argument("--atol", type=float, default=1e-4,
                   help="largest max |exported - eager| feature difference accepted (default 1e-4)")
    _add_model_args(e)

    s = sub.add_parser("serve", help="a local search page and JSON API over an index (model loaded once)")
    s.add_argument("--index", required=True, metavar="DIR", help="index folder made by `index`")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; anything else "
                        "lets anyone who can reach it query the index and see its images, no login)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    s.add_argument("--max-query-chars", type=int, default=500,
                   help="longest query accepted, in characters (default 500)")
    s.add_argument("--max-topk", type=int, default=100, help="largest k a request may ask for (default 100)")
    s.add_argument("--topk", type=int, default=10, help="the page's initial k (default 10)")
    s.add_argument("--nprobe", type=int, default=None, help="override the IVF index's nprobe")
    s.add_argument("--ef-search", type=int, default=None, help="override the HNSW index's efSearch")
    _add_model_args(s)
    return parser


def _index_params(args: argparse.Namespace) -> dict[str, int]:
    names = {"nlist": "nlist", "nprobe": "nprobe", "hnsw_m": "hnsw_m",
             "ef_construction": "ef_construction", "ef_search": "ef_search"}
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr, None) is not None}


def _setup(args: argparse.Namespace):
    from unipt_plugin.engine import setup_cfg
    from unipt_plugin.search import SearchEncoder, load_model

    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    if args.weights:
        opts += ["MODEL.WEIGHTS", args.weights]
    cfg = setup_cfg(args.config_file, opts, freeze=True)
    model = load_model(cfg)
    return cfg, model, SearchEncoder(model, cfg, batch_size=args.batch_size,
                                     num_threads=max(1, cfg.DATALOADER.NUM_WORKERS))


def _scene_options(args: argparse.Namespace):
    from unipt_plugin.search.detectors import DetectorOptions
    from unipt_plugin.search.pipeline import SceneOptions

    for name in ("min_box", "detector_size", "hog_side"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)}")
    if not 0.0 <= args.nms_iou <= 1.0:
        raise ValueError(f"--nms-iou must be in [0, 1]; got {args.nms_iou}")
    if not args.hog_scale > 1.0:
        raise ValueError(f"--hog-scale must be > 1 (the pyramid's step); got {args.hog_scale}")
    det = DetectorOptions(min_height=args.min_box, threshold=args.det_threshold, nms_iou=args.nms_iou,
                          person_class=args.person_class, detector_size=args.detector_size,
                          hog_scale=args.hog_scale, hog_side=args.hog_side)
    return det, SceneOptions(detector=args.detector, detector_options=det, max_side=args.max_side, fps=args.fps,
                             dedup_iou=args.dedup_iou, dedup_sim=args.dedup_sim)


def cmd_index(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from unipt_plugin.data.image_files import display_path
    from unipt_plugin.search import index_folder
    from unipt_plugin.search.detectors import build_detector
    from unipt_plugin.search.video import Deduplicator

    det, options = _scene_options(args)
    Deduplicator(args.dedup_iou, args.dedup_sim)  # refuses bad thresholds before the model loads
    if args.detector.strip().lower() != "auto":
        build_detector(args.detector, det).close()  # a bad spec or a missing file, before the model loads
    cfg, _, encoder = _setup(args)
    options = replace(options, detector_options=replace(det, device=str(cfg.MODEL.DEVICE)))
    report = index_folder(encoder, cfg, args.images, args.index, kind=args.kind, params=_index_params(args),
                          progress=not args.no_progress, options=options)
    print(f"{args.index}: {report.total} entries indexed ({report.encoded} new; {report.found} images and "
          f"videos found under {args.images}, {report.already} of them indexed before and kept as they were"
          f"{'; index rebuilt' if report.rebuilt else ''})")
    if report.detections or report.videos:
        print(f"detectors: images {report.detectors['images']}, videos {report.detectors['videos']}; "
              f"{report.detections} person boxes, {report.videos} video(s), {report.frames} frames sampled, "
              f"{report.duplicates} near-duplicate crops dropped")
    if report.skipped:
        print(f"skipped {len(report.skipped)} file(s) (tried again next run):")
        for s in report.skipped:
            print(f"  {display_path(s['path'])}: {s['reason']}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from unipt_plugin.data.image_files import display_path, json_dumps
    from unipt_plugin.search import (GalleryIndex, config_hash, dataset_gallery, render_grid_png, render_html,
                                     results_to_json, search_texts, weights_hash)
    from unipt_plugin.search.render import format_time
    from unipt_plugin.utils import atomic_write_text

    texts = list(args.text)
    cfg, model, encoder = _setup(args)
    if args.index:
        # refused here (IndexMismatchError) when the index was made with another config/weights
        gallery = GalleryIndex.load(args.index, config_hash(cfg), weights_hash(model.state_dict()))
        gallery.set_search_params(nprobe=args.nprobe, ef_search=args.ef_search)
    else:
        gallery = dataset_gallery(encoder, cfg, args.gallery_from_dataset)
    results = search_texts(encoder, gallery, texts, args.topk)
    if args.json == "-":
        print(json_dumps(results_to_json(results), indent=1))
    else:
        for r in results:
            note = f"  [truncated: {r.num_tokens} tokens > {cfg.INPUT.TEXT.MAX_LENGTH}]" if r.truncated else ""
            print(f"query: {r.query}{note}")
            for h in r.hits:
                where = ""
                if h.source is not None:
                    when = f" t={format_time(h.time_s)} frame {h.frame}" if h.time_s is not None else ""
                    where = f"  <- {display_path(h.source)}{when} box {list(h.box)}"
                print(f"  {h.rank:3d}  {h.score:8.4f}  {display_path(h.path)}{where}")
        if args.json:
            atomic_write_text(args.json, json_dumps(results_to_json(results), indent=1))
            print(f"wrote {args.json}")
    if args.grid:
        render_grid_png(results, args.grid)
        print(f"wrote {args.grid}", file=sys.stderr if args.json == "-" else sys.stdout)
    if args.html:
        render_html(results, args.html)
        print(f"wrote {args.html}", file=sys.stderr if args.json == "-" else sys.stdout)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from unipt_plugin.search.export import ExportMismatchError, export_encoders

    if args.atol <= 0:
        raise ValueError(f"--atol {args.atol}: expected a tolerance > 0")
    cfg, model, encoder = _setup(args)
    try:
        meta = export_encoders(model, cfg, args.out, vocab_size=int(encoder.tokenizer.vocab_size),
                               formats=args.formats, opset=args.opset, atol=args.atol)
    except ExportMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for fmt, entry in meta["formats"].items():
        print(f"wrote {os.path.join(args.out, entry['image_encoder'])} and {entry['text_encoder']} "
              f"(max |exported - eager| image {entry['check']['max_abs_diff_image']:.2g}, "
              f"text {entry['check']['max_abs_diff_text']:.2g})")
    print(f"wrote {os.path.join(args.out, 'export.json')} (feature dim {meta['feature_dim']})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from unipt_plugin.search import GalleryIndex, config_hash, weights_hash
    from unipt_plugin.search.server import SearchService, create_app, is_loopback_host

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535; got {args.port}")
    cfg, model, encoder = _setup(args)
    # refused here (IndexMismatchError) when the index was made with another config/weights
    gallery = GalleryIndex.load(args.index, config_hash(cfg), weights_hash(model.state_dict()))
    gallery.set_search_params(nprobe=args.nprobe, ef_search=args.ef_search)
    service = SearchService(encoder, gallery, args.index, max_query_chars=args.max_query_chars,
                            max_topk=args.max_topk, default_topk=args.topk)
    warm = service.warm_up()
    app = create_app(service)
    if not is_loopback_host(args.host):
        print(f"WARNING: listening on {args.host}, not on this machine only: there is no login, so "
              f"anyone who can reach port {args.port} can query the index and see its images "
              f"(use --host 127.0.0.1 to keep it local)", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {len(gallery):,} entries of {args.index} ({gallery.kind}) on http://{host}:{args.port}/ "
          f"(first query {1000 * warm:.0f} ms; Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import unipt_plugin  # noqa: F401  (fast-reid shims and registries)
    from unipt_plugin.search import IndexMismatchError

    try:
        return {"index": cmd_index, "query": cmd_query, "export": cmd_export, "serve": cmd_serve}[args.command](args)
    except (IndexMismatchError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
