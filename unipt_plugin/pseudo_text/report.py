"""Report of a generation run: attribute frequencies (table + bar charts like the paper's Fig. 3),
template usage, distinct captions, failed images."""
from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display (as utils/plots.py)
import matplotlib.pyplot as plt  # noqa: E402

from ..utils.io import atomic_open, atomic_write_json, atomic_write_text  # noqa: E402
from .vocabulary import NEGATIVE_ID, Vocabulary  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["ReportStats", "write_report"]


@dataclass
class ReportStats:
    """Counts gathered while merging (memory: one 8-byte digest per distinct caption)."""

    num_images: int = 0
    num_captions: int = 0
    attribute_counts: dict[str, Counter] = field(default_factory=dict)
    template_counts: Counter = field(default_factory=Counter)
    caption_digests: set[bytes] = field(default_factory=set)
    failed: list[dict[str, str]] = field(default_factory=list)

    def add(self, attributes: Mapping[str, Mapping[str, Any]], templates: Sequence[int], captions: Sequence[str]) -> None:
        self.num_images += 1
        for name, chosen in attributes.items():
            self.attribute_counts.setdefault(name, Counter())[chosen["id"]] += 1
        self.template_counts.update(templates)
        self.num_captions += len(captions)
        self.caption_digests.update(hashlib.blake2b(c.encode("utf-8"), digest_size=8).digest() for c in captions)

    def add_failed(self, record: Mapping[str, str]) -> None:
        self.failed.append(dict(record))

    @property
    def num_distinct_captions(self) -> int:
        return len(self.caption_digests)


def _summary(stats: ReportStats, vocab: Vocabulary, num_templates: int) -> dict[str, Any]:
    optional = {a.name: sum(n for cid, n in stats.attribute_counts.get(a.name, Counter()).items() if cid != NEGATIVE_ID)
                for a in vocab.optional}
    total_optional = sum(optional.values())
    return {
        "num_images": stats.num_images,
        "num_failed": len(stats.failed),
        "num_captions": stats.num_captions,
        "num_distinct_captions": stats.num_distinct_captions,
        "num_templates_available": num_templates,
        "num_templates_used": len(stats.template_counts),
        "template_usage_top": [[t, n] for t, n in stats.template_counts.most_common(20)],
        "optional_occurrences": optional,
        "optional_share": {k: (v / total_optional if total_optional else 0.0) for k, v in optional.items()},
        "attribute_counts": {a.name: dict(sorted(stats.attribute_counts.get(a.name, Counter()).items(),
                                                 key=lambda kv: (-kv[1], kv[0]))) for a in vocab.attributes},
        "failed": stats.failed,
    }


def _markdown(s: Mapping[str, Any], vocab: Vocabulary) -> str:
    n = max(s["num_images"], 1)
    lines = [
        "# Pseudo-text generation report", "",
        f"- images captioned: {s['num_images']}; failed (skipped): {s['num_failed']}",
        f"- captions: {s['num_captions']}; distinct captions: {s['num_distinct_captions']}",
        f"- templates: {s['num_templates_used']} used of {s['num_templates_available']}", "",
        "## Optional attributes (images where present)", "", "| attribute | images | % of images | share of occurrences |", "|---|---|---|---|",
    ]
    for name, count in s["optional_occurrences"].items():
        lines.append(f"| {name} | {count} | {100 * count / n:.1f} | {100 * s['optional_share'][name]:.1f} |")
    lines += ["", "## Every attribute (class: images)", "", "| attribute | class | images | % |", "|---|---|---|---|"]
    for name, counts in s["attribute_counts"].items():
        for cid, count in counts.items():
            lines.append(f"| {name} | {cid} | {count} | {100 * count / n:.1f} |")
    lines += ["", "## Most used templates (index: captions)", ""]
    lines += [f"- {t}: {c}" for t, c in s["template_usage_top"]]
    if s["failed"]:
        lines += ["", "## Failed images", ""] + [f"- {f['file_path']}: {f['error']}" for f in s["failed"][:200]]
        if len(s["failed"]) > 200:
            lines.append(f"- ... {len(s['failed']) - 200} more in the .failed.json file")
    return "\n".join(lines) + "\n"


def _save_png(fig: Any, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")


def _plot(s: Mapping[str, Any], vocab: Vocabulary, out_dir: Path, top_k: int) -> list[Path]:
    paths = []
    names = list(s["optional_occurrences"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    shares = [100 * s["optional_share"][k] for k in names]
    ax.bar(names, shares, color="tab:blue")
    for x, v in enumerate(shares):
        ax.text(x, v, f"{v:.0f}%", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("% of optional-attribute occurrences")
    ax.set_title(f"Optional attributes ({sum(s['optional_occurrences'].values())} occurrences)")
    ax.tick_params(axis="x", rotation=30)
    paths.append(out_dir / "optional_attributes.png")
    _save_png(fig, paths[-1])
    plt.close(fig)

    required = [a.name for a in vocab.required]
    fig, axes = plt.subplots(len(required), 1, figsize=(9, 2.6 * len(required)))
    n = max(s["num_images"], 1)
    for ax, name in zip(axes, required):
        items = list(s["attribute_counts"][name].items())[:top_k]
        ax.bar([k for k, _ in items], [100 * v / n for _, v in items], color="tab:orange")
        ax.set_title(f"{name} (top {top_k})" if len(s["attribute_counts"][name]) > top_k else name)
        ax.set_ylabel("% of images")
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    fig.tight_layout()
    paths.append(out_dir / "required_attributes.png")
    _save_png(fig, paths[-1])
    plt.close(fig)
    return paths


def write_report(stats: ReportStats, vocab: Vocabulary, out_dir: str | os.PathLike, num_templates: int, top_k: int = 15) -> dict[str, Any]:
    """Write ``report.json``, ``report.md``, ``optional_attributes.png`` and ``required_attributes.png``.

    Returns the summary written to ``report.json``.
    """
    out_dir = Path(out_dir)
    summary = _summary(stats, vocab, num_templates)
    atomic_write_json(out_dir / "report.json", summary, indent=1)
    atomic_write_text(out_dir / "report.md", _markdown(summary, vocab))
    pngs = _plot(summary, vocab, out_dir, top_k)
    logger.info("report written to %s (%s)", out_dir, ", ".join(p.name for p in pngs))
    return summary
