"""A small open_clip CLIP trained on the labeled split: the stand-in for OpenAI's CLIP in the demo.

No pretrained CLIP can be downloaded on the demo machine, yet the pseudo-text generator's conquer
stage needs an image-text model that knows pedestrian attributes. ``train_clip_standin`` trains a
small randomly initialised ``open_clip.CLIP`` (CLIP's BPE tokenizer, 77-token context, open_clip's
``ClipLoss`` with a learnable logit scale) on the image-caption pairs of the labeled TRAIN split of
a CUHK-PEDES-format folder (``CUHK-PEDES/reid_raw.json`` + ``imgs/``, read by the project's
``CUHKPEDES`` dataset), and writes

* ``<out>.pt``: the model's state dict (``utils.io.atomic_torch_save``), and
* ``<out>.json``: its open_clip model config, the file ``tools/generate_pseudo_texts.py`` takes as
  ``--model-config`` (with ``--weights <out>.pt``); ``modeling.clip_models.create_clip`` builds it.

``attribute_accuracy`` runs the pseudo-text conquer stage (``pseudo_text.conquer.ClipConquer``,
built through ``pseudo_text.clip_model.load_frozen_clip`` exactly as the tool does) on labeled images and
scores its choices against the ground-truth attributes in ``attributes.json``
(``file_path -> {attribute: class id}``; an optional attribute that is absent is ``"none"`` or
left out).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from fastreid.utils.env import seed_all_rng
from open_clip.loss import ClipLoss
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import text_global_pool
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm import tqdm

from ..data.datasets.cuhk_pedes import CUHKPEDES, CUHKPEDESVal
from ..data.transforms import read_image
from ..modeling.clip_models import clip_model_config, create_clip
from ..pseudo_text.clip_model import load_frozen_clip
from ..pseudo_text.conquer import ClipConquer
from ..pseudo_text.image_list import ImageListDataset, clip_transform
from ..pseudo_text.vocabulary import NEGATIVE_ID, Vocabulary, load_vocabulary
from ..utils.io import atomic_torch_save, atomic_write_json

logger = logging.getLogger(__name__)

__all__ = [
    "standin_model_config",
    "resolve_labeled_root",
    "read_caption_pairs",
    "labeled_split_images",
    "train_clip_standin",
    "encode_text_trimmed",
    "mean_contrastive_loss",
    "AccuracyRow",
    "selection_accuracy",
    "load_attribute_truth",
    "attribute_accuracy",
    "accuracy_markdown",
]

#: Names of the parts of composed class ids "<color>/<pattern>/<type>" (see vocabulary.yaml).
_FACTOR_NAMES = ("color", "pattern", "type")


# ---------------------------------------------------------------------------------- model config
def standin_model_config(
    image_size: Sequence[int] = (64, 32),
    patch_size: int = 8,
    vision_width: int = 128,
    vision_layers: int = 4,
    vision_head_width: int = 32,
    text_width: int = 128,
    text_layers: int = 4,
    text_heads: int = 4,
    embed_dim: int = 128,
    context_length: int = 77,
) -> dict[str, Any]:
    """An open_clip model config (the JSON form ``open_clip.add_model_config`` reads) of a small ViT CLIP.

    ``image_size`` is (H, W); both must be multiples of ``patch_size``. The text tower uses CLIP's
    49408-token BPE vocabulary.
    """
    h, w = (int(s) for s in image_size)
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch_size}")
    if vision_width % vision_head_width:
        raise ValueError(f"vision width {vision_width} is not a multiple of the head width {vision_head_width}")
    if text_width % text_heads:
        raise ValueError(f"text width {text_width} is not a multiple of the number of heads {text_heads}")
    return {
        "embed_dim": int(embed_dim),
        "quick_gelu": False,
        "vision_cfg": {"image_size": [h, w], "layers": int(vision_layers), "width": int(vision_width),
                       "head_width": int(vision_head_width), "patch_size": int(patch_size)},
        "text_cfg": {"context_length": int(context_length), "vocab_size": 49408, "width": int(text_width),
                     "heads": int(text_heads), "layers": int(text_layers)},
    }


# ---------------------------------------------------------------------------------- labeled data
def resolve_labeled_root(labeled_root: str | os.PathLike) -> Path:
    """The datasets root holding ``CUHK-PEDES/reid_raw.json`` (``labeled_root`` or, given the
    ``CUHK-PEDES`` folder itself, its parent)."""
    root = Path(labeled_root)
    if (root / "CUHK-PEDES" / "reid_raw.json").is_file():
        return root
    if root.name == "CUHK-PEDES" and (root / "reid_raw.json").is_file():
        return root.parent
    raise FileNotFoundError(f"no CUHK-PEDES/reid_raw.json under {root}: give the datasets root (DATASETS.ROOT) holding "
                            f"the labeled set in CUHK-PEDES format (CUHK-PEDES/reid_raw.json + CUHK-PEDES/imgs/)")


def _labeled_dataset(labeled_root: str | os.PathLike, split: str) -> Any:
    """The project's CUHK-PEDES loader with ``split`` as its test split (validates the whole file)."""
    classes = {"test": CUHKPEDES, "val": CUHKPEDESVal}
    if split not in classes:
        raise ValueError(f"split must be one of {sorted(classes)}, got {split!r}")
    return classes[split](root=str(resolve_labeled_root(labeled_root)), cfg=None)


def read_caption_pairs(labeled_root: str | os.PathLike) -> list[tuple[str, str]]:
    """(absolute image path, caption) for every caption of the TRAIN split, in file order.

    Parsed by the project's ``CUHKPEDES`` dataset (``reid_raw.json`` + ``imgs/``).
    """
    return [(path, caption) for path, caption, _, _ in _labeled_dataset(labeled_root, "test").train]


def labeled_split_images(labeled_root: str | os.PathLike, split: str = "test") -> tuple[Path, list[str]]:
    """(image folder, ``file_path`` of every image of ``split`` (test or val) relative to it)."""
    ds = _labeled_dataset(labeled_root, split)
    return Path(ds.image_dir), [Path(os.path.relpath(p, ds.image_dir)).as_posix() for p, _, _ in ds.gallery]


class _PairDataset(Dataset):
    """Items ``(image (3,H,W) normalised float, token ids (context_length,) long)``."""

    def __init__(self, images: list[str], tokens: torch.Tensor, transform: Callable) -> None:
        self.images, self.tokens, self.transform = images, tokens, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(read_image(self.images[i])), self.tokens[i]


def _train_transform(eval_transform: Callable) -> Callable:
    """Light augmentation (flip, small shift/scale, brightness/contrast; no hue: colours are attributes)
    before the model's own evaluation transform."""
    return T.Compose([
        T.RandomHorizontalFlip(),
        T.RandomAffine(degrees=0, translate=(0.05, 0.05), scale=(0.9, 1.05)),
        T.ColorJitter(brightness=0.15, contrast=0.15),
        eval_transform,
    ])


def _pair_loader(pairs: Sequence[tuple[str, str]], model: torch.nn.Module, transform: Callable, batch_size: int,
                 shuffle: bool, seed: int, num_workers: int) -> DataLoader:
    ctx = int(model.context_length)
    tokens = SimpleTokenizer(context_length=ctx)([c for _, c in pairs], context_length=ctx)
    dataset = _PairDataset([p for p, _ in pairs], tokens, transform)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle and len(dataset) > batch_size,
                      num_workers=num_workers, generator=gen, persistent_workers=False)


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed on the columns up to the longest caption only.

    CLIP's text tower is causal and pools at the end-of-text token, so the padding after it never
    reaches the output: dropping the all-padding tail gives the same (B, D) features at a fraction
    of the cost (captions are far shorter than the 77-token context).
    """
    length = max(1, int((tokens != 0).sum(dim=1).max()))
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.ln_final(model.transformer(x, attn_mask=mask))
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


def _features(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D) unit image and text features of a batch of pairs."""
    return F.normalize(model.encode_image(images), dim=-1), F.normalize(encode_text_trimmed(model, tokens), dim=-1)


@torch.no_grad()
def mean_contrastive_loss(model: torch.nn.Module, pairs: Sequence[tuple[str, str]], batch_size: int = 64,
                          resize_mode: str = "longest", device: str | torch.device = "cpu") -> float:
    """Mean open_clip ``ClipLoss`` over fixed, unaugmented batches of ``pairs`` (model in eval mode).

    Uses the model's own logit scale; batches follow the order of ``pairs``.
    """
    was_training = model.training
    model.eval()
    loader = _pair_loader(pairs, model, clip_transform(model, resize_mode), batch_size, False, 0, 0)
    loss_fn, total, count = ClipLoss(), 0.0, 0
    for images, tokens in loader:
        img_f, txt_f = _features(model, images.to(device), tokens.to(device))
        total += float(loss_fn(img_f, txt_f, model.logit_scale.exp())) * len(images)
        count += len(images)
    model.train(was_training)
    return total / count


# ---------------------------------------------------------------------------------- training
def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, norm gains, embeddings' scalars or the logit scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_clip_standin(
    labeled_root: str | os.PathLike,
    out_path: str | os.PathLike,
    model_config: Optional[Mapping[str, Any]] = None,
    arch: str = "",
    image_size: Sequence[int] = (64, 32),
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 5e-4,
    weight_decay: float = 0.1,
    warmup_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    resize_mode: str = "longest",
    num_workers: int = 0,
    show_progress: bool = True,
) -> Path:
    """Train a small CLIP on the TRAIN split's image-caption pairs; return the weights path.

    Args:
        labeled_root: datasets root holding ``CUHK-PEDES/`` (``reid_raw.json`` + ``imgs/``).
        out_path: weights file to write (``.pt``); the model config goes to the same path with
            suffix ``.json`` (open_clip knows the model by that file's stem).
        model_config: open_clip model config dict; None = ``arch`` if given, else
            ``standin_model_config(image_size)``.
        arch: an open_clip / ``modeling.clip_models`` architecture name, rebuilt for ``image_size``.
        image_size: (H, W) of the image tower (ignored when ``model_config`` is given).
        epochs: passes over every caption (one item per caption).
        lr, weight_decay, warmup_fraction: AdamW (betas 0.9/0.98), linear warm-up then cosine to 0.
        resize_mode: how images are fitted to the image size; the same as the conquer stage's
            (``pseudo_text.image_list.clip_transform``) so training and use see the same inputs.
    """
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got epochs={epochs}, batch_size={batch_size}")
    out_path = Path(out_path)
    if out_path.suffix != ".pt":
        raise ValueError(f"out_path must end in .pt (the model config is written next to it as .json), got {out_path}")
    if model_config is None:
        if arch:
            model_config = clip_model_config(arch, plain_vit=True)
            model_config["vision_cfg"]["image_size"] = [int(s) for s in image_size]
        else:
            model_config = standin_model_config(image_size)
    seed_all_rng(seed)  # Python, numpy and torch
    pairs = read_caption_pairs(labeled_root)
    device = torch.device(device)
    model = create_clip(model_config).to(device).train()
    eval_tf = clip_transform(model, resize_mode)
    loader = _pair_loader(pairs, model, _train_transform(eval_tf), batch_size, True, seed, num_workers)
    steps = epochs * len(loader)
    warmup = max(1, int(round(warmup_fraction * steps)))
    optim = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    loss_fn = ClipLoss()
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("CLIP stand-in: %d params, %d train pairs, %d epochs x %d steps", n_params, len(pairs), epochs, len(loader))
    progress = None
    if show_progress:
        progress = tqdm(total=steps, desc="CLIP stand-in", unit="step")
    start, loss_avg = time.time(), None
    # Without the tqdm bar, a progress line is logged every ~10 s and after the last step.
    done_steps, last_report = 0, time.monotonic()
    try:
        for epoch in range(epochs):
            for images, tokens in loader:
                img_f, txt_f = _features(model, images.to(device), tokens.to(device))
                scale = model.logit_scale.exp()
                loss = loss_fn(img_f, txt_f, scale)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                sched.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100))
                loss_avg = loss.item() if loss_avg is None else 0.9 * loss_avg + 0.1 * loss.item()
                done_steps += 1
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(epoch=epoch + 1, loss=f"{loss_avg:.3f}", scale=f"{scale.item():.1f}")
                elif time.monotonic() - last_report >= 10.0 or done_steps == steps:
                    last_report = time.monotonic()
                    rate = done_steps / max(time.time() - start, 1e-9)
                    eta = int((steps - done_steps) / rate)
                    logger.info("CLIP stand-in: epoch %d/%d, step %d/%d, loss %.3f, %.2f steps/s, eta %d:%02d:%02d",
                                epoch + 1, epochs, done_steps, steps, loss_avg, rate,
                                eta // 3600, eta // 60 % 60, eta % 60)
    finally:
        if progress is not None:
            progress.close()
    logger.info("CLIP stand-in trained in %.1f s (smoothed loss %.3f, logit scale %.1f)",
                time.time() - start, loss_avg, model.logit_scale.exp().item())
    config_path = out_path.with_suffix(".json")
    atomic_write_json(config_path, json.loads(json.dumps(model_config)), indent=1)
    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_path)
    return out_path


# ---------------------------------------------------------------------------------- accuracy
@dataclass(frozen=True)
class AccuracyRow:
    """One line of the accuracy table.

    Attributes:
        attribute: attribute name.
        metric: "class" (required), "color"/"pattern"/"type" (parts of composed classes),
            "present/absent" or "class when present" (optional attributes).
        count: images the accuracy is measured on.
        accuracy: fraction correct (None when ``count`` is 0).
        majority: accuracy of always answering the most frequent ground-truth value.
        uniform: accuracy of a uniform random guess among the possible values.
    """

    attribute: str
    metric: str
    count: int
    accuracy: Optional[float]
    majority: Optional[float]
    uniform: float


def _row(attr: str, metric: str, pred: Sequence[str], true: Sequence[str], num_values: int) -> AccuracyRow:
    n = len(true)
    if n == 0:
        return AccuracyRow(attr, metric, 0, None, None, 1.0 / num_values)
    acc = sum(p == t for p, t in zip(pred, true)) / n
    counts: dict[str, int] = {}
    for t in true:
        counts[t] = counts.get(t, 0) + 1
    return AccuracyRow(attr, metric, n, acc, max(counts.values()) / n, 1.0 / num_values)


def selection_accuracy(predicted: Sequence[Mapping[str, str]], truth: Sequence[Mapping[str, str]],
                       vocab: Vocabulary) -> list[AccuracyRow]:
    """Per-attribute accuracy of chosen class ids against ground truth (same image order).

    Required attribute: fraction of images whose class is right; composed classes
    ("<color>/<pattern>/<type>") also get one row per part. Optional attribute: accuracy of
    present vs absent ("none"), and, over the images where it is truly present, the fraction whose
    chosen class is the true one (a miss counts as wrong). A ground truth without an optional
    attribute means absent.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} ground-truth images")
    rows: list[AccuracyRow] = []
    for a in vocab.attributes:
        if a.required:
            true = [t[a.name] for t in truth]
            pred = [p[a.name] for p in predicted]
            rows.append(_row(a.name, "class", pred, true, len(a.classes)))
            parts = {len(c.split("/")) for c in a.class_ids}
            if parts != {1} and len(parts) == 1:
                k = parts.pop()
                names = _FACTOR_NAMES if k == len(_FACTOR_NAMES) else tuple(f"part {i + 1}" for i in range(k))
                for i, name in enumerate(names):
                    values = {c.split("/")[i] for c in a.class_ids}
                    rows.append(_row(a.name, name, [p.split("/")[i] for p in pred], [t.split("/")[i] for t in true], len(values)))
        else:
            true = [t.get(a.name, NEGATIVE_ID) for t in truth]
            pred = [p.get(a.name, NEGATIVE_ID) for p in predicted]
            present = lambda ids: ["present" if x != NEGATIVE_ID else "absent" for x in ids]  # noqa: E731
            rows.append(_row(a.name, "present/absent", present(pred), present(true), 2))
            idx = [i for i, t in enumerate(true) if t != NEGATIVE_ID]
            rows.append(_row(a.name, "class when present", [pred[i] for i in idx], [true[i] for i in idx], len(a.classes) - 1))
    return rows


def load_attribute_truth(path: str | os.PathLike, files: Sequence[str], vocab: Vocabulary) -> list[dict[str, str]]:
    """Ground-truth class ids of ``files`` from ``attributes.json`` (``file_path -> {attribute: class id}``).

    Raises:
        ValueError / KeyError: a file is missing, a required attribute is missing, or a class id is
            not one of the vocabulary's (the message names the file, attribute and value).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth attribute file not found: {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a JSON object file_path -> {{attribute: class id}}")
    out = []
    for f in files:
        if f not in data:
            raise KeyError(f"{path}: no attributes for image {f!r}")
        rec = data[f]
        truth = {}
        for a in vocab.attributes:
            value = rec.get(a.name, None if a.required else NEGATIVE_ID)
            if value is None:
                raise ValueError(f"{path}: image {f!r} has no value for required attribute {a.name!r}")
            if value not in a.class_ids:
                raise ValueError(f"{path}: image {f!r}, attribute {a.name!r}: class {value!r} is not in the vocabulary "
                                 f"{vocab.source} (e.g. {list(a.class_ids)[:5]})")
            truth[a.name] = value
        out.append(truth)
    return out


def attribute_accuracy(
    labeled_root: str | os.PathLike,
    weights: str | os.PathLike,
    model_config: str | os.PathLike = "",
    split: str = "test",
    vocabulary: str | os.PathLike | None = None,
    threshold: float = 0.9,
    logit_scale: Optional[float] = None,
    resize_mode: str = "longest",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> list[AccuracyRow]:
    """Run the pseudo-text conquer stage on the images of ``split`` and score it against ``attributes.json``.

    The CLIP model is built by ``pseudo_text.clip_model.load_frozen_clip`` from the JSON config
    (default: ``weights`` with suffix ``.json``) and the weights file, as
    ``tools/generate_pseudo_texts.py --model-config ... --weights ...`` builds it; images go
    through the same transform and ``ClipConquer`` (threshold, logit scale) as in that tool.
    """
    image_dir, files = labeled_split_images(labeled_root, split)
    vocab = load_vocabulary(vocabulary)
    truth = load_attribute_truth(image_dir.parent / "attributes.json", files, vocab)
    model_config = str(model_config) if model_config else str(Path(weights).with_suffix(".json"))
    model, tokenizer = load_frozen_clip("", str(weights), model_config, device)
    conquer = ClipConquer(model, tokenizer, vocab, device, threshold, logit_scale)
    size = model.visual.image_size
    h, w = (size, size) if isinstance(size, int) else size
    dataset = ImageListDataset(image_dir, files, clip_transform(model, resize_mode), (3, h, w))
    predicted: list[dict[str, str]] = []
    for images, _, errors in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False):
        bad = [e for e in errors if e]
        if bad:
            raise OSError(f"labeled images under {image_dir} could not be read: {bad[:3]}")
        predicted.extend(conquer(images).ids)
    rows = selection_accuracy(predicted, truth, vocab)
    logger.info("attribute selection accuracy on %d %s images:\n%s", len(files), split, accuracy_markdown(rows))
    return rows


def accuracy_markdown(rows: Sequence[AccuracyRow]) -> str:
    """The accuracy table as Markdown (accuracies in percent)."""
    def pct(x: Optional[float]) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}"

    lines = ["| attribute | metric | images | accuracy (%) | majority baseline (%) | uniform chance (%) |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r.attribute} | {r.metric} | {r.count} | {pct(r.accuracy)} | {pct(r.majority)} | {pct(r.uniform)} |"
              for r in rows]
    return "\n".join(lines) + "\n"
