"""Why does PGU not help in the synthetic world? Fine-tuning variants evaluated on the **val** split.

``tools/run_demo.py --pgu-experiments`` runs every :data:`PGU_EXPERIMENTS` entry per training
seed and calls :func:`write_pgu_experiments`; ``docs/pgu_experiments.md`` records a run and what
it showed. Two kinds of entries:

* ``evaluate``: an existing fine-tuning of the demo (``unipt``, ``unipt_no_pgu``,
  ``unipt_pgu_authors``, trained by ``--paper-tables`` or here) evaluated again on the val split,
  optionally with other inference options (``MODEL.T2I.TEST_SCORE``): no training, and the
  test split stays unread;
* ``train``: a fine-tuning from the same seed's UniPT pre-training with options changed, whose
  only evaluation is on the val split.

The demo's settings are only changed where these val figures justify it (docs/pgu_experiments.md
says what was decided).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from ..utils.io import atomic_write_text
from ..utils.plots import plot_metric_bars
from .demo_report import summarise

__all__ = ["PguExperiment", "PGU_EXPERIMENTS", "VAL_TESTS", "pgu_experiments_markdown", "write_pgu_experiments"]

#: DATASETS.TESTS of every run here: the synthetic labeled set's val split.
VAL_TESTS = '("CUHKPEDESVal",)'

#: The demo's ViT at stride 4 instead of 8: 15x7 = 105 patch tokens from a 64x32 image instead
#: of 8x4 = 32; the pre-trained position embeddings are resized to the new grid on load
#: (MODEL.VISUAL.WEIGHTS = the pre-training checkpoint; backbones/pos_embed.py).
_STRIDE4 = ["MODEL.VISUAL.STRIDE", "4"]
_NO_PGU = ["MODEL.T2I.PGU_WEIGHT", "0.0", "MODEL.PGU.ENABLED", "False", "MODEL.T2I.TEST_SCORE", "global"]


@dataclass(frozen=True)
class PguExperiment:
    """One row. ``kind`` "evaluate": re-evaluate run ``source`` with ``opts``; "train": fine-tune
    from UniPT with ``opts`` for ``epochs_factor`` x the demo's epochs. ``visual_from_pretrain``:
    also pass the pre-training checkpoint as MODEL.VISUAL.WEIGHTS (position embeddings resized)."""

    name: str
    label: str
    kind: str
    source: str = ""
    opts: tuple[str, ...] = field(default_factory=tuple)
    epochs_factor: int = 1
    visual_from_pretrain: bool = False


PGU_EXPERIMENTS: tuple[PguExperiment, ...] = (
    PguExperiment("val_pgu", "demo PGU (gamma = 1), score = global + parts", "evaluate", "unipt"),
    PguExperiment("val_pgu_score_global", "demo PGU training, score = global only", "evaluate", "unipt",
                  ("MODEL.T2I.TEST_SCORE", "global")),
    PguExperiment("val_pgu_score_parts", "demo PGU training, score = parts only", "evaluate", "unipt",
                  ("MODEL.T2I.TEST_SCORE", "pgu")),
    PguExperiment("val_no_pgu", "without PGU (gamma = 0)", "evaluate", "unipt_no_pgu"),
    PguExperiment("val_pgu_authors", "the authors' PGU settings (LGUR), demo widths", "evaluate",
                  "unipt_pgu_authors"),
    PguExperiment("val_pgu_weight_0.3", "PGU loss weight gamma = 0.3", "train", opts=("MODEL.T2I.PGU_WEIGHT", "0.3")),
    PguExperiment("val_pgu_2x", "PGU, 2x the fine-tuning schedule", "train", epochs_factor=2),
    PguExperiment("val_no_pgu_2x", "without PGU, 2x the fine-tuning schedule", "train", opts=tuple(_NO_PGU),
                  epochs_factor=2),
    PguExperiment("val_pgu_stride4", "PGU, 105 image tokens (stride 4) instead of 32", "train",
                  opts=tuple(_STRIDE4), visual_from_pretrain=True),
    PguExperiment("val_no_pgu_stride4", "without PGU, 105 image tokens (stride 4)", "train",
                  opts=tuple(_STRIDE4 + _NO_PGU), visual_from_pretrain=True),
)

_SHOWN = ("Rank-1", "Rank-5", "mAP", "mINP")


def pgu_experiments_markdown(results: Mapping[str, Mapping[int, Mapping[str, float]]], machine: str = "") -> str:
    """A table of ``results[name][seed]`` (val metrics, percent) in :data:`PGU_EXPERIMENTS` order;
    cells are mean ± population std over seeds, with the seeds listed per row."""
    parts = ["# PGU experiments on the synthetic val split", "",
             "Fine-tuning variants from the same seed's UniPT pre-training, each evaluated on the val split only "
             "(the test split is not read). Cells: mean ± std over the training seeds (population std), percent."
             + (f" Measured on {machine}." if machine else ""), "",
             "| experiment | seeds | " + " | ".join(_SHOWN) + " |", "|---|---|" + "---|" * len(_SHOWN)]
    for e in PGU_EXPERIMENTS:
        per_seed = results.get(e.name)
        if not per_seed:
            continue
        mean, std = summarise(per_seed)
        cells = " | ".join(f"{mean[m]:.2f}" + (f" ± {std[m]:.2f}" if len(per_seed) > 1 else "") for m in _SHOWN)
        parts.append(f"| {e.label} | {', '.join(map(str, sorted(per_seed)))} | {cells} |")
    parts += ["", "![PGU experiments](pgu_experiments.png)", ""]
    return "\n".join(parts) + "\n"


def write_pgu_experiments(report_dir: str, results: Mapping[str, Mapping[int, Mapping[str, float]]],
                          machine: str = "") -> str:
    """Write ``pgu_experiments.md`` and ``pgu_experiments.png`` into ``report_dir``; return the Markdown."""
    os.makedirs(report_dir, exist_ok=True)
    rows = [e for e in PGU_EXPERIMENTS if results.get(e.name)]
    if rows:
        plot_metric_bars({e.label: summarise(results[e.name])[0] for e in rows}, ["Rank-1", "mAP"],
                         os.path.join(report_dir, "pgu_experiments.png"), title="PGU experiments (synthetic val split)",
                         errors={e.label: summarise(results[e.name])[1] for e in rows})
    md = pgu_experiments_markdown(results, machine)
    atomic_write_text(os.path.join(report_dir, "pgu_experiments.md"), md)
    return md
