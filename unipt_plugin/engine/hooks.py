"""Training hooks the plugin adds to fast-reid's."""
from __future__ import annotations

import logging

from fastreid.engine import hooks
from fastreid.engine.hooks import HookBase
from fastreid.utils import comm
from fastreid.utils.events import CommonMetricPrinter, get_event_storage

from .rng import capture_rng_state

logger = logging.getLogger(__name__)


class IterLRScheduler(HookBase):
    """Steps a per-iteration LR scheduler (``SOLVER.SCHED = "WarmupLinearLR"``) after every
    iteration and records the learning rate of the largest parameter group as ``lr``.

    fast-reid's own ``LRScheduler`` hook steps its main scheduler once per epoch, which cannot
    express the paper's pre-training schedule (warm-up over 10% of the steps, then linear decay
    to zero at the last step).
    """

    def __init__(self, optimizer, scheduler) -> None:
        self._optimizer = optimizer
        self._scheduler = scheduler
        sizes = [len(g["params"]) for g in optimizer.param_groups]
        self._group = sizes.index(max(sizes))

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._group]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self._scheduler.step()


class RNGStateHook(HookBase):
    """At the end of every epoch, gathers the RNG state of every process (after evaluation,
    before the checkpoint) and hands it to the main process's checkpointer, so that a run
    resumed from that checkpoint draws the same numbers as an uninterrupted one. Runs on every
    process (the gather is collective); fast-reid's checkpoint hook runs on the main one only."""

    def __init__(self, checkpointer) -> None:
        self._checkpointer = checkpointer

    def after_epoch(self) -> None:
        states = comm.all_gather(capture_rng_state())
        if comm.is_main_process():
            self._checkpointer.rng_states = states


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """fast-reid's per-epoch checkpointer, also usable by runs without a test set
    (pre-training), for which fast-reid's version reads ``cfg.DATASETS.TESTS[0]`` and fails."""

    def before_train(self) -> None:
        if self.trainer.cfg.DATASETS.TESTS:
            super().before_train()
        else:
            self.max_epoch = self.trainer.max_epoch
            self.metric_name = "metric"


class MetricPrinter(CommonMetricPrinter):
    """fast-reid's console printer, made safe for runs shorter than its timer's warm-up: when
    it is asked to write twice at the same iteration before any iteration time is known
    (end of step, then end of epoch), fast-reid's ETA estimate divides by zero."""

    def write(self) -> None:
        try:
            super().write()
        except ZeroDivisionError:
            logger.debug("metric printer: nothing new at iteration %d", get_event_storage().iter)


class LayerFreeze(hooks.LayerFreeze):
    """fast-reid's LayerFreeze (MODEL.FREEZE_LAYERS in eval mode for the first SOLVER.FREEZE_ITERS
    iterations; the step trainer keeps their parameters unchanged), re-applied before every step
    of the window: an evaluation inside the window puts the whole model back in train mode, which
    fast-reid's hook does not undo, so a run resumed inside the window would otherwise differ
    from an uninterrupted one (dropout on in the frozen children after the evaluation)."""

    def before_step(self) -> None:
        if self.trainer.iter < self.freeze_iters:
            if not self.is_frozen:
                self.freeze_specific_layer()  # logs once
            for name, module in self.model.named_children():
                if name in self.freeze_layers:
                    module.eval()
        elif self.is_frozen:
            self.open_all_layer()
