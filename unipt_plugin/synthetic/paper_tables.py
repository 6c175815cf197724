"""The paper's tables in miniature: the synthetic world's runs laid out as the paper's Tables 2, 5
and 6 (CUHK-PEDES, DeiT-small), with the paper's own figures beside them for direction, and the
zero-shot Rank-1 of the pre-trained model. ``tools/run_demo.py --paper-tables`` trains the runs
and calls :func:`write_paper_tables`.

The paper's figures are real-dataset results (CUHK-PEDES test split, DeiT-small + BERT); the
synthetic ones are not comparable in size, only in direction (does the same change move the
numbers the same way?).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..utils.io import atomic_write_json, atomic_write_text
from ..utils.plots import plot_metric_bars
from .demo_report import summarise

__all__ = ["PaperRow", "PaperTable", "PAPER_TABLES", "ZERO_SHOT_RUN", "ZERO_SHOT_ROWS", "write_paper_tables",
           "paper_tables_markdown"]

#: Metrics shown per row (the paper's tables report Rank-1 and Rank-5).
SHOWN = ("Rank-1", "Rank-5", "Rank-10", "mAP")


@dataclass(frozen=True)
class PaperRow:
    """One row: the demo run ``run`` (a key of the results), its label, and the paper's row it
    corresponds to (label and CUHK-PEDES Rank-1 / Rank-5; None where the paper has no such row)."""

    run: str
    label: str
    paper_label: str = ""
    paper_rank1: float | None = None
    paper_rank5: float | None = None


@dataclass(frozen=True)
class PaperTable:
    name: str
    title: str
    rows: tuple[PaperRow, ...]
    note: str = ""


#: The run name of the zero-shot evaluation of the pre-trained model.
ZERO_SHOT_RUN = "zeroshot"

#: The zero-shot section's rows: (run, label), one per pre-training (issue 16 adds PLIP's tasks).
ZERO_SHOT_ROWS: tuple[tuple[str, str], ...] = (
    (ZERO_SHOT_RUN, "UniPT pre-training, pooled features"),
    ("zeroshot_plip", "PLIP's tasks (IVLC + TIC + IAP) pre-training, pooled features"),
    ("zeroshot_both", "UniPT's losses + PLIP's TIC and IAP pre-training, pooled features"),
)

PAPER_TABLES: tuple[PaperTable, ...] = (
    PaperTable(
        "table2", "Table 2 direction: what the fine-tuning starts from (equal fine-tuning budget)",
        (PaperRow("scratch", "from scratch (image and text encoders random)"),
         PaperRow("minilm", "generic pre-trained text encoder (shipped MiniLM-L6, text rate a tenth of the base "
                            "rate), image encoder from scratch",
                  "IN + generic text (DeiT-small)", 65.30, 83.19),
         PaperRow("unipt", "UniPT pre-training on the pool's pseudo-texts", "LUP-T (DeiT-small)", 66.83, 84.16),
         PaperRow("scratch_3x", "from scratch, 3x the fine-tuning schedule"),
         PaperRow("minilm_3x", "generic pre-trained text encoder, image encoder from scratch, 3x the fine-tuning "
                               "schedule")),
        "The paper's generic row starts from ImageNet-pretrained DeiT and BERT; here only the text encoder is "
        "pre-trained (no ImageNet exists offline). The 3x-schedule rows check that the gain of pre-training is "
        "not a schedule artefact: at the equal budget both baselines without a person pre-training may end "
        "before their losses leave the chance plateau."),
    PaperTable(
        "table5", "Table 5: MLM in pre-training (beta)",
        (PaperRow("unipt_no_mlm", "pre-trained without MLM (beta = 0)", "UniPT w/o MLM", 65.77, 83.53),
         PaperRow("unipt", "pre-trained with MLM (beta = 1)", "UniPT w MLM", 66.83, 84.16))),
    PaperTable(
        "table6", "Table 6: the PGU loss in fine-tuning (gamma), from UniPT",
        (PaperRow("unipt_no_pgu", "without PGU (gamma = 0)", "UniPT w/o L_pgu", 61.99, 79.86),
         PaperRow("unipt_pgu_authors", "with PGU, the authors' PGU settings", "UniPT w/ L_pgu", 66.83, 84.16),
         PaperRow("unipt", "with PGU, the demo's PGU settings"))),
    PaperTable(
        "plip", "PLIP beside UniPT: the pre-training tasks, then the same fine-tuning",
        (PaperRow("unipt", "UniPT's losses (contrastive + MLM)"),
         PaperRow("plip_tasks", "PLIP's tasks (IVLC + TIC + IAP, weights 1)"),
         PaperRow("plip_both", "both: contrastive + MLM + TIC + IAP")),
        "Pre-trained on the same pool and pseudo-texts, fine-tuned with the same recipe (ID + ranking + PGU). "
        "PLIP's lambdas are not given in the sources this project has, so TIC and IAP weigh 1 (not tuned). On "
        "LUPerson-T every image is its own identity, so IVLC equals UniPT's contrastive loss and \"both\" does not "
        "add it a second time. PLIP's paper reports no miniature or CUHK-PEDES figure of this exact comparison."),
)


def _cell(per_seed: Mapping[int, Mapping[str, float]], metric: str) -> str:
    mean, std = summarise(per_seed)
    return f"{mean[metric]:.2f}" + (f" ± {std[metric]:.2f}" if len(per_seed) > 1 else "")


def _fewer_seeds(per_seed: Mapping[int, Mapping[str, float]], seeds: Sequence[int]) -> str:
    """" (seed 0 only)" / " (seeds 0, 2 only)" when a run has fewer seeds than the report."""
    own = sorted(per_seed)
    if own == list(seeds):
        return ""
    return f" ({'seed' if len(own) == 1 else 'seeds'} {', '.join(map(str, own))} only)"


def _paper(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def paper_tables_markdown(results: Mapping[str, Mapping[int, Mapping[str, float]]], machine: str = "",
                          images: bool = True) -> str:
    """The tables as Markdown. ``results[run][seed]`` holds each run's final test metrics
    (percent); rows whose run is missing are left out; :data:`ZERO_SHOT_RUN` gives the zero-shot
    section. Cells are mean ± population std over the seeds."""
    seeds = sorted({s for per_seed in results.values() for s in per_seed})
    parts = ["# The paper's tables in miniature (synthetic world)", "",
             f"Training seeds {', '.join(map(str, seeds))}; cells are mean ± std over seeds (population std), "
             "percent, on the synthetic test split (read once, at the end of each run). The paper's columns are "
             "its CUHK-PEDES figures with DeiT-small, for direction only." + (f" Measured on {machine}." if machine
                                                                              else ""), ""]
    for table in PAPER_TABLES:
        rows = [r for r in table.rows if r.run in results]
        if not rows:
            continue
        parts += [f"## {table.title}", ""]
        header = "| run | " + " | ".join(SHOWN) + " | paper row | paper Rank-1 | paper Rank-5 |"
        parts += [header, "|---|" + "---|" * (len(SHOWN) + 3)]
        for r in rows:
            cells = " | ".join(_cell(results[r.run], m) for m in SHOWN)
            parts.append(f"| {r.label}{_fewer_seeds(results[r.run], seeds)} | {cells} | {r.paper_label} | "
                         f"{_paper(r.paper_rank1)} | "
                         f"{_paper(r.paper_rank5)} |")
        parts.append("")
        if table.note:
            parts += [table.note, ""]
        if images:
            parts += [f"![{table.name}]({table.name}.png)", ""]
    zero_shot = [(run, label) for run, label in ZERO_SHOT_ROWS if run in results]
    if zero_shot:
        parts += ["## Zero-shot: the pre-trained model on the test split, no fine-tuning", "",
                  "| run | " + " | ".join(SHOWN) + " |", "|---|" + "---|" * len(SHOWN)]
        parts += [f"| {label}{_fewer_seeds(results[run], seeds)} | " + " | ".join(
            _cell(results[run], m) for m in SHOWN) + " |" for run, label in zero_shot]
        parts += ["", "How well the pseudo-texts alone taught the two encoders to match the labeled captions.", ""]
    return "\n".join(parts) + "\n"


def write_paper_tables(report_dir: str, results: Mapping[str, Mapping[int, Mapping[str, float]]],
                       machine: str = "") -> str:
    """Write ``paper_tables.md``, one bar chart per table (``table2.png``, ...) and
    ``paper_tables.json`` (``{"machine": str, "results": {run: {seed: {metric: value}}}}``, every
    run's per-seed figures, so a table can be re-summarised or extended later without retraining)
    into ``report_dir``; return the Markdown."""
    os.makedirs(report_dir, exist_ok=True)
    for table in PAPER_TABLES:
        rows: Sequence[PaperRow] = [r for r in table.rows if r.run in results]
        if not rows:
            continue
        means = {r.label: summarise(results[r.run])[0] for r in rows}
        stds = {r.label: summarise(results[r.run])[1] for r in rows}
        plot_metric_bars(means, ["Rank-1", "Rank-5", "mAP"], os.path.join(report_dir, f"{table.name}.png"),
                         title=table.title.split(":")[0] + " (synthetic world)", errors=stds)
    md = paper_tables_markdown(results, machine)
    raw = {run: {str(seed): dict(metrics) for seed, metrics in sorted(per_seed.items())}
           for run, per_seed in results.items()}
    atomic_write_json(os.path.join(report_dir, "paper_tables.json"), {"machine": machine, "results": raw}, indent=1)
    atomic_write_text(os.path.join(report_dir, "paper_tables.md"), md)
    return md
