"""Export of the image and text encoders to TorchScript (``torch.jit.trace``) for serving.

The model's eval forward takes a dict; each modality is wrapped in a small module taking
tensors, traced with example inputs of the configured size, checked against the eager model on
other inputs (another batch size and other text lengths), and saved atomically:

    <out>/image_encoder.pt   images (B, 3, H, W) uint8 or float 0-255   -> (B, D) features
    <out>/text_encoder.pt    text_ids (B, L) long, text_mask (B, L) long -> (B, D) features
    <out>/export.json        input sizes, tokeniser settings, hashes, the agreement check

Load with ``torch.jit.load(path)``; tokenise queries with the project's tokenizer (any width
L <= ``INPUT.TEXT.MAX_LENGTH``: the batch's longest caption rounded up, or MAX_LENGTH, per
``INPUT.TEXT.PADDING``; the check below covers both) and score by the inner product of the two
outputs.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.io import atomic_open, atomic_write_json
from .fingerprint import config_hash, weights_hash

logger = logging.getLogger(__name__)

__all__ = ["ImageEncoder", "TextEncoder", "example_inputs", "export_encoders", "max_abs_diff"]


class ImageEncoder(nn.Module):
    """``images (B, 3, H, W) uint8 or float 0-255 -> (B, D)`` through ``model({"images": images})``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model({"images": images})


class TextEncoder(nn.Module):
    """``(text_ids (B, L) long, text_mask (B, L) long) -> (B, D)`` through the model's text branch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.model({"text_ids": text_ids, "text_mask": text_mask})


def example_inputs(cfg: Any, batch_size: int, lengths: list[int], vocab_size: int, seed: int = 0,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images (B, 3, H, W) in 0-255 and token batches (B, L) with real lengths ``lengths``.

    Token ids avoid 0..999 (special tokens of the WordPiece and BPE vocabularies); the first
    id of each row is kept at 101 ([CLS]) for BERT-like vocabularies.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = (int(v) for v in cfg.INPUT.SIZE_TEST)
    images = torch.rand(batch_size, 3, h, w, generator=g) * 255.0
    max_len = int(cfg.INPUT.TEXT.MAX_LENGTH)
    low = min(1000, max(1, vocab_size - 1))
    ids = torch.randint(low, max(low + 1, vocab_size), (batch_size, max_len), generator=g)
    mask = torch.zeros(batch_size, max_len, dtype=torch.long)
    for i, n in enumerate(lengths):
        n = max(2, min(int(n), max_len))
        mask[i, :n] = 1
    ids = ids * mask
    return images.to(device), ids.to(device), mask.to(device)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute element difference of two tensors of the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


@torch.no_grad()
def export_encoders(model: nn.Module, cfg: Any, out_dir: str | os.PathLike, vocab_size: int,
                    atol: float = 1e-4) -> dict[str, Any]:
    """Trace both encoders of ``model`` (eval mode) and save them under ``out_dir``.

    The traced modules are compared with the eager model on inputs they were not traced on (batch
    size 3 instead of 2, other text lengths); a difference above ``atol`` raises RuntimeError
    and nothing is written. Returns the ``export.json`` content.
    """
    model = model.eval()
    device = next(model.parameters()).device
    max_len = int(cfg.INPUT.TEXT.MAX_LENGTH)
    images, ids, mask = example_inputs(cfg, 2, [max_len, max(2, max_len // 3)], vocab_size, 0, device)
    image_enc, text_enc = ImageEncoder(model).eval(), TextEncoder(model).eval()
    with warnings.catch_warnings():
        # torch's deprecation notice and TracerWarnings about constants: the traced modules are
        # checked against the eager model on other inputs right below instead.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced_image = torch.jit.trace(image_enc, (images,), check_trace=False)
        traced_text = torch.jit.trace(text_enc, (ids, mask), check_trace=False)

    c_images, c_ids, c_mask = example_inputs(cfg, 3, [3, max_len - 1, max(2, max_len // 2)],
                                             vocab_size, 1, device)
    diff_image = max(max_abs_diff(traced_image(c_images), image_enc(c_images)),
                     # uint8 images, what the project's transform gives
                     max_abs_diff(traced_image(c_images.round().to(torch.uint8)),
                                  image_enc(c_images.round().to(torch.uint8))))
    # a narrower batch, as dynamic padding (INPUT.TEXT.PADDING "longest") gives
    narrow = max(2, max_len // 2)
    diff_text = max(max_abs_diff(traced_text(c_ids, c_mask), text_enc(c_ids, c_mask)),
                    max_abs_diff(traced_text(c_ids[:, :narrow], c_mask[:, :narrow]),
                                 text_enc(c_ids[:, :narrow], c_mask[:, :narrow])))
    if diff_image > atol or diff_text > atol:
        raise RuntimeError(f"traced encoders disagree with the eager model (max |diff| image "
                           f"{diff_image:.3g}, text {diff_text:.3g} > {atol:g}): the model has "
                           f"input-dependent control flow that tracing cannot capture")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, module in (("image_encoder.pt", traced_image), ("text_encoder.pt", traced_text)):
        with atomic_open(out / name, "wb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(module, f)
    meta = {
        "format": "torchscript",
        "image_encoder": "image_encoder.pt",
        "text_encoder": "text_encoder.pt",
        "image_input": {"shape": ["B", 3, *[int(v) for v in cfg.INPUT.SIZE_TEST]], "dtype": "uint8 or float32",
                        "range": "0-255 RGB (normalised inside with MODEL.PIXEL_MEAN/PIXEL_STD)"},
        "text_input": {"shape": ["B", f"L <= {max_len}"], "dtype": "int64",
                       "tokenizer": cfg.INPUT.TEXT.TOKENIZER, "lower_case": bool(cfg.INPUT.TEXT.LOWER_CASE),
                       "max_length": max_len},
        "feature_dim": int(traced_image(images).shape[1]),
        "score": "inner product of image and text features",
        "config_hash": config_hash(cfg),
        "weights_hash": weights_hash(model.state_dict()),
        "check": {"max_abs_diff_image": diff_image, "max_abs_diff_text": diff_text, "atol": atol},
        "device": str(device),
    }
    atomic_write_json(out / "export.json", meta, indent=1)
    logger.info("Exported TorchScript encoders to %s (max |diff| image %.2g, text %.2g)",
                out, diff_image, diff_text)
    return meta
