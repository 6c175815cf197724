"""Training hooks the plugin adds to fast-reid's."""
from __future__ import annotations

import logging

from fastreid.engine.hooks import HookBase

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
