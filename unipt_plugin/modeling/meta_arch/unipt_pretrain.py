"""``UniPTPretrain``: image-text pre-training on LUPerson-T (paper section 4.1; docs/choices.md, Pre-training).

Each encoder's tokens go through a per-token Linear(C, EMBED_DIM) with bias (the paper's
"1x1 convolution"; PyTorch's init, or N(0, 0.02) weights and zero bias as the authors' code with
PROJ_INIT "normal"), are max-pooled over positions (padding masked when POOL_MASK_PADDING) and
L2-normalised. Loss = L_con (Eq. 1, temperature TEMPERATURE, optionally learnable, negatives
from every process when GATHER_NEGATIVES) + MLM_WEIGHT * L_mlm, the MLM loss computed on a
second, text-only forward of the masked ids through an untied prediction head. The masks are
drawn by the training loader (per sample, from the sample's seed) and come in the batch.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from fastreid.config import configurable
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from ..losses import IGNORE_INDEX, contrastive_loss, mlm_loss
from ..text_encoders import build_text_encoder
from .common import ImageNormalizer, check_finite_losses, compile_encoders, masked_max_pool, to_device

logger = logging.getLogger(__name__)

__all__ = ["UniPTPretrain", "MLMHead"]

# CLIP's cap on the learnable logit scale (temperature >= 0.01).
_MAX_LOGIT_SCALE = 100.0

# Keys of a training batch that MLM needs (TrainCollator adds them).
_MLM_KEYS = ("mlm_ids", "mlm_labels")

# MODEL.PRETRAIN.PROJ_INIT values.
_PROJ_INITS = ("default", "normal")
# Std of the "normal" projection init (the authors' init_weights).
_PROJ_INIT_STD = 0.02


def _check_options(temperature: float, mlm_weight: float, proj_init: str = "default") -> None:
    if proj_init not in _PROJ_INITS:
        raise ValueError(f"MODEL.PRETRAIN.PROJ_INIT must be one of {_PROJ_INITS}, got {proj_init!r}")
    if float(temperature) <= 0:
        raise ValueError(f"MODEL.PRETRAIN.TEMPERATURE must be > 0, got {temperature}")
    if float(mlm_weight) < 0:
        raise ValueError(f"MODEL.PRETRAIN.MLM_WEIGHT must be >= 0, got {mlm_weight}")


class MLMHead(nn.Module):
    """BERT-style prediction head: Linear(C, C) + GELU + LayerNorm, then Linear(C, vocab) with
    bias (not tied to the input embeddings). (M, C) -> (M, vocab)."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=1e-12))
        self.decoder = nn.Linear(width, vocab_size)
        for m in (self.transform[0], self.decoder):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(tokens))


@META_ARCH_REGISTRY.register()
class UniPTPretrain(nn.Module):
    """Contrastive + MLM pre-training of ``visual`` (fast-reid backbone) and ``text`` encoders.

    Built from a config (``UniPTPretrain(cfg)``, what fast-reid's ``build_model`` does; see
    :meth:`from_config`) or from plain arguments (fast-reid's ``@configurable``):

    Args:
        visual: image encoder, (B, 3, H, W) normalised -> tokens (B, N, C_v), attribute ``out_dim``.
        text: text encoder, (ids (B, L), mask (B, L)) -> tokens (B, L, C_t), attributes
            ``out_dim`` and ``vocab_size``.
        embed_dim: MODEL.PRETRAIN.EMBED_DIM, the joint embedding's width.
        pixel_mean, pixel_std: MODEL.PIXEL_MEAN / PIXEL_STD (0-255 scale).
        pool_mask_padding, gather_negatives, temperature, learnable_temperature, mlm_weight,
            proj_init: MODEL.PRETRAIN.{POOL_MASK_PADDING, GATHER_NEGATIVES, TEMPERATURE,
            LEARNABLE_TEMPERATURE, MLM_WEIGHT, PROJ_INIT} (PROJ_INIT: "default" keeps PyTorch's
            init of ``image_proj`` / ``text_proj``, "normal" draws their weights N(0, 0.02) and
            zeroes their biases).
        tokenizer_vocab_size: the vocabulary size of the tokenizer whose masked ids the training
            loader gives (INPUT.TEXT.TOKENIZER); with MLM on it must equal ``text.vocab_size``
            (the MLM head predicts the encoder's vocabulary and the loader draws random
            replacement ids from the tokenizer's). None: not checked.
        torch_compile: MODEL.COMPILE (see ``compile_encoders``).

    The model holds no tokenizer and no random generator: the MLM masks come with the training
    batch ("mlm_ids", "mlm_labels" long (B, L), drawn by the loader's collator from each
    sample's seed; ``unipt_plugin.data.mlm_masking``).
    Train: ``forward(batch)`` -> {"loss_con", "loss_mlm" (absent when MLM_WEIGHT = 0)}.
    Eval: ``forward(batch)`` -> (B, EMBED_DIM) L2-normalised features of the batch's modality.
    """

    @configurable
    def __init__(self, visual: nn.Module, text: nn.Module, embed_dim: int, *,
                 pixel_mean: Sequence[float] = (127.5, 127.5, 127.5),
                 pixel_std: Sequence[float] = (127.5, 127.5, 127.5),
                 pool_mask_padding: bool = True, gather_negatives: bool = True, temperature: float = 1.0,
                 learnable_temperature: bool = False, mlm_weight: float = 1.0,
                 tokenizer_vocab_size: int | None = None, torch_compile: bool = False,
                 proj_init: str = "default") -> None:
        super().__init__()
        _check_options(temperature, mlm_weight, proj_init)
        self.visual = visual
        self.text = text
        self.normalizer = ImageNormalizer(pixel_mean, pixel_std)
        self.image_proj = nn.Linear(self.visual.out_dim, embed_dim)
        self.text_proj = nn.Linear(self.text.out_dim, embed_dim)
        if proj_init == "normal":
            for proj in (self.image_proj, self.text_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=_PROJ_INIT_STD)
                nn.init.zeros_(proj.bias)
        self.pool_mask_padding = bool(pool_mask_padding)
        self.gather_negatives = bool(gather_negatives)
        if learnable_temperature:
            # CLIP-style: learn log(1 / T), initialised at the configured temperature.
            self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        else:
            self.log_logit_scale = None
            self.fixed_logit_scale = 1.0 / float(temperature)
        self.mlm_weight = float(mlm_weight)
        if self.mlm_weight > 0:
            self.vocab_size = int(self.text.vocab_size)
            if tokenizer_vocab_size is not None and int(tokenizer_vocab_size) != self.vocab_size:
                raise ValueError(
                    f"the tokenizer's vocabulary ({int(tokenizer_vocab_size)} ids, INPUT.TEXT.TOKENIZER) is not the "
                    f"text encoder's ({self.vocab_size} ids, MODEL.TEXT.NAME): INPUT.TEXT.TOKENIZER does not match "
                    f"MODEL.TEXT.NAME. MLM (MODEL.PRETRAIN.MLM_WEIGHT > 0) needs them equal: the loader draws the "
                    f"random replacement ids from the tokenizer's vocabulary and the MLM head predicts the "
                    f"encoder's")
            self.mlm_head = MLMHead(self.text.out_dim, self.vocab_size)
        else:
            self.mlm_head = None
        compile_encoders(self, bool(torch_compile))

    @classmethod
    def from_config(cls, cfg, visual: nn.Module | None = None, text: nn.Module | None = None,
                    tokenizer: Any = None) -> dict[str, Any]:
        """The arguments of ``__init__`` from cfg (MODEL.PRETRAIN.*, MODEL.PIXEL_MEAN/STD,
        MODEL.COMPILE). ``visual`` / ``text``: encoders to use instead of building them from cfg
        (fast-reid's ``build_backbone``, ``build_text_encoder``); ``tokenizer``: an object with
        ``vocab_size`` to check the text encoder's vocabulary against instead of
        ``build_tokenizer(cfg)`` (read only when MLM is on)."""
        p = cfg.MODEL.PRETRAIN
        _check_options(p.TEMPERATURE, p.MLM_WEIGHT, p.PROJ_INIT)  # before building the encoders
        vocab = None
        if float(p.MLM_WEIGHT) > 0:
            if tokenizer is None:
                from ...data.tokenizer import build_tokenizer

                tokenizer = build_tokenizer(cfg)
            if not hasattr(tokenizer, "vocab_size"):
                raise TypeError(f"UniPTPretrain's tokenizer= ({type(tokenizer).__name__}) has no 'vocab_size': it is "
                                f"read only to check that the tokenizer's vocabulary (INPUT.TEXT.TOKENIZER) is the text "
                                f"encoder's (MODEL.TEXT.NAME)")
            vocab = int(tokenizer.vocab_size)
        visual = visual if visual is not None else build_backbone(cfg)
        text = text if text is not None else build_text_encoder(cfg)
        return {"visual": visual, "text": text, "embed_dim": int(p.EMBED_DIM),
                "pixel_mean": list(cfg.MODEL.PIXEL_MEAN), "pixel_std": list(cfg.MODEL.PIXEL_STD),
                "pool_mask_padding": bool(p.POOL_MASK_PADDING), "gather_negatives": bool(p.GATHER_NEGATIVES),
                "temperature": float(p.TEMPERATURE), "learnable_temperature": bool(p.LEARNABLE_TEMPERATURE),
                "mlm_weight": float(p.MLM_WEIGHT), "tokenizer_vocab_size": vocab,
                "torch_compile": bool(cfg.MODEL.COMPILE), "proj_init": str(p.PROJ_INIT)}

    @property
    def device(self) -> torch.device:
        return self.normalizer.pixel_mean.device

    def logit_scale(self) -> torch.Tensor | float:
        """1 / temperature (a tensor clamped to <= 100 when learnable)."""
        if self.log_logit_scale is None:
            return self.fixed_logit_scale
        return self.log_logit_scale.exp().clamp(max=_MAX_LOGIT_SCALE)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) 0-255 -> (B, EMBED_DIM) L2-normalised."""
        tokens = self.visual(self.normalizer(images))
        return F.normalize(masked_max_pool(self.image_proj(tokens)).float(), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (B, L) -> (B, EMBED_DIM) L2-normalised."""
        tokens = self.text_proj(self.text(ids, mask))
        pooled = masked_max_pool(tokens, mask if self.pool_mask_padding else None)
        return F.normalize(pooled.float(), dim=-1)

    def forward(self, batch: Mapping[str, torch.Tensor]):
        dev = self.device
        if not self.training:
            if "images" in batch:
                return self.encode_image(batch["images"].to(dev, non_blocking=True))
            b = to_device(batch, dev, ("text_ids", "text_mask"))
            return self.encode_text(b["text_ids"], b["text_mask"])
        for key in ("images", "text_ids", "text_mask"):
            if key not in batch:
                raise KeyError(f"UniPTPretrain training batch lacks '{key}' (has {sorted(batch)})")
        if self.mlm_head is not None:
            missing = [k for k in _MLM_KEYS if k not in batch]
            if missing:
                raise KeyError(
                    f"UniPTPretrain training batch lacks {missing} (has {sorted(batch)}): with "
                    f"MODEL.PRETRAIN.MLM_WEIGHT = {self.mlm_weight} > 0 the model needs the masked ids 'mlm_ids' and "
                    f"their labels 'mlm_labels' (long (B, L)), which the training collator draws per sample "
                    f"(build_t2i_train_loader with MODEL.META_ARCHITECTURE UniPTPretrain); a batch from elsewhere "
                    f"must add them (unipt_plugin.data.mlm_masking.MLMMasking)")
            for key in _MLM_KEYS:
                if batch[key].shape != batch["text_mask"].shape:
                    raise ValueError(f"UniPTPretrain training batch: '{key}' {tuple(batch[key].shape)} must have the "
                                     f"shape of 'text_mask' {tuple(batch['text_mask'].shape)}")
        b = to_device(batch, dev, ("images", "text_ids", "text_mask") + (_MLM_KEYS if self.mlm_head is not None else ()))
        img = self.encode_image(b["images"])
        txt = self.encode_text(b["text_ids"], b["text_mask"])
        losses = {"loss_con": contrastive_loss(img, txt, self.logit_scale(), gather=self.gather_negatives)}
        if self.mlm_head is not None:
            losses["loss_mlm"] = self.mlm_weight * self._mlm(b["mlm_ids"], b["text_mask"], b["mlm_labels"])
        return check_finite_losses(losses)

    def _mlm(self, masked_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """MLM loss of one batch: a text-only forward of the masked ids (B, L) with the
        attention mask (B, L); the head runs on the predicted positions only (``labels`` (B, L)
        != -100), whose cross-entropy against the original ids is averaged."""
        tokens = self.text(masked_ids, mask)  # (B, L, C)
        # Boolean indexing (one nonzero, so one host-device sync): the vocabulary-wide head runs
        # on the ~15% predicted positions only, not on all B * L.
        picked = labels != IGNORE_INDEX
        return mlm_loss(self.mlm_head(tokens[picked]), labels[picked])
