"""``UniPTTrainer``: fast-reid's DefaultTrainer with the plugin's builders.

Only the seams that must change are overridden: the text-image loaders, the text-to-image
evaluator, the per-module optimiser groups, the per-iteration scheduler, a checkpointer that
loads safely and writes atomically, and ``resume_or_load``, which also puts back the RNG state
and the position in the data stream so that ``--resume`` continues exactly (docs/determinism.md).
Training loop, hooks, logging, checkpoint periods, evaluation period and
DistributedDataParallel all stay fast-reid's.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any

from fastreid.engine import DefaultTrainer, hooks
from fastreid.utils import comm
from fastreid.utils.events import CommonMetricPrinter

from ..data import build_t2i_test_loader, build_t2i_train_loader
from ..evaluation import TextToImageEvaluator
from ..utils.io import atomic_write_json
from ..solver import build_unipt_lr_scheduler, build_unipt_optimizer
from .checkpoint import UniPTCheckpointer
from .hooks import IterLRScheduler, MetricPrinter, PeriodicCheckpointer, RNGStateHook
from .rng import restore_rng_state

logger = logging.getLogger(__name__)


class UniPTTrainer(DefaultTrainer):
    """Trains ``UniPTPretrain`` (pre-training) or ``UniPTT2I`` (fine-tuning) from a config."""

    @classmethod
    def build_train_loader(cls, cfg):
        logger.info("Prepare training set")
        loader = build_t2i_train_loader(cfg)
        if len(loader.dataset) < cfg.SOLVER.IMS_PER_BATCH:
            raise ValueError(f"the training set {cfg.DATASETS.NAMES} has {len(loader.dataset)} items, fewer than "
                             f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH}: an epoch would have no iteration; "
                             f"lower SOLVER.IMS_PER_BATCH")
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_t2i_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_dir: str | None = None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        return data_loader, TextToImageEvaluator(cfg, num_query, output_dir)

    @classmethod
    def test(cls, cfg, model):
        """fast-reid's evaluation, plus the results written to ``OUTPUT_DIR/eval_results.json``
        (fast-reid's metrics.json skips the evaluation run at the last iteration)."""
        results = super().test(cfg, model)
        if comm.is_main_process() and cfg.OUTPUT_DIR and results:
            atomic_write_json(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), results, indent=2)
        return results

    def resume_or_load(self, resume: bool = True) -> None:
        """fast-reid's: with ``resume`` and a ``last_checkpoint`` in OUTPUT_DIR, load it with the
        optimiser and schedulers and continue at the next epoch; else load MODEL.WEIGHTS (model
        only). On resume, also restore this process's RNG state and start the training stream
        at the first batch of that epoch, so the run continues as if never interrupted."""
        checkpoint = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if not (resume and self.checkpointer.has_checkpoint()):
            return
        self.start_epoch = checkpoint.get("epoch", -1) + 1
        start_iter = self.start_epoch * self.iters_per_epoch
        self.data_loader.batch_sampler.start_batch = start_iter
        self._trainer._data_loader_iter = iter(self.data_loader)  # the stream restarts at start_iter
        states = checkpoint.get("rng")
        rank, world = comm.get_rank(), comm.get_world_size()
        if states is not None and len(states) == world:
            restore_rng_state(states[rank], self.model)
            logger.info("Resumed at epoch %d (iteration %d) with the checkpoint's RNG state",
                        self.start_epoch, start_iter)
        else:
            logger.warning("Resumed at epoch %d (iteration %d) without RNG state (%s): the run continues, but "
                           "its random draws differ from an uninterrupted run", self.start_epoch, start_iter,
                           "none in the checkpoint" if states is None
                           else f"saved by {len(states)} processes, this run has {world}")

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_unipt_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer, iters_per_epoch: int) -> dict[str, Any]:
        return build_unipt_lr_scheduler(cfg, optimizer, iters_per_epoch)

    def build_writers(self) -> list:
        return [MetricPrinter(self.max_iter) if isinstance(w, CommonMetricPrinter) else w
                for w in super().build_writers()]

    def build_hooks(self) -> list:
        # DefaultTrainer.__init__ builds its Checkpointer just before calling build_hooks; swap in
        # the safe one here so that every hook and resume_or_load use it.
        old = self.checkpointer
        checkpointables = dict(old.checkpointables)
        if self.grad_scaler is not None:  # AMP: the loss scale continues on resume too
            checkpointables["grad_scaler"] = self.grad_scaler
        self.checkpointer = UniPTCheckpointer(
            old.model, old.save_dir, save_to_disk=old.save_to_disk, **checkpointables
        )
        ret = super().build_hooks()
        # RNG states are gathered on every process after evaluation and before the checkpoint.
        at = next((i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicCheckpointer)), len(ret))
        ret.insert(at, RNGStateHook(self.checkpointer))
        if "iter_sched" in self.scheduler:
            ret = [IterLRScheduler(self.optimizer, self.scheduler["iter_sched"])
                   if isinstance(h, hooks.LRScheduler) else h for h in ret]
        if not self.cfg.DATASETS.TESTS:
            # Pre-training has nothing to evaluate: no EvalHook (fast-reid's divides by
            # TEST.EVAL_PERIOD) and a checkpointer that does not look for a test set.
            self._last_eval_results = OrderedDict()
            ret = [PeriodicCheckpointer(h.checkpointer, h.period) if isinstance(h, hooks.PeriodicCheckpointer)
                   else h for h in ret if not isinstance(h, hooks.EvalHook)]
        return ret
