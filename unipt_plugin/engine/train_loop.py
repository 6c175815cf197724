"""One training step: forward, backward, optimiser, with ``torch.amp`` and gradient accumulation.

fast-reid's ``SimpleTrainer`` / ``AMPTrainer`` (``fastreid/engine/train_loop.py``) use the
deprecated ``torch.cuda.amp`` API, know float16 only, cannot accumulate gradients, and copy
every loss to the host separately on a new CUDA stream at every step. :class:`UniPTStepTrainer`
is a ``SimpleTrainer`` whose ``run_step`` does:

1. take the next batch of ``IMS_PER_BATCH // world size`` samples from the loader;
2. split it into ``accum_steps`` micro-batches (sample ``k::accum_steps`` go to micro-batch k,
   so micro-batch k of one process holds what process k of ``accum_steps`` processes would get
   from fast-reid's samplers, which deal the stream out round-robin);
3. for each micro-batch: forward under ``torch.autocast(device, dtype)`` when AMP is on, then
   backward of ``loss / accum_steps`` (scaled by a ``torch.amp.GradScaler`` for float16; none
   is needed for bfloat16); DistributedDataParallel all-reduces on the last micro-batch only
   (``no_sync``);
4. one optimiser step (gradients unscaled first, then through the scaler for float16), then
   ``zero_grad``; while ``self.iter < freeze_iters`` the parameters of the groups flagged
   ``freeze_status = "freeze"`` (SOLVER.FREEZE_ITERS with MODEL.FREEZE_LAYERS, see
   ``unipt_plugin.solver.build``) have their gradients dropped before the step, so the optimiser
   leaves them and their state (Adam's moments and step count) untouched, as fast-reid's
   freeze wrapper does. The window is a function of the trainer's iteration, not a count of
   steps taken, so a run resumed inside it stays exact;
5. the losses (averaged over micro-batches) to the event storage with one host copy.

The losses of each micro-batch use that micro-batch's samples as negatives (contrastive and
ranking losses), which is how one GPU with ``ACCUM_STEPS 8`` reproduces the per-GPU negatives of
eight GPUs.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Mapping

import numpy as np
import torch
from fastreid.engine.train_loop import SimpleTrainer
from fastreid.utils import comm
from fastreid.utils.events import get_event_storage
from torch.nn.parallel import DistributedDataParallel

__all__ = ["UniPTStepTrainer", "split_batch", "amp_dtype"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def amp_dtype(name: str) -> torch.dtype:
    """SOLVER.AMP.DTYPE -> torch dtype ("float16" or "bfloat16")."""
    if name not in _DTYPES:
        raise ValueError(f"SOLVER.AMP.DTYPE = {name!r}: expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def split_batch(batch: Mapping[str, Any], parts: int) -> list[dict[str, Any]]:
    """A batch dict of tensors with B rows -> ``parts`` dicts, part k holding rows k::parts.

    Raises ValueError when B is not a multiple of ``parts``."""
    if parts == 1:
        return [dict(batch)]
    sizes = {k: v.shape[0] for k, v in batch.items() if torch.is_tensor(v)}
    size = next(iter(sizes.values()))
    if any(s != size for s in sizes.values()) or size % parts:
        raise ValueError(f"a training batch of {sizes} rows cannot be split into SOLVER.ACCUM_STEPS = {parts} "
                         f"equal micro-batches")
    return [{k: (v[k0::parts] if torch.is_tensor(v) else v) for k, v in batch.items()} for k0 in range(parts)]


class UniPTStepTrainer(SimpleTrainer):
    """fast-reid's ``SimpleTrainer`` with ``torch.amp`` and gradient accumulation.

    Args:
        model: the (possibly DistributedDataParallel) model; ``model(batch)`` -> dict of 0-d losses.
        data_loader: infinite iterable of batch dicts.
        optimizer: the optimiser.
        param_wrapper: fast-reid's ContiguousParams or None.
        device_type: "cuda" or "cpu" (the autocast device).
        amp: mixed precision on (``dtype`` then is the autocast dtype).
        dtype: torch.float16 (with a GradScaler) or torch.bfloat16.
        accum_steps: micro-batches per optimiser step (>= 1).
        freeze_iters: SOLVER.FREEZE_ITERS: the groups flagged ``freeze_status = "freeze"`` are not
            updated while ``self.iter`` (set by fast-reid's ``DefaultTrainer.run_step`` before each
            step) is below it; 0 = no freezing.
    Attributes:
        grad_scaler: the ``torch.amp.GradScaler`` (float16 AMP) or None; checkpointed by the trainer.
    """

    def __init__(self, model, data_loader, optimizer, param_wrapper=None, *, device_type: str = "cpu",
                 amp: bool = False, dtype: torch.dtype = torch.float16, accum_steps: int = 1,
                 freeze_iters: int = 0) -> None:
        super().__init__(model, data_loader, optimizer, param_wrapper)
        if int(accum_steps) < 1:
            raise ValueError(f"SOLVER.ACCUM_STEPS must be >= 1, got {accum_steps}")
        self.freeze_iters = int(freeze_iters)
        # The flagged parameters, taken before a checkpoint is loaded (loading keeps the parameter
        # objects but replaces the groups' other entries with the saved ones).
        self._frozen_params = [p for g in optimizer.param_groups if g.get("freeze_status") == "freeze"
                               for p in g["params"]]
        self.device_type = device_type
        self.amp = bool(amp)
        self.dtype = dtype
        self.accum_steps = int(accum_steps)
        use_scaler = self.amp and dtype == torch.float16
        self.grad_scaler = torch.amp.GradScaler(device_type, enabled=True) if use_scaler else None

    def autocast(self):
        """The autocast context of the forward pass (a no-op context when AMP is off)."""
        if not self.amp:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def _no_sync(self, last: bool):
        if not last and isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return nullcontext()

    def forward_backward(self, data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Forward and backward over the micro-batches of ``data``; returns the detached losses
        averaged over micro-batches (gradients are accumulated in the parameters' ``.grad``)."""
        parts = split_batch(data, self.accum_steps)
        totals: dict[str, torch.Tensor] = {}
        for k, part in enumerate(parts):
            with self._no_sync(last=k == len(parts) - 1):
                with self.autocast():
                    loss_dict = self.model(part)
                losses = sum(loss_dict.values()) / self.accum_steps
                if self.grad_scaler is not None:
                    losses = self.grad_scaler.scale(losses)
                losses.backward()
            for name, value in loss_dict.items():
                v = value.detach().float() / self.accum_steps
                totals[name] = totals[name] + v if name in totals else v
        return totals

    def optimizer_step(self) -> None:
        """The optimiser step (through the GradScaler for float16), then ``zero_grad``.

        The gradients are unscaled before the step: a fused optimiser would otherwise unscale
        inside its kernel, after fast-reid's gradient clipping (SOLVER.CLIP_GRADIENTS, a wrapped
        ``step``) had clipped the scaled gradients. Inside the freeze window the frozen parameters'
        gradients are set to None after unscaling (a non-finite one still skips the step, as in
        fast-reid) and before clipping and the step."""
        frozen = bool(self._frozen_params) and self._in_freeze_window()
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        if frozen:
            for p in self._frozen_params:
                p.grad = None
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _in_freeze_window(self) -> bool:
        if self.freeze_iters <= 0:
            return False
        it = getattr(self, "iter", None)
        if it is None:
            raise RuntimeError("UniPTStepTrainer with freeze_iters > 0 needs its iteration: set trainer.iter before "
                               "each step (fast-reid's DefaultTrainer.run_step does)")
        return int(it) < self.freeze_iters

    def run_step(self) -> None:
        assert self.model.training, "[UniPTStepTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        loss_dict = self.forward_backward(data)
        self.optimizer_step()
        self._write_metrics(loss_dict, data_time)

    def _write_metrics(self, loss_dict: dict[str, torch.Tensor], data_time: float) -> None:
        """The losses to the event storage: one host copy of all terms, gathered to the main process."""
        names = list(loss_dict)
        values = torch.stack([loss_dict[k].reshape(()) for k in names]).cpu().tolist() if names else []
        metrics = dict(zip(names, values))
        metrics["data_time"] = data_time
        all_metrics = comm.gather(metrics) if comm.get_world_size() > 1 else [metrics]
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        storage.put_scalar("data_time", float(np.max([m.pop("data_time") for m in all_metrics])))
        reduced = {k: float(np.mean([m[k] for m in all_metrics])) for k in all_metrics[0]}
        storage.put_scalar("total_loss", sum(reduced.values()))
        if len(reduced) > 1:
            storage.put_scalars(**reduced)
