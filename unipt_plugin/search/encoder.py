"""Batched encoding of image files and text queries with a trained UniPT model.

The model follows the project's eval contract: ``model({"images": (B,3,H,W) uint8 (or float)
0-255})`` and ``model({"text_ids": (B,L) long, "text_mask": (B,L) long})`` both return (B, D)
features whose inner product is the retrieval score. Images travel to the model's device as
they come (uint8 from ``build_image_transform``: a quarter of float32's bytes) and the model
converts and normalises them there; queries are padded per INPUT.TEXT.PADDING (the batch's
longest by default), which does not change their features.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from fastreid.modeling.meta_arch import build_model
from torch import nn
from tqdm import tqdm

from ..data.tokenizer import build_tokenizer
from ..data.transforms import build_image_transform, read_image
from ..engine import UniPTCheckpointer
from ..modeling.weight_loading import encoder_weights_skipped

logger = logging.getLogger(__name__)

__all__ = ["ImageEncoding", "TextEncoding", "SearchEncoder", "load_model"]

def load_model(cfg: Any, weights: str | None = None) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE``, load ``weights`` (or ``cfg.MODEL.WEIGHTS``), eval mode.

    Raises FileNotFoundError when no weights file is given or it does not exist: searching with
    a randomly initialised model is never what a user wants.
    """
    path = weights or cfg.MODEL.WEIGHTS
    if not path:
        raise FileNotFoundError("no model weights: pass --weights FILE (or set MODEL.WEIGHTS)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    with encoder_weights_skipped():  # every parameter comes from the checkpoint
        model = build_model(cfg)
    UniPTCheckpointer(model).load(path)
    model.eval()
    return model


@dataclass
class ImageEncoding:
    """Result of :meth:`SearchEncoder.encode_images`.

    ``features`` (N, D) float32 rows for ``paths`` (the readable inputs, input order kept);
    ``skipped`` lists ``{"path", "reason"}`` for every input that could not be read.
    """

    features: np.ndarray
    paths: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass
class TextEncoding:
    """Result of :meth:`SearchEncoder.encode_texts`: (Q, D) float32 features, and per query its
    token count before truncation and whether it was truncated to ``INPUT.TEXT.MAX_LENGTH``."""

    features: np.ndarray
    num_tokens: list[int]
    truncated: list[bool]


class SearchEncoder:
    """Turns image files and query strings into features with ``model`` (eval mode) and ``cfg``.

    ``num_images_encoded`` / ``num_texts_encoded`` count what went through the model.
    """

    def __init__(self, model: nn.Module, cfg: Any, batch_size: int = 32, num_threads: int = 2):
        self.model = model.eval()
        self.cfg = cfg
        self.batch_size = int(batch_size)
        self.num_threads = max(1, int(num_threads))
        self.max_length = int(cfg.INPUT.TEXT.MAX_LENGTH)
        self.transform = build_image_transform(cfg, is_train=False)
        self.tokenizer = build_tokenizer(cfg)
        self.num_images_encoded = 0
        self.num_texts_encoded = 0

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    # ------------------------------------------------------------------ images
    def _load(self, path: str) -> torch.Tensor:
        return self.transform(read_image(path))

    def _try_load(self, path: str) -> tuple[torch.Tensor | None, str]:
        try:
            return self._load(path), ""
        except Exception as e:  # any decoding/transform failure: skip and report the file
            return None, f"{type(e).__name__}: {e}"

    @torch.no_grad()
    def encode_image_tensor(self, images: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) uint8 or float, 0-255 -> (B, D) float32 features.

        The tensor is moved with its own dtype (uint8 stays uint8); the model converts it to
        float32 on its device (``ImageNormalizer``).
        """
        feats = self.model({"images": images.to(self.device, non_blocking=True)})
        self.num_images_encoded += len(images)
        return feats.float().cpu().numpy()

    def encode_images(self, paths: Sequence[str], progress: bool = False,
                      on_batch: Callable[[int], None] | None = None) -> ImageEncoding:
        """Encode image files in batches of ``batch_size``; unreadable files are skipped and listed.

        Args:
            paths: image files.
            progress: show a tqdm progress bar (images).
            on_batch: called with the number of images after each batch.
        """
        bar = None
        if progress:
            bar = tqdm(total=len(paths), unit="img", desc="encoding")
        feats: list[np.ndarray] = []
        kept: list[str] = []
        skipped: list[dict[str, str]] = []
        with ThreadPoolExecutor(self.num_threads) as pool:
            for start in range(0, len(paths), self.batch_size):
                chunk = list(paths[start:start + self.batch_size])
                tensors = []
                for path, (tensor, reason) in zip(chunk, pool.map(self._try_load, chunk)):
                    if tensor is None:
                        logger.warning("skipping unreadable image %s (%s)", path, reason)
                        skipped.append({"path": path, "reason": reason})
                    else:
                        tensors.append(tensor)
                        kept.append(path)
                if tensors:
                    feats.append(self.encode_image_tensor(torch.stack(tensors)))
                if bar is not None:
                    bar.update(len(chunk))
                if on_batch is not None:
                    on_batch(len(chunk))
        if bar is not None:
            bar.close()
        dim = feats[0].shape[1] if feats else 0
        features = np.concatenate(feats, axis=0) if feats else np.zeros((0, dim), np.float32)
        return ImageEncoding(features=np.ascontiguousarray(features, np.float32), paths=kept, skipped=skipped)

    # ------------------------------------------------------------------ texts
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text before truncation, special tokens included."""
        return [int(n) for n in self.tokenizer.count_tokens(list(texts))]

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> TextEncoding:
        """Encode query strings -> (Q, D) float32; over-long ones are truncated with a warning."""
        texts = list(texts)
        if not texts:
            raise ValueError("no query text given")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"query {i} is empty: {t!r}; expected a description of a person")
        counts = self.count_tokens(texts)
        truncated = [n > self.max_length for n in counts]
        for t, n, cut in zip(texts, counts, truncated):
            if cut:
                logger.warning("query of %d tokens truncated to INPUT.TEXT.MAX_LENGTH=%d: %r",
                               n, self.max_length, t if len(t) <= 80 else t[:77] + "...")
        feats = []
        for start in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(texts[start:start + self.batch_size])
            batch = {"text_ids": tok["input_ids"].to(self.device), "text_mask": tok["attention_mask"].to(self.device)}
            feats.append(self.model(batch).float().cpu().numpy())
        self.num_texts_encoded += len(texts)
        return TextEncoding(features=np.ascontiguousarray(np.concatenate(feats), np.float32),
                            num_tokens=counts, truncated=truncated)
