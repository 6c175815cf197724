"""fast-reid evaluator for text-to-image (and optionally image-to-text) person retrieval."""
from __future__ import annotations

import copy
import itertools
import logging
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from fastreid.evaluation.evaluator import DatasetEvaluator
from fastreid.utils import comm

from .retrieval_metrics import image_to_text, retrieval_metrics

logger = logging.getLogger(__name__)

__all__ = ["TextToImageEvaluator"]


class TextToImageEvaluator(DatasetEvaluator):
    """Collects caption (query) and image (gallery) features and computes exact retrieval metrics.

    Batches follow the test-loader contract: a batch with "images" is a gallery batch, otherwise
    one with "text_ids" is a query batch; "targets" holds the raw person ids (B,). The model's
    outputs are features (B, D) scored by inner product. Batches may come in any order.

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
        self._predictions = []

    def process(self, inputs: Dict[str, torch.Tensor], outputs: torch.Tensor) -> None:
        """inputs: one test batch (dict); outputs: (B, D) features of that batch."""
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
            "feats": outputs.detach().to("cpu", torch.float32),
            "pids": pids.detach().to("cpu", torch.int64),
        })

    def _collect(self, kind: str, predictions):
        parts = [p for p in predictions if p["kind"] == kind]
        if not parts:
            raise ValueError(f"no {kind} batch was processed: the test loader must yield both "
                             f"text (query) and image (gallery) batches")
        return (torch.cat([p["feats"] for p in parts]), torch.cat([p["pids"] for p in parts]))

    def evaluate(self):
        if comm.get_world_size() > 1:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions

        text_feats, text_pids = self._collect("query", predictions)
        image_feats, image_pids = self._collect("gallery", predictions)
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
        logger.info("text-to-image: %d queries, %d gallery images", text_feats.shape[0],
                    image_feats.shape[0])
        return copy.deepcopy(results)
