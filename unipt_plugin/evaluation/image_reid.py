"""fast-reid's ``ReidEvaluator`` for image-ReID runs, without its build step.

``ReidEvaluator.__init__`` compiles fast-reid's Cython ranking module when it is not built: it
runs ``make`` inside the installed package (``fastreid/evaluation/rank_cylib``, which needs
Cython, a compiler and a writable site-packages) and calls ``sys.exit(1)`` when that fails.
:class:`ImageReIDEvaluator` is ``ReidEvaluator`` with that step replaced: nothing is compiled,
and fast-reid's ``evaluate_rank`` uses the Cython module when it is importable and otherwise its
own Python implementation (``fastreid/evaluation/rank.py: eval_market1501``) of the same
metrics. Everything else is fast-reid's: the gathered features, TEST.METRIC, TEST.AQE,
TEST.RERANK, TEST.ROC, the camera filtering (gallery images of the query's person taken by the
query's camera are left out) and the reported keys: Rank-1, Rank-5, Rank-10, mAP, mINP,
"metric" = (mAP + Rank-1) / 2, all in percent (as Python floats: fast-reid's are numpy scalars,
which ``eval_results.json`` could not hold).
"""
from __future__ import annotations

import logging
from collections import OrderedDict

from fastreid.evaluation import ReidEvaluator
from fastreid.utils import comm

__all__ = ["ImageReIDEvaluator", "cython_ranking_available"]

logger = logging.getLogger(__name__)


def cython_ranking_available() -> bool:
    """Whether fast-reid's compiled ranking module (``rank_cylib.rank_cy``) imports."""
    try:
        from fastreid.evaluation.rank_cylib.rank_cy import evaluate_cy  # noqa: F401
    except ImportError:
        return False
    return True


class ImageReIDEvaluator(ReidEvaluator):
    """fast-reid's ReidEvaluator(cfg, num_query, output_dir) that never compiles (module docstring).

    ``process(inputs, outputs)``: inputs {"targets": long (B,) raw pids, "camids": long (B,)},
    outputs float (B, D) features; the first ``num_query`` rows over the whole pass are the queries.
    ``evaluate()`` -> {"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric"} in percent (on
    the main process; {} elsewhere).
    """

    def _compile_dependencies(self) -> None:
        if comm.is_main_process():
            logger.info("image-ReID evaluation: fast-reid's ranking in %s", "Cython" if cython_ranking_available()
                        else "Python (its rank_cylib is not built; same metrics, slower on large sets)")

    def evaluate(self) -> OrderedDict:
        results = super().evaluate()
        return OrderedDict((k, float(v)) for k, v in results.items())
