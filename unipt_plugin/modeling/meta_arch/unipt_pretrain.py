"""``UniPTPretrain``: image-text pre-training on LUPerson-T (paper section 4.1; method-notes 2).

Each encoder's tokens go through a per-token Linear(C, EMBED_DIM) with bias (the paper's
"1x1 convolution"), are max-pooled over positions (padding masked when POOL_MASK_PADDING) and
L2-normalised. Loss = L_con (Eq. 1, temperature TEMPERATURE, optionally learnable, negatives
from every process when GATHER_NEGATIVES) + MLM_WEIGHT * L_mlm, the MLM loss computed on a
second, text-only forward of the masked ids through an untied prediction head.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from ..losses import IGNORE_INDEX, contrastive_loss, mask_tokens, mlm_loss
from ..text_encoders import build_text_encoder
from .common import (ImageNormalizer, check_finite_losses, compile_encoders, masked_max_pool, seeded_generator,
                     to_device)

logger = logging.getLogger(__name__)

__all__ = ["UniPTPretrain", "MLMHead"]

# CLIP's cap on the learnable logit scale (temperature >= 0.01).
_MAX_LOGIT_SCALE = 100.0


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

    Args:
        cfg: the run's config (keys under MODEL.PRETRAIN, MODEL.PIXEL_MEAN/STD, SEED).
        visual, text: encoders to use instead of building them from cfg (tests, notebooks).
        tokenizer: object with ``special_ids``, ``mask_id`` and ``word_start_mask(ids)``;
            built with ``unipt_plugin.data.tokenizer.build_tokenizer(cfg)`` when None and MLM is on.
    Train: ``forward(batch)`` -> {"loss_con", "loss_mlm" (absent when MLM_WEIGHT = 0)}.
    Eval: ``forward(batch)`` -> (B, EMBED_DIM) L2-normalised features of the batch's modality.
    """

    def __init__(self, cfg, visual: nn.Module | None = None, text: nn.Module | None = None,
                 tokenizer: Any = None) -> None:
        super().__init__()
        p = cfg.MODEL.PRETRAIN
        self.visual = visual if visual is not None else build_backbone(cfg)
        self.text = text if text is not None else build_text_encoder(cfg)
        self.normalizer = ImageNormalizer(cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
        self.image_proj = nn.Linear(self.visual.out_dim, p.EMBED_DIM)
        self.text_proj = nn.Linear(self.text.out_dim, p.EMBED_DIM)
        self.pool_mask_padding = bool(p.POOL_MASK_PADDING)
        self.gather_negatives = bool(p.GATHER_NEGATIVES)
        if p.TEMPERATURE <= 0:
            raise ValueError(f"MODEL.PRETRAIN.TEMPERATURE must be > 0, got {p.TEMPERATURE}")
        if p.LEARNABLE_TEMPERATURE:
            # CLIP-style: learn log(1 / T), initialised at the configured temperature.
            self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / p.TEMPERATURE)))
        else:
            self.log_logit_scale = None
            self.fixed_logit_scale = 1.0 / float(p.TEMPERATURE)
        self.mlm_weight = float(p.MLM_WEIGHT)
        if self.mlm_weight < 0:
            raise ValueError(f"MODEL.PRETRAIN.MLM_WEIGHT must be >= 0, got {p.MLM_WEIGHT}")
        if self.mlm_weight > 0:
            if tokenizer is None:
                from ...data.tokenizer import build_tokenizer
                tokenizer = build_tokenizer(cfg)
            self.vocab_size = int(self.text.vocab_size)
            if int(tokenizer.mask_id) >= self.vocab_size:
                raise ValueError(f"tokenizer mask_id {tokenizer.mask_id} is outside the text encoder's "
                                 f"vocabulary ({self.vocab_size}): INPUT.TEXT.TOKENIZER does not match "
                                 f"MODEL.TEXT.NAME")
            self.special_ids = sorted(int(i) for i in tokenizer.special_ids)
            self.mask_id = int(tokenizer.mask_id)
            self.word_start_fn = tokenizer.word_start_mask if p.WHOLE_WORD_MASK else None
            self.mlm_prob = float(p.MLM_PROB)
            self.mlm_mask_prob = float(p.MLM_MASK_TOKEN_PROB)
            self.mlm_random_prob = float(p.MLM_RANDOM_TOKEN_PROB)
            self.mlm_head = MLMHead(self.text.out_dim, self.vocab_size)
            # Masking draws: a generator on the model's device (cfg.MODEL.DEVICE; the CPU by
            # default) seeded from cfg.SEED (and the rank).
            self.mask_generator = seeded_generator(cfg.SEED, offset=1, device=cfg.MODEL.DEVICE)
        else:
            self.mlm_head = None
        compile_encoders(self, bool(cfg.MODEL.COMPILE))

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
        b = to_device(batch, dev, ("images", "text_ids", "text_mask"))
        img = self.encode_image(b["images"])
        txt = self.encode_text(b["text_ids"], b["text_mask"])
        losses = {"loss_con": contrastive_loss(img, txt, self.logit_scale(), gather=self.gather_negatives)}
        if self.mlm_head is not None:
            losses["loss_mlm"] = self.mlm_weight * self._mlm(b["text_ids"], b["text_mask"], batch["text_ids"])
        return check_finite_losses(losses)

    def _mlm(self, ids: torch.Tensor, mask: torch.Tensor, loader_ids: torch.Tensor | None = None) -> torch.Tensor:
        """MLM loss of one batch: mask ``ids`` (B, L) on the model's device with the seeded
        generator (made on that device), then a text-only forward of the masked ids; the head
        runs on the predicted positions only.

        ``loader_ids`` (B, L): the same ids as the loader gave them (on the CPU), from which the
        tokenizer's whole-word starts are computed without a device-to-host copy; None = ``ids``.
        On the CPU every draw is the one made before masking moved to the device."""
        word_start = None
        if self.word_start_fn is not None:
            word_start = self.word_start_fn(loader_ids if loader_ids is not None else ids)
        masked, labels = mask_tokens(
            ids, mask, self.special_ids, self.vocab_size, self.mask_id,
            prob=self.mlm_prob, mask_token_prob=self.mlm_mask_prob,
            random_token_prob=self.mlm_random_prob, word_start_mask=word_start,
            generator=self.mask_generator)
        tokens = self.text(masked, mask)  # (B, L, C)
        # Boolean indexing (one nonzero, so one host-device sync): the vocabulary-wide head runs
        # on the ~15% predicted positions only, not on all B * L.
        picked = labels != IGNORE_INDEX
        return mlm_loss(self.mlm_head(tokens[picked]), labels[picked])
