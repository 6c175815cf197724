"""Stopping cleanly when the cluster pre-empts the job.

:class:`PreemptionHook` installs handlers for ``SOLVER.PREEMPT_SIGNALS`` (default SIGTERM;
SLURM's advance warning is SIGUSR1 with ``--signal=USR1@120``). A signal only sets a flag; after
the current iteration every process learns whether any process was signalled (one tiny
all-reduce on the CPU group per iteration when there are several processes), and then they all:

1. gather their RNG states (as at an epoch end),
2. save ``OUTPUT_DIR/model_preempted.pth`` (main process; with optimiser, schedulers, GradScaler,
   RNG states, the epoch and the iteration just finished) and tag it as the last checkpoint,
3. raise :class:`Preempted`, which ``tools/train_net.py`` turns into exit code
   :data:`~unipt_plugin.engine.launch.PREEMPTED_EXIT_CODE` (75).

``--resume`` then continues at the next iteration, with the data stream at that position, so
the final weights are those of an uninterrupted run (bit-identical on the CPU; tested).
"""
from __future__ import annotations

import logging
import signal
from typing import Sequence

import torch
import torch.distributed as dist
from fastreid.engine.hooks import HookBase
from fastreid.utils import comm

from .rng import capture_rng_state

__all__ = ["Preempted", "PreemptionHook", "parse_signals"]

logger = logging.getLogger(__name__)

PREEMPTED_CHECKPOINT = "model_preempted"


class Preempted(RuntimeError):
    """Training stopped on a pre-emption signal after saving a checkpoint; ``--resume`` continues."""


def parse_signals(names: Sequence[str]) -> list[signal.Signals]:
    """SOLVER.PREEMPT_SIGNALS ("SIGTERM", "SIGUSR1", ...) -> signals; an unknown name is a ValueError."""
    out = []
    for name in names:
        sig = getattr(signal, str(name).upper(), None)
        if not isinstance(sig, signal.Signals) or str(name).upper() in ("SIGKILL", "SIGSTOP"):
            raise ValueError(f"SOLVER.PREEMPT_SIGNALS: {name!r} is not a catchable signal name "
                             f"(e.g. SIGTERM, SIGUSR1, SIGUSR2, SIGINT)")
        out.append(sig)
    return out


class PreemptionHook(HookBase):
    """Checks, after every iteration, whether a pre-emption signal arrived; if so saves and stops.

    Args:
        checkpointer: the trainer's ``UniPTCheckpointer`` (saves on the main process only).
        signals: the signals to catch.
    """

    def __init__(self, checkpointer, signals: Sequence[signal.Signals]) -> None:
        self._checkpointer = checkpointer
        self._signals = list(signals)
        self._previous: dict = {}
        self.received: signal.Signals | None = None

    def _handler(self, signum, _frame) -> None:
        if self.received is None:
            logger.warning("received %s: stopping after this iteration with a checkpoint", signal.Signals(signum).name)
        self.received = signal.Signals(signum)

    def before_train(self) -> None:
        for s in self._signals:
            self._previous[s] = signal.signal(s, self._handler)

    def after_train(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _any_received(self) -> bool:
        flag = self.received is not None
        if comm.get_world_size() == 1:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=comm._get_global_gloo_group())
        return bool(t.item())

    def after_step(self) -> None:
        if not self._any_received():
            return
        trainer = self.trainer
        if (trainer.iter + 1) % trainer.iters_per_epoch == 0:
            # Last iteration of an epoch: let the epoch-end hooks (evaluation, epoch LR step,
            # checkpoint) run first, then stop in after_epoch.
            self._at_epoch_end = True
            return
        self._stop(trainer.iter)

    def after_epoch(self) -> None:
        if getattr(self, "_at_epoch_end", False):
            self._stop(self.trainer.iter - 1)  # the loop has already advanced iter past the epoch

    def _stop(self, iteration: int) -> None:
        """Save the pre-emption checkpoint for ``iteration`` (the last one done) and raise."""
        trainer = self.trainer
        states = comm.all_gather(capture_rng_state())
        if comm.is_main_process():
            self._checkpointer.rng_states = states
            self._checkpointer.save(PREEMPTED_CHECKPOINT, epoch=trainer.epoch, iteration=iteration)
        comm.synchronize()  # nobody exits before the checkpoint is on disk
        raise Preempted(f"pre-empted by {self.received.name if self.received else 'a signal on another process'} "
                        f"after iteration {iteration}: checkpoint {PREEMPTED_CHECKPOINT}.pth saved in "
                        f"{trainer.cfg.OUTPUT_DIR}; continue with --resume")
