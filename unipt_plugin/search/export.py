"""Export of the image and text encoders as ``torch.export`` programs and ONNX models.

The model's eval forward takes a dict; each modality is wrapped in a small module taking
tensors (:class:`ImageEncoder`, :class:`TextEncoder`: exactly the features search uses, i.e.
``MODEL.T2I.TEST_SCORE``'s global and/or PGU parts), captured once by ``torch.export.export``
with a dynamic batch size and a dynamic text length (``torch.export.Dim``), and written as:

    <out>/image_encoder.pt2   images (B, 3, H, W) float32 0-255           -> features (B, D)
    <out>/text_encoder.pt2    text_ids (B, L) int64, text_mask (B, L) int64 -> features (B, D)
    <out>/image_encoder.onnx  the same programs translated by torch.onnx.export (dynamo exporter)
    <out>/text_encoder.onnx
    <out>/export.json         input specs, tokeniser settings, hashes, the agreement figures

``B >= 1``; ``2 <= L <= INPUT.TEXT.MAX_LENGTH`` (a tokenised text has at least its two special
tokens; padding per ``INPUT.TEXT.PADDING``, which does not change the features); H, W =
``INPUT.SIZE_TEST``. Before anything is written under the final names, every saved file is
loaded back (``torch.export.load(...).module()``; an ``onnxruntime.InferenceSession`` on the
CPU) and run on inputs other than the export example (other batch sizes, other text lengths,
integer-valued images as the project's uint8 transform gives); a max |exported - eager| above
``atol`` on any output raises :class:`ExportMismatchError`.

TorchScript (``torch.jit.trace``) is no longer written: it is deprecated in torch 2.14, and
``.pt2`` covers its uses (Python with ``torch.export.load``; C++ through AOTInductor), while
ONNX covers runtimes without torch.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..utils.io import atomic_write_json
from .fingerprint import config_hash, weights_hash

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "ExportMismatchError", "ImageEncoder", "TextEncoder", "example_inputs", "export_encoders", "export_programs",
           "max_abs_diff", "to_onnx"]

#: what ``export_encoders`` can write: "torch_export" (.pt2) and "onnx" (.onnx)
FORMATS = ("torch_export", "onnx")
_SUFFIX = {"torch_export": ".pt2", "onnx": ".onnx"}
IMAGE_INPUTS = ("images",)
TEXT_INPUTS = ("text_ids", "text_mask")
OUTPUT = "features"
#: a tokenised text's fewest tokens (its start and end tokens)
MIN_TEXT_LENGTH = 2


class ExportMismatchError(RuntimeError):
    """An exported encoder's features differ from the eager model's by more than the tolerance."""


class ImageEncoder(nn.Module):
    """``images (B, 3, H, W) 0-255 -> (B, D)`` through ``model({"images": images})``."""

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
    """Random images (B, 3, H, W) float32 in 0-255 and token batches (B, MAX_LENGTH) int64 whose
    rows have ``lengths`` real tokens (mask 1, ids 0 after them).

    Token ids avoid 0..999 (special tokens of the WordPiece and BPE vocabularies).
    """
    g = torch.Generator().manual_seed(seed)
    h, w = (int(v) for v in cfg.INPUT.SIZE_TEST)
    images = torch.rand(batch_size, 3, h, w, generator=g) * 255.0
    max_len = int(cfg.INPUT.TEXT.MAX_LENGTH)
    low = min(1000, max(1, vocab_size - 1))
    ids = torch.randint(low, max(low + 1, vocab_size), (batch_size, max_len), generator=g)
    mask = torch.zeros(batch_size, max_len, dtype=torch.long)
    for i, n in enumerate(lengths):
        n = max(MIN_TEXT_LENGTH, min(int(n), max_len))
        mask[i, :n] = 1
    ids = ids * mask
    return images.to(device), ids.to(device), mask.to(device)


def max_abs_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Largest absolute element difference of two tensors (or arrays) of the same shape."""
    a, b = torch.as_tensor(a).detach().cpu(), torch.as_tensor(b).detach().cpu()
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _max_length(cfg: Any) -> int:
    max_len = int(cfg.INPUT.TEXT.MAX_LENGTH)
    if max_len < MIN_TEXT_LENGTH + 1:
        raise ValueError(f"INPUT.TEXT.MAX_LENGTH={max_len}: the text encoder's export needs >= "
                         f"{MIN_TEXT_LENGTH + 1} (a dynamic length from {MIN_TEXT_LENGTH} to MAX_LENGTH)")
    return max_len


@torch.no_grad()
def export_programs(model: nn.Module, cfg: Any, vocab_size: int) -> dict[str, torch.export.ExportedProgram]:
    """``torch.export.export`` of both encoders of ``model`` (eval mode, on its device).

    Dynamic dims: the batch (``Dim("batch", min=1)``) of both, and the text length
    (``Dim("length", min=2, max=INPUT.TEXT.MAX_LENGTH)``), shared by ``text_ids`` and ``text_mask``.
    Returns ``{"image": program, "text": program}``.
    """
    model = model.eval()
    device = next(model.parameters()).device
    max_len = _max_length(cfg)
    # the example: batch 2 (torch.export specialises a size-1 dim), width MAX_LENGTH, a full
    # and a short caption
    images, ids, mask = example_inputs(cfg, 2, [max_len, max(MIN_TEXT_LENGTH, max_len // 3)], vocab_size, 0,
                                       device)
    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("length", min=MIN_TEXT_LENGTH, max=max_len)
    image = torch.export.export(ImageEncoder(model).eval(), (images,), dynamic_shapes=({0: batch},))
    text = torch.export.export(TextEncoder(model).eval(), (ids, mask),
                               dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}))
    return {"image": image, "text": text}


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Silence onnxscript's notices that some nodes (Split with several outputs) were not
    constant-folded, and torch's that two inputs share a dynamic axis name: both harmless here."""
    log = logging.getLogger("onnxscript.optimizer")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used", category=UserWarning)
            yield
    finally:
        log.setLevel(level)


def to_onnx(program: torch.export.ExportedProgram, modality: str, opset: int | None = None) -> Any:
    """Translate an encoder's program (from :func:`export_programs`) with ``torch.onnx.export``
    (the dynamo exporter) -> ``torch.onnx.ONNXProgram``.

    Inputs are named ``images`` or ``text_ids`` / ``text_mask``, the output ``features``;
    the dynamic axes are named ``batch`` and ``length``. ``opset`` None = torch's default.
    """
    if modality == "image":
        names, axes = IMAGE_INPUTS, ({0: "batch"},)
    elif modality == "text":
        names, axes = TEXT_INPUTS, ({0: "batch", 1: "length"}, {0: "batch", 1: "length"})
    else:
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    with _quiet_onnx_exporter():
        return torch.onnx.export(program, (), dynamo=True, input_names=list(names), output_names=[OUTPUT],
                                 dynamic_shapes=axes, opset_version=opset, verbose=False)


def _check_cases(cfg: Any, vocab_size: int,
                 device: torch.device) -> dict[str, list[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]]:
    """(exported encoder's inputs, eager model's inputs) unlike the export example: image batches
    of 3 and 1, random floats and integer values (the eager model gets those as uint8, as search
    sends them); text batches (3, MAX_LENGTH), (3, MAX_LENGTH // 2) and (1, 2)."""
    max_len = _max_length(cfg)
    images, ids, mask = example_inputs(cfg, 3, [3, max_len - 1, max(MIN_TEXT_LENGTH, max_len // 2)], vocab_size, 1,
                                       device)
    whole = images.round()
    narrow = max(MIN_TEXT_LENGTH, max_len // 2)
    texts = [(ids, mask), (ids[:, :narrow].contiguous(), mask[:, :narrow].contiguous()),
             (ids[:1, :MIN_TEXT_LENGTH].contiguous(), mask[:1, :MIN_TEXT_LENGTH].contiguous())]
    return {"image": [((images,), (images,)), ((whole,), (whole.to(torch.uint8),)),
                      ((whole[:1],), (whole[:1].to(torch.uint8),))],
            "text": [(xs, xs) for xs in texts]}


def _pt2_runner(path: Path) -> Callable[..., torch.Tensor]:
    module = torch.export.load(str(path)).module()
    return lambda *xs: module(*xs)


def _onnx_runner(path: Path, input_names: Sequence[str]) -> Callable[..., np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = [i.name for i in session.get_inputs()]
    if got != list(input_names):
        raise RuntimeError(f"{path}: ONNX inputs {got}, expected {list(input_names)}")
    return lambda *xs: session.run([OUTPUT], {n: x.detach().cpu().numpy() for n, x in zip(input_names, xs)})[0]


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _versions(formats: Sequence[str]) -> dict[str, str]:
    out = {"torch": torch.__version__}
    if "onnx" in formats:
        import onnx
        import onnxruntime
        import onnxscript

        out.update(onnx=onnx.__version__, onnxscript=onnxscript.__version__, onnxruntime=onnxruntime.__version__)
    return out


@torch.no_grad()
def export_encoders(model: nn.Module, cfg: Any, out_dir: str | os.PathLike, vocab_size: int,
                    formats: Sequence[str] = FORMATS, opset: int | None = None,
                    atol: float = 1e-4) -> dict[str, Any]:
    """Export both encoders of ``model`` (eval mode) in ``formats`` under ``out_dir``.

    Args:
        model: a UniPT text-to-image model (its eval forward gives the search features).
        cfg: its config (INPUT.SIZE_TEST, INPUT.TEXT.*).
        out_dir: output folder (created).
        vocab_size: the tokenizer's vocabulary size (for the random check inputs).
        formats: a non-empty subset of :data:`FORMATS`.
        opset: ONNX opset (None = torch's default, 20 in torch 2.14).
        atol: the largest max |exported - eager| feature difference accepted.
    Returns the ``export.json`` content. Raises :class:`ExportMismatchError` (and writes nothing
    under the final names) when an exported encoder disagrees with the eager model by more than ``atol``.
    """
    formats = list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad:
        raise ValueError(f"export formats {formats}: expected one or more of {', '.join(FORMATS)}")
    model = model.eval()
    device = next(model.parameters()).device
    max_len = _max_length(cfg)
    programs = export_programs(model, cfg, vocab_size)
    cases = _check_cases(cfg, vocab_size, device)
    encoders = {"image": ImageEncoder(model).eval(), "text": TextEncoder(model).eval()}
    eager = {m: [encoders[m](*ref) for _, ref in cases[m]] for m in cases}
    feature_dim = int(eager["image"][0].shape[1])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        meta_formats: dict[str, Any] = {}
        for fmt in formats:
            entry: dict[str, Any] = {}
            check: dict[str, float] = {}
            for modality, program in programs.items():
                name = f"{modality}_encoder{_SUFFIX[fmt]}"
                path = staging / name
                names = IMAGE_INPUTS if modality == "image" else TEXT_INPUTS
                if fmt == "torch_export":
                    torch.export.save(program, str(path))
                    run = _pt2_runner(path)
                else:
                    onnx_program = to_onnx(program, modality, opset)
                    onnx_program.save(str(path), external_data=None)  # external data only past 2 GB
                    entry["opset"] = int(next(o.version for o in onnx_program.model_proto.opset_import
                                              if o.domain in ("", "ai.onnx")))
                    run = _onnx_runner(path, names)
                check[f"max_abs_diff_{modality}"] = max(max_abs_diff(run(*xs), ref)
                                                        for (xs, _), ref in zip(cases[modality], eager[modality]))
                entry[f"{modality}_encoder"] = name
            entry["check"] = check
            meta_formats[fmt] = entry
            worst = max(check.values())
            if worst > atol:
                raise ExportMismatchError(f"{fmt} encoders disagree with the eager model (max |diff| image "
                                   f"{check['max_abs_diff_image']:.3g}, text {check['max_abs_diff_text']:.3g} "
                                   f"> {atol:g}); nothing written to {out}")
            logger.info("%s: max |exported - eager| image %.2g, text %.2g", fmt, check["max_abs_diff_image"],
                        check["max_abs_diff_text"])
        files = {}
        for path in sorted(staging.iterdir()):  # the encoders, and any ONNX external-data file
            files[path.name] = _sha256(path)
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    h, w = (int(v) for v in cfg.INPUT.SIZE_TEST)
    meta = {
        "formats": meta_formats,
        "files_sha256": files,
        "image_input": {"names": list(IMAGE_INPUTS), "shape": ["batch", 3, h, w], "dtype": "float32",
                        "range": "0-255 RGB (normalised inside with MODEL.PIXEL_MEAN/PIXEL_STD)"},
        "text_input": {"names": list(TEXT_INPUTS), "shape": ["batch", "length"], "dtype": "int64",
                       "length_range": [MIN_TEXT_LENGTH, max_len],
                       "tokenizer": cfg.INPUT.TEXT.TOKENIZER, "lower_case": bool(cfg.INPUT.TEXT.LOWER_CASE),
                       "max_length": max_len, "padding": cfg.INPUT.TEXT.PADDING},
        "output": {"name": OUTPUT, "shape": ["batch", feature_dim], "dtype": "float32"},
        "feature_dim": feature_dim,
        "test_score": cfg.MODEL.T2I.TEST_SCORE,
        "score": "inner product of image and text features",
        "config_hash": config_hash(cfg),
        "weights_hash": weights_hash(model.state_dict()),
        "check": {"atol": atol, "metric": "max |exported - eager| over the output features",
                  "image_batches": [list(xs[0].shape) for xs, _ in cases["image"]],
                  "text_batches": [list(xs[0].shape) for xs, _ in cases["text"]],
                  "onnx_runtime": "onnxruntime CPUExecutionProvider"},
        "versions": _versions(formats),
        "device": str(device),
    }
    atomic_write_json(out / "export.json", meta, indent=1)
    logger.info("Exported the encoders (%s) to %s", ", ".join(formats), out)
    return meta
