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

__all__ = ["summarise", "results_table", "retrieval_grid", "write_report"]

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
