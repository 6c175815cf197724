"""``UniPTTrainer``: fast-reid's DefaultTrainer with the plugin's builders.

The seams that change, each a method a subclass can override:

* ``build_train_loader`` / ``build_test_loader`` / ``build_evaluator``: text-image loaders and
  the text-to-image evaluator; for an image-ReID meta-architecture (fast-reid's ``Baseline``,
  ``config/image_reid.py``) fast-reid's image datasets through ``data/image_reid.py`` and
  fast-reid's ``ReidEvaluator`` (``evaluation/image_reid.py``; docs/image_reid.md);
* ``build_optimizer`` / ``build_lr_scheduler``: per-module groups, per-iteration schedule;
* ``build_model``: fast-reid's, then ``MODEL.COMPILE`` is applied by the meta-architectures;
* ``build_ddp_model``: DistributedDataParallel on CUDA (one device per process) and on the CPU
  (gloo), with ``static_graph`` unless gradients are accumulated (fast-reid hard-codes
  ``device_ids`` and cannot run on the CPU);
* ``build_step_trainer``: :class:`~unipt_plugin.engine.train_loop.UniPTStepTrainer` (``torch.amp``
  float16 / bfloat16, gradient accumulation) instead of fast-reid's Simple/AMPTrainer;
* ``build_checkpointer``: safe loading, atomic writes, RNG states (``UniPTCheckpointer``);
* ``build_hooks``: fast-reid's hooks, plus RNG capture, the per-iteration scheduler and pre-emption;
* ``resume_or_load`` / ``train``: resume at any iteration (epoch ends and pre-emption
  checkpoints) with the RNG state and the data-stream position, so ``--resume`` continues
  exactly (docs/determinism.md);
* ``test``: the plugin's inference loop (autocast per TEST.AMP.ENABLED, no per-batch device
  synchronisation), results written to ``OUTPUT_DIR/eval_results.json``.

Training loop, hooks, logging, checkpoint periods and evaluation period stay fast-reid's.
"""
from __future__ import annotations

import datetime
import logging
import os
import time
from collections import OrderedDict
from typing import Any

import torch
from fastreid.engine import DefaultTrainer, hooks
from fastreid.engine.train_loop import TrainerBase
from fastreid.evaluation.testing import print_csv_format
from fastreid.utils import comm
from fastreid.utils.events import CommonMetricPrinter, EventStorage
from fastreid.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..config.image_reid import is_image_reid
from ..data import (build_image_reid_test_loader, build_image_reid_train_loader, build_t2i_test_loader,
                    build_t2i_train_loader)
from ..evaluation import ImageReIDEvaluator, TextToImageEvaluator
from ..solver import build_unipt_lr_scheduler, build_unipt_optimizer
from ..utils.io import atomic_write_json
from .checkpoint import UniPTCheckpointer
from .hooks import IterLRScheduler, LayerFreeze, MetricPrinter, PeriodicCheckpointer, RNGStateHook
from .preemption import Preempted, PreemptionHook, parse_signals
from .rng import restore_rng_state
from .train_loop import UniPTStepTrainer, amp_dtype

logger = logging.getLogger(__name__)


class UniPTTrainer(DefaultTrainer):
    """Trains ``UniPTPretrain`` (pre-training), ``UniPTT2I`` (fine-tuning) or fast-reid's ``Baseline``
    (image ReID) from a config."""

    def __init__(self, cfg) -> None:
        TrainerBase.__init__(self)
        if not logging.getLogger("fastreid").isEnabledFor(logging.INFO):
            setup_logger()
        data_loader = self.build_train_loader(cfg)
        cfg = self.auto_scale_hyperparams(cfg, data_loader.dataset.num_classes)
        model = self.build_model(cfg)
        optimizer, param_wrapper = self.build_optimizer(cfg, model)
        if comm.get_world_size() > 1:
            model = self.build_ddp_model(cfg, model)
        self._trainer = self.build_step_trainer(cfg, model, data_loader, optimizer, param_wrapper)
        self.iters_per_epoch = len(data_loader.dataset) // cfg.SOLVER.IMS_PER_BATCH
        self.scheduler = self.build_lr_scheduler(cfg, optimizer, self.iters_per_epoch)
        self.checkpointer = self.build_checkpointer(cfg, model, optimizer, self.scheduler, self.grad_scaler)
        self.start_epoch = 0
        self.start_iter = 0
        self.max_epoch = cfg.SOLVER.MAX_EPOCH
        self.max_iter = self.max_epoch * self.iters_per_epoch
        self.warmup_iters = cfg.SOLVER.WARMUP_ITERS
        self.delay_epochs = cfg.SOLVER.DELAY_EPOCHS
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_ddp_model(cls, cfg, model: torch.nn.Module) -> DistributedDataParallel:
        """DistributedDataParallel over the processes of the group: one GPU per process on CUDA
        (the model already on this rank's GPU), the CPU with gloo. Buffers are constants (pixel
        statistics, position ids), so they are not broadcast. Modules that a config leaves without
        gradients are frozen by the meta-architectures (the encoders under MODEL.T2I.LINEAR_PROBE
        too), so no trainable parameter is unused and ``find_unused_parameters`` is not needed.
        ``static_graph`` (every step runs the same graph) when SOLVER.ACCUM_STEPS is 1: torch's DDP
        with ``static_graph`` fails under ``no_sync``, which gradient accumulation uses."""
        unused = [n for n, p in model.named_parameters() if not p.requires_grad]
        if unused:
            logger.info("DDP: %d frozen parameter tensors are not synchronised (e.g. %s)", len(unused), unused[0])
        static = int(cfg.SOLVER.ACCUM_STEPS) == 1
        # device_ids None: DDP does not copy the batch to the GPU before the forward; the
        # meta-architectures move their own inputs (non-blocking) and read the CPU-side "seeds"
        # of the batch without a device synchronisation. The model sits on this rank's GPU.
        return DistributedDataParallel(model, device_ids=None, broadcast_buffers=False, static_graph=static)

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer, param_wrapper) -> UniPTStepTrainer:
        """The per-iteration step: torch.amp at SOLVER.AMP.DTYPE when SOLVER.AMP.ENABLED (CUDA only;
        setup_cfg switches it off on the CPU), SOLVER.ACCUM_STEPS micro-batches per step, and the
        parameters of MODEL.FREEZE_LAYERS left unchanged for the first SOLVER.FREEZE_ITERS iterations."""
        accum = int(cfg.SOLVER.ACCUM_STEPS)
        per_process = int(cfg.SOLVER.IMS_PER_BATCH) // comm.get_world_size()
        if per_process % accum:
            raise ValueError(f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} over {comm.get_world_size()} "
                             f"process(es) gives {per_process} per process, not a multiple of SOLVER.ACCUM_STEPS = "
                             f"{accum}")
        if accum > 1:
            logger.info("Gradient accumulation: %d micro-batches of %d per optimiser step and process",
                        accum, per_process // accum)
        device_type = "cuda" if str(cfg.MODEL.DEVICE).startswith("cuda") else "cpu"
        return UniPTStepTrainer(model, data_loader, optimizer, param_wrapper, device_type=device_type,
                                amp=bool(cfg.SOLVER.AMP.ENABLED), dtype=amp_dtype(cfg.SOLVER.AMP.DTYPE),
                                accum_steps=accum, freeze_iters=int(cfg.SOLVER.FREEZE_ITERS))

    @classmethod
    def build_checkpointer(cls, cfg, model, optimizer, scheduler: dict[str, Any], grad_scaler) -> UniPTCheckpointer:
        """Checkpoints in OUTPUT_DIR (written by the main process) holding the model, optimiser,
        schedulers and, under float16 AMP, the GradScaler (the loss scale continues on resume)."""
        checkpointables = dict(optimizer=optimizer, **scheduler)
        if grad_scaler is not None:
            checkpointables["grad_scaler"] = grad_scaler
        return UniPTCheckpointer(model, cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process(), **checkpointables)

    def train(self):
        """fast-reid's epoch loop, able to start inside an epoch (``self.start_iter``, set by
        ``resume_or_load``). A pre-emption (:class:`Preempted`) skips the end-of-training
        evaluation and propagates after the hooks have closed their writers."""
        ipe = self.iters_per_epoch
        self.iter = self.start_iter
        start_epoch = self.start_iter // ipe
        logger.info("Starting training from epoch %d, iteration %d", start_epoch, self.start_iter)
        preempted = False
        with EventStorage(self.start_iter) as self.storage:
            try:
                self.before_train()
                for self.epoch in range(start_epoch, self.max_epoch):
                    self.before_epoch()
                    first = self.start_iter - self.epoch * ipe if self.epoch == start_epoch else 0
                    for _ in range(first, ipe):
                        self.before_step()
                        self.run_step()
                        self.after_step()
                        self.iter += 1
                    self.after_epoch()
            except Preempted as e:
                preempted = True
                logger.warning("%s", e)
                raise
            except Exception:
                logger.exception("Exception during training:")
                raise
            finally:
                self.storage.iter = self.iter
                for h in self._hooks:
                    if not (preempted and isinstance(h, hooks.EvalHook)):
                        h.after_train()
        if comm.is_main_process():
            return getattr(self, "_last_eval_results", None)
        return None

    @classmethod
    def build_train_loader(cls, cfg):
        logger.info("Prepare training set")
        loader = build_image_reid_train_loader(cfg) if is_image_reid(cfg) else build_t2i_train_loader(cfg)
        if len(loader.dataset) < cfg.SOLVER.IMS_PER_BATCH:
            raise ValueError(f"the training set {cfg.DATASETS.NAMES} has {len(loader.dataset)} items, fewer than "
                             f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH}: an epoch would have no iteration; "
                             f"lower SOLVER.IMS_PER_BATCH")
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        if is_image_reid(cfg):
            return build_image_reid_test_loader(cfg, dataset_name)
        return build_t2i_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_dir: str | None = None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        evaluator = ImageReIDEvaluator if is_image_reid(cfg) else TextToImageEvaluator
        return data_loader, evaluator(cfg, num_query, output_dir)

    @classmethod
    def test(cls, cfg, model):
        """Evaluate ``model`` on every dataset of cfg.DATASETS.TESTS (every process takes part;
        every process gets the results) and write them to ``OUTPUT_DIR/eval_results.json``, one
        entry per dataset name also for a single one (read it with ``read_eval_results``). Returns
        fast-reid's form: {name: metrics}, or a single test set's metrics unnested."""
        results = OrderedDict()
        for dataset_name in cfg.DATASETS.TESTS:
            logger.info("Prepare testing set")
            data_loader, evaluator = cls.build_evaluator(cfg, dataset_name)
            results_i = inference_on_dataset(model, data_loader, evaluator, autocast=_test_autocast(cfg))
            results[dataset_name] = results_i
            if comm.is_main_process() and results_i:
                logger.info("Evaluation results for %s in csv format:", dataset_name)
                print_csv_format(OrderedDict(results_i, dataset=dataset_name))
        if comm.is_main_process() and cfg.OUTPUT_DIR and results:
            atomic_write_json(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), results, indent=2)
        if len(results) == 1:
            results = list(results.values())[0]
        return results

    def resume_or_load(self, resume: bool = True) -> None:
        """fast-reid's: with ``resume`` and a ``last_checkpoint`` in OUTPUT_DIR, load it with the
        optimiser, schedulers and GradScaler and continue after its iteration (an epoch end, or
        the iteration a pre-emption stopped at); else load MODEL.WEIGHTS (model only). On resume,
        also restore this process's RNG state and start the training stream at that iteration,
        so the run continues as if never interrupted."""
        checkpoint = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if not (resume and self.checkpointer.has_checkpoint()):
            return
        if "iteration" in checkpoint:
            self.start_iter = int(checkpoint["iteration"]) + 1
        else:
            self.start_iter = (checkpoint.get("epoch", -1) + 1) * self.iters_per_epoch
        self.start_epoch = self.start_iter // self.iters_per_epoch
        self.data_loader.batch_sampler.start_batch = self.start_iter
        self._trainer._data_loader_iter = iter(self.data_loader)  # the stream restarts at start_iter
        states = checkpoint.get("rng")
        rank, world = comm.get_rank(), comm.get_world_size()
        if states is not None and len(states) == world:
            restore_rng_state(states[rank])
            logger.info("Resumed at epoch %d (iteration %d) with the checkpoint's RNG state",
                        self.start_epoch, self.start_iter)
        else:
            logger.warning("Resumed at epoch %d (iteration %d) without RNG state (%s): the run continues, but "
                           "its random draws differ from an uninterrupted run", self.start_epoch, self.start_iter,
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
        """The hooks in the order they run (fast-reid's list, built here rather than edited after
        ``DefaultTrainer.build_hooks``): iteration timer; the LR scheduler (per iteration for
        WarmupLinearLR, else fast-reid's per-epoch hook with its warm-up); fast-reid's LayerFreeze
        (MODEL.FREEZE_LAYERS for SOLVER.FREEZE_ITERS iterations); evaluation every TEST.EVAL_PERIOD
        epochs (0: at the end of training only; none without DATASETS.TESTS: pre-training, unless
        it names test sets for zero-shot evaluation); the RNG-state gather (every process,
        after evaluation, before the checkpoint); on the main process the checkpointer (every
        SOLVER.CHECKPOINT_PERIOD epochs) and the writers (console every SOLVER.LOG_PERIOD
        iterations); last, pre-emption, which acts after this
        iteration's scheduler step and writers."""
        cfg = self.cfg
        ret: list = [hooks.IterationTimer()]
        if "iter_sched" in self.scheduler:
            ret.append(IterLRScheduler(self.optimizer, self.scheduler["iter_sched"]))
        else:
            ret.append(hooks.LRScheduler(self.optimizer, self.scheduler))
        if len(cfg.MODEL.FREEZE_LAYERS) > 0 and cfg.SOLVER.FREEZE_ITERS > 0:
            ret.append(LayerFreeze(self.model, cfg.MODEL.FREEZE_LAYERS, cfg.SOLVER.FREEZE_ITERS))
        if cfg.DATASETS.TESTS:
            # fast-reid's EvalHook divides by the period: 0 (the pre-training configs) = the last epoch.
            period = int(cfg.TEST.EVAL_PERIOD) or max(1, self.max_epoch)
            ret.append(hooks.EvalHook(period, self._test_and_save_results))
        else:
            self._last_eval_results = OrderedDict()
        ret.append(RNGStateHook(self.checkpointer))
        if comm.is_main_process():
            ret.append(PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
            # The console line (iteration, losses, ETA) every SOLVER.LOG_PERIOD iterations; the
            # files (metrics.json, TensorBoard) at fast-reid's 200, as before.
            writers = self.build_writers()
            console = [w for w in writers if isinstance(w, CommonMetricPrinter)]
            ret.append(hooks.PeriodicWriter(console, int(cfg.SOLVER.LOG_PERIOD)))
            ret.append(hooks.PeriodicWriter([w for w in writers if w not in console], 200))
        ret.append(PreemptionHook(self.checkpointer, parse_signals(cfg.SOLVER.PREEMPT_SIGNALS)))
        return ret

    def _test_and_save_results(self):
        self._last_eval_results = self.test(self.cfg, self.model)
        return self._last_eval_results


def _test_autocast(cfg) -> torch.dtype | None:
    """The autocast dtype of test feature extraction: SOLVER.AMP.DTYPE when TEST.AMP.ENABLED and
    SOLVER.AMP.ENABLED on CUDA, else None (float32)."""
    if cfg.TEST.AMP.ENABLED and cfg.SOLVER.AMP.ENABLED and str(cfg.MODEL.DEVICE).startswith("cuda"):
        return amp_dtype(cfg.SOLVER.AMP.DTYPE)
    return None


def inference_on_dataset(model: torch.nn.Module, data_loader, evaluator, autocast: torch.dtype | None = None):
    """Run ``model`` in eval mode over ``data_loader`` and feed ``evaluator`` (fast-reid's loop,
    without its per-batch ``torch.cuda.synchronize`` and test-time flip), optionally under
    autocast at ``autocast``; progress is logged about every 30 s. Returns ``evaluator.evaluate()``."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    total = len(data_loader)
    device_type = "cuda" if any(p.is_cuda for p in model.parameters()) else "cpu"
    start = last_log = time.perf_counter()
    try:
        with torch.no_grad():
            for idx, inputs in enumerate(data_loader):
                if autocast is not None:
                    with torch.autocast(device_type=device_type, dtype=autocast):
                        outputs = model(inputs)
                    outputs = outputs.float()
                else:
                    outputs = model(inputs)
                evaluator.process(inputs, outputs)
                now = time.perf_counter()
                if now - last_log > 30 and idx + 1 < total:
                    eta = (now - start) / (idx + 1) * (total - idx - 1)
                    logger.info("Inference done %d/%d batches. ETA=%s", idx + 1, total,
                                datetime.timedelta(seconds=int(eta)))
                    last_log = now
        logger.info("Inference over %d batches: %.1f s", total, time.perf_counter() - start)
        return evaluator.evaluate()
    finally:
        model.train(was_training)
