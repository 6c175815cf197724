"""Reading ``OUTPUT_DIR/eval_results.json``, the last evaluation of a run.

``UniPTTrainer.test`` writes one entry per test set of DATASETS.TESTS, keyed by the dataset name,
also when there is only one (docs/evaluation.md, eval_results.json)::

    {"ICFGPEDES": {"Rank-1": 35.5, "Rank-5": ..., "Rank-10": ..., "mAP": ..., "mINP": ..., "metric": ...}}

Files written before that change hold a single test set unnested (``{"Rank-1": ..., ...}``);
:func:`read_eval_results` reads both forms.
"""
from __future__ import annotations

import json
import logging
import os
from numbers import Real
from typing import Dict, Optional

logger = logging.getLogger(__name__)

__all__ = ["EVAL_RESULTS_FILE", "read_eval_results"]

EVAL_RESULTS_FILE = "eval_results.json"


def _is_metrics(value: object) -> bool:
    """A flat {metric: number} mapping (bools are not metrics)."""
    return isinstance(value, dict) and bool(value) and all(
        isinstance(v, Real) and not isinstance(v, bool) for v in value.values())


def read_eval_results(path: str, dataset: Optional[str] = None) -> Dict[str, float]:
    """The metrics of one test set from an ``eval_results.json`` (or the folder holding one).

    Args:
        path: the file, or a run's OUTPUT_DIR.
        dataset: the test set (a name of DATASETS.TESTS). None: the file's only test set;
            a file with several needs the name.

    Returns {metric: value} ("Rank-1", ..., "mAP", "mINP", "metric", and "i2t/..." when
    computed). A file in the old unnested form (one test set, no name) is returned as it is,
    whatever ``dataset`` says (it cannot name its test set).

    Raises ValueError (naming the file) when the file is neither form, when ``dataset`` is
    not in it, or when it holds several test sets and ``dataset`` is None.
    """
    if os.path.isdir(path):
        path = os.path.join(path, EVAL_RESULTS_FILE)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if _is_metrics(data):
        logger.debug("%s holds one unnamed test set (the unnested form)", path)
        return {k: float(v) for k, v in data.items()}
    if not (isinstance(data, dict) and data and all(_is_metrics(v) for v in data.values())):
        raise ValueError(f"{path}: expected {{test set name: {{metric: number}}}} (or the older "
                         f"{{metric: number}} of one test set), got {str(data)[:200]}")
    if dataset is None:
        if len(data) > 1:
            raise ValueError(f"{path} holds {len(data)} test sets {sorted(data)}: name one (dataset=...)")
        dataset = next(iter(data))
    if dataset not in data:
        raise ValueError(f"{path} has no results for test set {dataset!r}; it holds {sorted(data)}")
    return {k: float(v) for k, v in data[dataset].items()}
