#!/usr/bin/env python
"""Search people by description with a trained UniPT checkpoint (see docs/search.md).

    # encode a folder of images (recursive) into an index; re-running adds only new files
    python tools/search.py index --config-file CFG --weights model_final.pth \\
        --images photos/ --index photos.index [--kind flat|ivf|hnsw]
    # top-k images for one or more descriptions: text, JSON, PNG grid, HTML page
    python tools/search.py query --config-file CFG --weights model_final.pth --index photos.index \\
        --text "a woman in a red coat carrying a black bag" --topk 10 --grid top.png --html top.html
    # search a registered dataset's test gallery directly (no index)
    python tools/search.py query --config-file CFG --weights model_final.pth \\
        --gallery-from-dataset CUHKPEDES --text "..."
    # TorchScript encoders for serving
    python tools/search.py export --config-file CFG --weights model_final.pth --out exported/
"""
from __future__ import annotations

import argparse
import json
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

    p = sub.add_parser("index", help="encode a folder of images into an index (adds only new files)")
    p.add_argument("--images", required=True, metavar="DIR",
                   help="folder searched recursively for .jpg .jpeg .png .bmp .webp")
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

    e = sub.add_parser("export", help="export the image and text encoders to TorchScript")
    e.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_model_args(e)
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


def cmd_index(args: argparse.Namespace) -> int:
    from unipt_plugin.search import index_folder

    cfg, _, encoder = _setup(args)
    report = index_folder(encoder, cfg, args.images, args.index, kind=args.kind, params=_index_params(args),
                          progress=not args.no_progress)
    print(f"{args.index}: {report.total} images indexed ({report.encoded} newly encoded, "
          f"{report.found} found under {args.images}{', index rebuilt' if report.rebuilt else ''})")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable image(s):")
        for s in report.skipped:
            print(f"  {s['path']}: {s['reason']}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from unipt_plugin.search import (GalleryIndex, config_hash, dataset_gallery, render_grid_png, render_html,
                                     results_to_json, search_texts, weights_hash)
    from unipt_plugin.utils import atomic_write_json

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
        print(json.dumps(results_to_json(results), indent=1, ensure_ascii=False))
    else:
        for r in results:
            note = f"  [truncated: {r.num_tokens} tokens > {cfg.INPUT.TEXT.MAX_LENGTH}]" if r.truncated else ""
            print(f"query: {r.query}{note}")
            for h in r.hits:
                print(f"  {h.rank:3d}  {h.score:8.4f}  {h.path}")
        if args.json:
            atomic_write_json(args.json, results_to_json(results), indent=1)
            print(f"wrote {args.json}")
    if args.grid:
        render_grid_png(results, args.grid)
        print(f"wrote {args.grid}", file=sys.stderr if args.json == "-" else sys.stdout)
    if args.html:
        render_html(results, args.html)
        print(f"wrote {args.html}", file=sys.stderr if args.json == "-" else sys.stdout)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from unipt_plugin.search import export_encoders

    cfg, model, encoder = _setup(args)
    meta = export_encoders(model, cfg, args.out, vocab_size=int(encoder.tokenizer.vocab_size))
    print(f"wrote {args.out}/image_encoder.pt and text_encoder.pt (feature dim {meta['feature_dim']}; "
          f"max |traced - eager| image {meta['check']['max_abs_diff_image']:.2g}, "
          f"text {meta['check']['max_abs_diff_text']:.2g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import unipt_plugin  # noqa: F401  (fast-reid shims and registries)
    from unipt_plugin.search import IndexMismatchError

    try:
        return {"index": cmd_index, "query": cmd_query, "export": cmd_export}[args.command](args)
    except (IndexMismatchError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
