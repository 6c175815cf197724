"""fast-reid evaluator for text-to-image (and optionally image-to-text) person retrieval."""
from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from fastreid.evaluation.evaluator import DatasetEvaluator
from fastreid.utils import comm

from .retrieval_metrics import image_to_text, retrieval_metrics

logger = logging.getLogger(__name__)

__all__ = ["TextToImageEvaluator", "collective_device", "all_gather_rows"]


def collective_device(local: torch.device, group: Optional[dist.ProcessGroup] = None) -> torch.device:
    """The device that the process group's backend exchanges tensors on.

    NCCL: this process's current CUDA device (or ``local`` when it is a CUDA device); gloo
    and MPI: the CPU; any other backend (e.g. a per-device "cpu:gloo,cuda:nccl" group):
    ``local`` itself.
    """
    backend = str(dist.get_backend(group)).lower()
    if backend == "nccl":
        if local.type == "cuda":
            return local
        return torch.device("cuda", torch.cuda.current_device())
    if backend in ("gloo", "mpi"):
        return torch.device("cpu")
    return local


def all_gather_rows(local: torch.Tensor, sizes: Sequence[int],
                    group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Every process's rows, concatenated in rank order, on every process.

    Args:
        local: (n_r, ...) this process's rows; the trailing dimensions and the dtype must be
            the same on every process.
        sizes: n_r of every process (rank order), e.g. from one earlier gather of the sizes.
        group: process group (default: the world).

    The rows are padded to max(sizes), exchanged with one ``torch.distributed.all_gather`` on
    the backend's device (:func:`collective_device`: the CPU for gloo, CUDA for NCCL), trimmed
    and concatenated. Returns a (sum(sizes), ...) tensor on ``local``'s device.
    """
    rank = dist.get_rank(group)
    if local.shape[0] != sizes[rank]:
        raise ValueError(f"rank {rank} holds {local.shape[0]} rows, sizes say {sizes[rank]}")
    device = collective_device(local.device, group)
    longest = max(sizes)
    padded = torch.zeros((longest,) + tuple(local.shape[1:]), dtype=local.dtype, device=device)
    padded[:local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]).to(local.device)


class TextToImageEvaluator(DatasetEvaluator):
    """Collects caption (query) and image (gallery) features and computes exact retrieval metrics.

    Batches follow the test-loader contract: a batch with "images" is a gallery batch, otherwise
    one with "text_ids" is a query batch; "targets" holds the raw person ids (B,). The model's
    outputs are features (B, D) scored by inner product. Batches may come in any order; the
    features of each kind are concatenated in the order they were processed.

    Device: the features stay where the model put them (as float32) and the metrics are
    computed there, on the GPU when the model runs on one (``retrieval_metrics`` is torch ops
    only); the returned floats do not depend on the device for the same scores.

    Several processes (``torch.distributed`` initialised, world size > 1): each process holds
    its own share of the queries and of the gallery (the test loader gives rank r the r-th
    contiguous share of each). ``evaluate()`` gathers the features and ids of every process
    with ``torch.distributed.all_gather`` (sizes first, then padded tensors, trimmed and
    concatenated in rank order, i.e. the single-process order) on the backend's device (CPU for
    gloo, CUDA for NCCL, and back to the features' device). Every process then computes the
    metrics on its own device from the same features (no process waits on another; on GPUs
    this takes the time of one), and rank 0's values are broadcast so that every process
    returns exactly the same dict (fast-reid's ``EvalHook`` and ``DefaultTrainer.test`` run on
    every process).

    ``evaluate()`` returns an ``OrderedDict`` with "Rank-k" (cfg.TEST.T2I.TOPK; Rank-1 always),
    "mAP", "mINP" in percent, and "metric" = (mAP + Rank-1) / 2 (fast-reid's best-checkpoint
    key); with cfg.TEST.T2I.IMAGE_TO_TEXT also the same metrics prefixed "i2t/".
    """

    def __init__(self, cfg, num_query: int, output_dir: Optional[str] = None):
        self.cfg = cfg
        self._num_query = int(num_query)
        self._output_dir = output_dir
        self._topk = sorted({int(k) for k in cfg.TEST.T2I.TOPK} | {1})
        self._chunk_size = int(cfg.TEST.T2I.CHUNK_SIZE)
        self._image_to_text = bool(cfg.TEST.T2I.IMAGE_TO_TEXT)
        self._predictions: List[Dict[str, torch.Tensor]] = []

    def reset(self) -> None:
        """Forget every processed batch (fast-reid calls it before each evaluation)."""
        self._predictions = []

    def process(self, inputs: Dict[str, torch.Tensor], outputs: torch.Tensor) -> None:
        """inputs: one test batch (dict); outputs: (B, D) features of that batch, kept on their
        device as float32; the (B,) ids are kept as int64 where they are (the CPU for a loader)."""
        if "images" in inputs:
            kind = "gallery"
        elif "text_ids" in inputs:
            kind = "query"
        else:
            raise KeyError(f"test batch has neither 'images' nor 'text_ids'; keys: "
                           f"{sorted(inputs)}")
        if "targets" not in inputs:
            raise KeyError(f"test batch has no 'targets' (person ids); keys: {sorted(inputs)}")
        if not torch.is_tensor(outputs) or outputs.dim() != 2:
            raise ValueError(f"model outputs must be a (B, D) tensor in eval mode; got "
                             f"{type(outputs).__name__} {getattr(outputs, 'shape', '')}")
        pids = torch.as_tensor(inputs["targets"]).reshape(-1)
        if pids.numel() != outputs.shape[0]:
            raise ValueError(f"{pids.numel()} targets for {outputs.shape[0]} features")
        self._predictions.append({
            "kind": kind,
            "feats": outputs.detach().to(torch.float32),
            "pids": pids.detach().to(torch.int64),
        })

    def _device(self) -> Optional[torch.device]:
        """Device of the first processed features (None before any batch)."""
        return self._predictions[0]["feats"].device if self._predictions else None

    def _local(self, kind: str, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """This process's (n, D) float32 features (on ``device``) and (n,) int64 ids (CPU) of
        one kind, in processing order; (0, 0) and (0,) when none was processed."""
        parts = [p for p in self._predictions if p["kind"] == kind]
        if not parts:
            return (torch.zeros(0, 0, dtype=torch.float32, device=device),
                    torch.zeros(0, dtype=torch.int64))
        return (torch.cat([p["feats"].to(device) for p in parts]),
                torch.cat([p["pids"].cpu() for p in parts]))

    def _gathered(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text_feats, text_pids, image_feats, image_pids) of every process, in rank order."""
        own = self._device()
        device = own if own is not None else collective_device(torch.device("cpu"))
        local = [self._local("query", device), self._local("gallery", device)]
        # One exchange of (rows, D) per kind: sizes for the padding, D for empty shares.
        meta = torch.tensor([[f.shape[0], f.shape[1]] for f, _ in local], dtype=torch.int64,
                            device=collective_device(device))
        metas = [torch.zeros_like(meta) for _ in range(dist.get_world_size())]
        dist.all_gather(metas, meta)
        metas = [m.cpu().tolist() for m in metas]
        dims = {m[k][1] for m in metas for k in range(2) if m[k][0] > 0}
        if len(dims) > 1:
            raise ValueError(f"feature dimensions differ between processes or kinds: {sorted(dims)}")
        dim = dims.pop() if dims else 0
        out = []
        for k, (feats, pids) in enumerate(local):
            sizes = [m[k][0] for m in metas]
            feats = feats.reshape(feats.shape[0], dim) if feats.shape[0] == 0 else feats
            out.append(all_gather_rows(feats, sizes))
            out.append(all_gather_rows(pids, sizes))
        return out[0], out[1], out[2], out[3]

    def evaluate(self) -> "OrderedDict[str, float]":
        """The metrics of every processed batch (of every process), on every process."""
        world_size = comm.get_world_size()
        if world_size > 1:
            text_feats, text_pids, image_feats, image_pids = self._gathered()
        else:
            device = self._device()
            device = torch.device("cpu") if device is None else device
            text_feats, text_pids = self._local("query", device)
            image_feats, image_pids = self._local("gallery", device)
        for name, feats in (("query", text_feats), ("gallery", image_feats)):
            if feats.shape[0] == 0:
                raise ValueError(f"no {name} batch was processed: the test loader must yield both "
                                 f"text (query) and image (gallery) batches")
        if text_feats.shape[0] != self._num_query:
            raise ValueError(f"expected {self._num_query} query (caption) features, got "
                             f"{text_feats.shape[0]}")

        t2i = retrieval_metrics(text_feats, image_feats, text_pids, image_pids,
                                topk=self._topk, chunk_size=self._chunk_size)
        results = OrderedDict()
        for k in self._topk:
            results[f"Rank-{k}"] = t2i[f"Rank-{k}"]
        results["mAP"] = t2i["mAP"]
        results["mINP"] = t2i["mINP"]
        results["metric"] = (t2i["mAP"] + t2i["Rank-1"]) / 2
        if self._image_to_text:
            i2t = image_to_text(text_feats, image_feats, text_pids, image_pids,
                                topk=self._topk, chunk_size=self._chunk_size)
            for key, value in i2t.items():
                results[f"i2t/{key}"] = value
        if world_size > 1:
            results = _broadcast_results(results, text_feats.device)
        logger.info("text-to-image: %d queries, %d gallery images, ranked on %s (%d process%s)",
                    text_feats.shape[0], image_feats.shape[0], text_feats.device, world_size,
                    "es" if world_size > 1 else "")
        return copy.deepcopy(results)


def _broadcast_results(results: "OrderedDict[str, float]", device: torch.device) -> "OrderedDict[str, float]":
    """Rank 0's values for the same keys on every process (float64, exact); a process whose
    own values differ (devices that compute the products differently) logs a warning."""
    values = torch.tensor(list(results.values()), dtype=torch.float64,
                          device=collective_device(device))
    own = values.clone()
    dist.broadcast(values, src=0)
    if not torch.equal(values, own):
        logger.warning("rank %d computed metrics that differ from rank 0's; using rank 0's",
                       dist.get_rank())
    return OrderedDict(zip(results.keys(), values.cpu().tolist()))
