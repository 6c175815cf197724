"""The built-in demo's report folder: Markdown table, loss curves, Rank-1 comparison and a
retrieval grid of the fine-tuned model on the synthetic test split."""
from __future__ import annotations

import logging
import os
import statistics
from typing import Mapping, Sequence

from fastreid.data.datasets import DATASET_REGISTRY

from ..engine import setup_cfg
from ..search.encoder import SearchEncoder, load_model
from ..search.pipeline import dataset_gallery, search_texts
from ..search.render import render_grid_png
from ..utils.io import atomic_write_text
from ..utils.plots import plot_loss_curves, plot_metric_bars

logger = logging.getLogger(__name__)

__all__ = ["summarise", "results_table", "retrieval_grid", "colour_variants", "write_colourisation_example",
           "write_report"]

METRICS = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP")


def summarise(per_seed: Mapping[int, Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and population standard deviation over seeds of each metric."""
    mean = {k: statistics.fmean(m[k] for m in per_seed.values()) for k in METRICS}
    std = {k: statistics.pstdev([m[k] for m in per_seed.values()]) for k in METRICS}
    return mean, std


def results_table(results: Mapping[str, Mapping[int, Mapping[str, float]]]) -> str:
    """Markdown table, one row per run: mean (± std over seeds when there are several)."""
    lines = ["| run | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for name, per_seed in results.items():
        mean, std = summarise(per_seed)
        cells = [f"{mean[k]:.2f}" + (f" ± {std[k]:.2f}" if len(per_seed) > 1 else "") for k in METRICS]
        lines.append(f"| {name} | {', '.join(map(str, sorted(per_seed)))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def retrieval_grid(finetune_dir: str, data_root: str, out_png: str, num_queries: int = 5, topk: int = 5) -> list:
    """Top-``topk`` test-gallery images for the first caption of ``num_queries`` test persons,
    ranked by the run's final model; each hit is marked correct (same person) or not."""
    cfg = setup_cfg(os.path.join(finetune_dir, "config.yaml"), ["DATASETS.ROOT", data_root, "MODEL.HEADS.NUM_CLASSES", "0"])
    model = load_model(cfg, os.path.join(finetune_dir, "model_final.pth"))
    encoder = SearchEncoder(model, cfg)
    gallery = dataset_gallery(encoder, cfg, "CUHKPEDES")
    dataset = DATASET_REGISTRY.get("CUHKPEDES")(root=data_root, cfg=cfg)
    pid_of_path = {str(p): int(pid) for p, pid, *_ in dataset.gallery}
    queries, seen = [], set()
    for caption, pid in dataset.query:
        if pid not in seen:
            seen.add(pid)
            queries.append((caption, int(pid)))
        if len(queries) == num_queries:
            break
    results = search_texts(encoder, gallery, [q for q, _ in queries], topk)
    for res, (_, pid) in zip(results, queries):
        for hit in res.hits:
            hit.correct = pid_of_path.get(hit.path) == pid
    render_grid_png(results, out_png)
    return results


def colour_variants(caption: str, num_variants: int = 2) -> list[str]:
    """``caption`` and ``num_variants`` copies whose first colour word of a garment (the synthetic
    world's :data:`~unipt_plugin.synthetic.attributes.COLORS`; a colour with "hair" in the next
    two words is skipped) is replaced by another colour, the most saturated first (red, blue, green, yellow, ...).
    Raises ValueError when the caption names no such colour."""
    from .attributes import COLORS

    words = caption.split(" ")
    at = next((i for i, w in enumerate(words) if w.strip(".,;").lower() in COLORS
               and "hair" not in [x.strip(".,;").lower() for x in words[i + 1:i + 3]]), None)
    if at is None:
        raise ValueError(f"caption names no colour of {COLORS}: {caption!r}")
    own = words[at].strip(".,;").lower()
    out = [caption]
    vivid = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white", "gray")
    for colour in [c for c in vivid if c in COLORS and c != own][:num_variants]:
        out.append(" ".join(words[:at] + [words[at].lower().replace(own, colour)] + words[at + 1:]))
    return out


def write_colourisation_example(report_dir: str, pretrain_dir: str, data_root: str, num_variants: int = 2) -> str:
    """PLIP's text-guided colourisation (TIC) in the report: the first synthetic test person whose
    caption names a colour, colourised by the pre-trained model in ``pretrain_dir`` (``config.yaml``
    + ``model_final.pth``, pre-trained with MODEL.PRETRAIN.TIC_WEIGHT > 0) under its caption and
    ``num_variants`` copies that differ in that one colour word. Writes ``colourisation.png`` and
    ``colourisation.md`` into ``report_dir``; returns the Markdown file's path."""
    import numpy as np
    from PIL import Image

    from ..data.tokenizer import build_tokenizer
    from ..modeling.plip_tasks.colourise import colourise, write_colourisation_figure

    cfg = setup_cfg(os.path.join(pretrain_dir, "config.yaml"), ["DATASETS.ROOT", data_root])
    model = load_model(cfg, os.path.join(pretrain_dir, "model_final.pth"))
    dataset = DATASET_REGISTRY.get("CUHKPEDES")(root=data_root, cfg=cfg)
    path_of_pid = {}
    for path, pid, *_ in dataset.gallery:
        path_of_pid.setdefault(int(pid), str(path))
    captions = None
    for caption, pid in dataset.query:
        try:
            captions = colour_variants(caption, num_variants)
        except ValueError:
            continue
        image_path = path_of_pid[int(pid)]
        break
    if captions is None:
        raise ValueError(f"no test caption of {data_root} names a colour")
    height, width = (int(v) for v in cfg.INPUT.SIZE_TRAIN)
    with Image.open(image_path) as img:
        pixels = np.asarray(img.convert("RGB").resize((width, height), Image.BICUBIC))
    image = np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (3, H, W) uint8
    colourised = colourise(model, image, captions, build_tokenizer(cfg))
    png = os.path.join(report_dir, "colourisation.png")
    write_colourisation_figure(png, image, captions, colourised,
                               title="text-guided colourisation (TIC), one synthetic test person")
    md = "\n".join([
        "## PLIP's text-guided colourisation", "",
        "The model pre-trained with PLIP's tasks sees the gray view of one test image and colours it under "
        "its caption and under copies that differ in one colour word (the luma is the image's own; only the "
        f"predicted chroma, at 1/{int(cfg.MODEL.PRETRAIN.TIC.SCALE)} resolution, comes from the model):", "",
        *[f"- {c}" for c in captions], "", "![colourisation](colourisation.png)", ""])
    out = os.path.join(report_dir, "colourisation.md")
    atomic_write_text(out, md)
    return out


def write_report(report_dir: str, results: Mapping[str, Mapping[int, Mapping[str, float]]],
                 loss_runs: Mapping[str, str], finetune_dir: str, data_root: str,
                 extra_sections: Sequence[str] = (), elapsed_s: float | None = None) -> str:
    """Write ``README.md`` + PNGs into ``report_dir``; return the Markdown."""
    os.makedirs(report_dir, exist_ok=True)
    plot_loss_curves({k: os.path.join(v, "metrics.json") for k, v in loss_runs.items()},
                     os.path.join(report_dir, "loss_curves.png"))
    means = {name: summarise(per_seed)[0] for name, per_seed in results.items()}
    stds = {name: summarise(per_seed)[1] for name, per_seed in results.items()}
    plot_metric_bars(means, ["Rank-1", "Rank-5", "mAP"], os.path.join(report_dir, "rank1_comparison.png"),
                     title="synthetic test split: text-to-image retrieval", errors=stds)
    retrieval_grid(finetune_dir, data_root, os.path.join(report_dir, "retrieval_grid.png"))
    parts = ["# UniPT on the synthetic pedestrian world", "",
             "Text-to-image retrieval on the synthetic labeled test split (every caption a query, "
             "every test image once in the gallery), percent.", "", results_table(results), "",
             "![loss curves](loss_curves.png)", "", "![Rank-1 comparison](rank1_comparison.png)", "",
             "Top-5 gallery images for sample test captions (model fine-tuned from UniPT; green = "
             "the described person, red = someone else):", "", "![retrieval grid](retrieval_grid.png)", ""]
    for path in extra_sections:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                parts += [f.read().strip(), ""]
    if elapsed_s is not None:
        parts.append(f"Time of this invocation: {elapsed_s / 60:.1f} min (stages whose outputs already existed were skipped).")
    md = "\n".join(parts) + "\n"
    atomic_write_text(os.path.join(report_dir, "README.md"), md)
    return md
