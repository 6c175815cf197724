"""The demo's colourisation: one person under captions that differ in a colour word (PLIP's TIC).

:func:`colourise` runs a pre-trained ``UniPTPretrain`` with a TIC decoder (MODEL.PRETRAIN.TIC_WEIGHT
> 0) on one image and several captions: the visual encoder sees the image's BT.601 gray view once,
the decoder predicts the chroma (Cb, Cr) at 1 / TIC.SCALE for each caption, and each result is the
gray image's own full-resolution luma with that chroma resized bilinearly to the image
(``colour_space.ycbcr_to_rgb``), rounded and clipped to uint8. So the results share the luma
(up to rounding and clipping) and differ only in the colour the caption gives.
:func:`write_colourisation_figure` draws them in a row (matplotlib, Agg) beside the original and
its gray view, each under its caption.
"""
from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...utils.io import atomic_open
from ..losses.tic import CHROMA_SCALE, small_gray
from .colour_space import gray_image, luma, ycbcr_to_rgb

__all__ = ["colourise", "write_colourisation_figure"]

# characters per caption line under a panel
_WRAP = 28


def _as_image_tensor(image: Any) -> torch.Tensor:
    img = torch.as_tensor(np.asarray(image))
    if img.dim() != 3 or img.shape[0] != 3 or img.dtype != torch.uint8:
        raise ValueError(f"colourise expects one RGB image uint8 (3, H, W), got {img.dtype} {tuple(img.shape)}")
    return img


@torch.no_grad()
def colourise(model: torch.nn.Module, image: Any, captions: Sequence[str], tokenizer: Any) -> list[np.ndarray]:
    """Colourise ``image`` under each caption.

    Args:
        model: a ``UniPTPretrain`` with a TIC decoder (the input size it was built for, INPUT.SIZE_TRAIN).
        image: uint8 (3, H, W) RGB (tensor or array; its colour is not used, only its gray view).
        captions: the captions (one result each).
        tokenizer: the caption tokenizer of the model (``unipt_plugin.data.build_tokenizer``).
    Returns:
        one uint8 (H, W, 3) RGB array per caption. The model's training mode is restored.
    """
    decoder = getattr(model, "tic_decoder", None)
    if decoder is None:
        raise ValueError("colourise needs a model pre-trained with TIC (MODEL.PRETRAIN.TIC_WEIGHT > 0): this one has "
                         "no tic_decoder")
    if isinstance(captions, str) or not captions:
        raise ValueError("colourise expects a non-empty list of captions")
    img = _as_image_tensor(image)
    was_training = model.training
    model.eval()
    try:
        dev = model.device
        colour = img[None].to(dev)  # (1, 3, H, W) uint8
        tok = tokenizer(list(captions))
        ids, mask = tok["input_ids"].to(dev), tok["attention_mask"].to(dev)
        n = ids.shape[0]
        text_tokens = model.text(ids, mask)
        gray_tokens = model.image_tokens(gray_image(colour))  # the gray view, encoded once
        pred = decoder(gray_tokens.expand(n, -1, -1), text_tokens, mask,
                       small_gray(colour, model.tic_scale).expand(n, -1, -1, -1))  # (n, 2, h, w) on [-1, 1]
        chroma = F.interpolate(pred.float() * CHROMA_SCALE + 128.0, size=tuple(img.shape[1:]), mode="bilinear",
                               align_corners=False)
        rgb = ycbcr_to_rgb(luma(colour).expand(n, -1, -1, -1), chroma)
        out = rgb.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    finally:
        model.train(was_training)
    return [o for o in out]


def write_colourisation_figure(out_png: str | os.PathLike, image: Any, captions: Sequence[str],
                               colourised: Sequence[np.ndarray], title: str = "text-guided colourisation (TIC)") -> None:
    """One row: the image, its gray view, then each colourisation under its caption (PNG, written atomically).

    Args:
        image: uint8 (3, H, W) RGB, the original.
        captions, colourised: the captions and :func:`colourise`'s results (same length).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = _as_image_tensor(image)
    if len(captions) != len(colourised):
        raise ValueError(f"{len(captions)} captions for {len(colourised)} colourised images")
    original = img.permute(1, 2, 0).numpy()
    gray = luma(img[None])[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    panels = [(original, "original", None), (gray, "gray input", "gray")]
    panels += [(c, textwrap.fill(t, _WRAP), None) for t, c in zip(captions, colourised)]
    fig, axes = plt.subplots(1, len(panels), figsize=(1.9 * len(panels), 4.2), squeeze=False)
    for ax, (pixels, label, cmap) in zip(axes[0], panels):
        ax.imshow(pixels, cmap=cmap, vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(label, fontsize=7)
    fig.suptitle(title)
    with atomic_open(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
