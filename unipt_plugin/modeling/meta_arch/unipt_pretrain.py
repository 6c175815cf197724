"""``UniPTPretrain``: image-text pre-training on LUPerson-T (paper section 4.1; docs/choices.md, Pre-training).

Each encoder's tokens go through a per-token Linear(C, EMBED_DIM) with bias (the paper's
"1x1 convolution"; PyTorch's init, or N(0, 0.02) weights and zero bias as the authors' code with
PROJ_INIT "normal"), are max-pooled over positions (padding masked when POOL_MASK_PADDING) and
L2-normalised. Loss = CONTRASTIVE_WEIGHT * L_con (Eq. 1, temperature TEMPERATURE, optionally
learnable, negatives from every process when GATHER_NEGATIVES) + IVLC_WEIGHT * L_ivlc (PLIP's
identity-based contrast over the batch's "targets", same temperature and negatives; off by
default) + MLM_WEIGHT * L_mlm, the MLM loss computed on a second, text-only forward of the masked
ids through an untied prediction head. The masks are drawn by the training loader (per sample,
from the sample's seed) and come in the batch.

PLIP's other two pretext tasks (docs/choices.md, PLIP), each off at weight 0 (nothing built):
+ IAP_WEIGHT * L_iap: the caption with its attribute phrases masked (the batch's "iap_ids" /
"iap_labels", drawn by the loader: ``unipt_plugin.data.attribute_masking``) goes through the text
encoder, its tokens attend to the colour image's tokens (the contrastive forward's) through a
small cross-attention stack (``plip_tasks.fusion``), and a prediction head of its own gives the
masked tokens' cross-entropy (``mlm_loss``). + TIC_WEIGHT * L_tic: a second forward of the visual
encoder on the BT.601 gray view of the (first TIC.SAMPLES) images, built here on the model's
device from the batch's augmented colour images (no second image in the batch, nothing to keep
in step with the augmentation), whose patch tokens attend to the clean caption's tokens in a light
decoder (``plip_tasks.colourisation``) that predicts the chroma at 1 / TIC.SCALE; smooth-L1 to
the image's own (``losses.tic``). The contrastive, IVLC, MLM and IAP terms see the colour image.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from fastreid.config import configurable
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from ..losses import IGNORE_INDEX, chroma_target, contrastive_loss, ivlc_loss, mlm_loss, small_gray, tic_loss
from ..losses.tic import gray_target_size
from ..plip_tasks import ColourisationDecoder, CrossAttentionStack, default_heads, gray_image
from ..text_encoders import build_text_encoder
from .common import ImageNormalizer, check_finite_losses, compile_encoders, masked_max_pool, to_device

logger = logging.getLogger(__name__)

__all__ = ["UniPTPretrain", "MLMHead", "IAPSettings", "TICSettings"]

# CLIP's cap on the learnable logit scale (temperature >= 0.01).
_MAX_LOGIT_SCALE = 100.0

# Keys of a training batch that MLM / IAP need (TrainCollator adds them).
_MLM_KEYS = ("mlm_ids", "mlm_labels")
_IAP_KEYS = ("iap_ids", "iap_labels")

# MODEL.PRETRAIN.PROJ_INIT values.
_PROJ_INITS = ("default", "normal")
# Std of the "normal" projection init (the authors' init_weights).
_PROJ_INIT_STD = 0.02


@dataclass(frozen=True)
class IAPSettings:
    """PLIP's IAP in pre-training: MODEL.PRETRAIN.IAP_WEIGHT (> 0) and MODEL.PRETRAIN.IAP.{LAYERS,
    WIDTH (0 = the text encoder's width), HEADS (0 = width / 64), DROPOUT}."""

    weight: float
    layers: int = 2
    width: int = 0
    heads: int = 0
    dropout: float = 0.0


@dataclass(frozen=True)
class TICSettings:
    """PLIP's TIC in pre-training: MODEL.PRETRAIN.TIC_WEIGHT (> 0), MODEL.PRETRAIN.TIC.{LAYERS,
    WIDTH, HEADS (0 = width / 64), DROPOUT, SCALE, LOSS_BETA, SAMPLES (0 = the whole batch)} and
    the input size INPUT.SIZE_TRAIN (H, W)."""

    weight: float
    image_size: tuple[int, int]
    layers: int = 2
    width: int = 256
    heads: int = 0
    dropout: float = 0.0
    scale: int = 4
    loss_beta: float = 0.1
    samples: int = 0


def _check_options(temperature: float, mlm_weight: float, proj_init: str = "default",
                   contrastive_weight: float = 1.0, ivlc_weight: float = 0.0, iap_weight: float = 0.0,
                   tic_weight: float = 0.0) -> None:
    if proj_init not in _PROJ_INITS:
        raise ValueError(f"MODEL.PRETRAIN.PROJ_INIT must be one of {_PROJ_INITS}, got {proj_init!r}")
    if float(temperature) <= 0:
        raise ValueError(f"MODEL.PRETRAIN.TEMPERATURE must be > 0, got {temperature}")
    for key, value in (("CONTRASTIVE_WEIGHT", contrastive_weight), ("IVLC_WEIGHT", ivlc_weight),
                       ("MLM_WEIGHT", mlm_weight), ("IAP_WEIGHT", iap_weight), ("TIC_WEIGHT", tic_weight)):
        if not float(value) >= 0:
            raise ValueError(f"MODEL.PRETRAIN.{key} must be >= 0 (0 = off), got {value}")
    # the losses that train the visual encoder: the image-text contrasts, TIC (the gray forward)
    # and IAP (the fusion attends to the image tokens); MLM is text only
    if not any(float(w) > 0 for w in (contrastive_weight, ivlc_weight, iap_weight, tic_weight)):
        raise ValueError("MODEL.PRETRAIN.CONTRASTIVE_WEIGHT and IVLC_WEIGHT are both 0, and so are IAP_WEIGHT and "
                         "TIC_WEIGHT: no image-text loss is on, so the visual encoder would get no gradient (MLM is "
                         "text only); set one of them > 0")


def _check_tic(tic: TICSettings) -> None:
    for key, value, low in (("TIC.LAYERS", tic.layers, 1), ("TIC.WIDTH", tic.width, 1), ("TIC.SAMPLES", tic.samples, 0)):
        if int(value) < low:
            raise ValueError(f"MODEL.PRETRAIN.{key} must be >= {low}, got {value}")
    if not float(tic.loss_beta) > 0:
        raise ValueError(f"MODEL.PRETRAIN.TIC.LOSS_BETA must be > 0 (the smooth-L1 threshold), got {tic.loss_beta}")
    gray_target_size(tic.image_size, tic.scale)


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
            proj_init, contrastive_weight, ivlc_weight: MODEL.PRETRAIN.{POOL_MASK_PADDING,
            GATHER_NEGATIVES, TEMPERATURE, LEARNABLE_TEMPERATURE, MLM_WEIGHT, PROJ_INIT,
            CONTRASTIVE_WEIGHT, IVLC_WEIGHT} (PROJ_INIT: "default" keeps PyTorch's init of
            ``image_proj`` / ``text_proj``, "normal" draws their weights N(0, 0.02) and zeroes
            their biases).
        tokenizer_vocab_size: the vocabulary size of the tokenizer whose masked ids the training
            loader gives (INPUT.TEXT.TOKENIZER); with MLM or IAP on it must equal
            ``text.vocab_size`` (their heads predict the encoder's vocabulary and the loader
            draws the masked ids from the tokenizer's). None: not checked.
        torch_compile: MODEL.COMPILE (see ``compile_encoders``).
        iap: PLIP's IAP (:class:`IAPSettings`), None = off: nothing built.
        tic: PLIP's TIC (:class:`TICSettings`), None = off: nothing built. Needs the visual
            encoder's patch grid (attribute ``grid_size``, (h, w)).

    The new modules of IAP (``iap_fusion``, ``iap_head``) and TIC (``tic_decoder``) are built
    after every other one, so the others' parameters, their initial values (from torch's global
    generator) and their state-dict keys are those of a model without them. With
    CONTRASTIVE_WEIGHT and IVLC_WEIGHT both 0 (PLIP's IAP / TIC alone) the projections and the
    temperature get no gradient: they are frozen (``requires_grad`` False), so that every
    trainable parameter is used at every step (DistributedDataParallel).

    The model holds no tokenizer and no random generator: the MLM and IAP masks come with the
    training batch ("mlm_ids", "mlm_labels", "iap_ids", "iap_labels" long (B, L), drawn by the
    loader's collator from each sample's seed; ``unipt_plugin.data.mlm_masking``,
    ``unipt_plugin.data.attribute_masking``).
    Train: ``forward(batch)`` -> {"loss_con", "loss_ivlc", "loss_mlm", "loss_iap", "loss_tic"}, a
        term whose weight is 0 left out (by default IVLC, IAP and TIC are off). IVLC's identities
        are the batch's "targets" (the training loader's pids: LUPerson-T's are the image indices,
        so every image is its own identity and the captions of one image are positives of each
        other; datasets with person ids give identities); a batch without "targets" makes every
        pair its own identity.
    Eval: ``forward(batch)`` -> (B, EMBED_DIM) L2-normalised features of the batch's modality.
    """

    @configurable
    def __init__(self, visual: nn.Module, text: nn.Module, embed_dim: int, *,
                 pixel_mean: Sequence[float] = (127.5, 127.5, 127.5),
                 pixel_std: Sequence[float] = (127.5, 127.5, 127.5),
                 pool_mask_padding: bool = True, gather_negatives: bool = True, temperature: float = 1.0,
                 learnable_temperature: bool = False, mlm_weight: float = 1.0,
                 tokenizer_vocab_size: int | None = None, torch_compile: bool = False,
                 proj_init: str = "default", contrastive_weight: float = 1.0, ivlc_weight: float = 0.0,
                 iap: IAPSettings | None = None, tic: TICSettings | None = None) -> None:
        super().__init__()
        iap = iap if iap is not None and float(iap.weight) > 0 else None
        tic = tic if tic is not None and float(tic.weight) > 0 else None
        _check_options(temperature, mlm_weight, proj_init, contrastive_weight, ivlc_weight,
                       iap.weight if iap else 0.0, tic.weight if tic else 0.0)
        if tic is not None:
            _check_tic(tic)
        self.contrastive_weight, self.ivlc_weight = float(contrastive_weight), float(ivlc_weight)
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
        if self.mlm_weight > 0 or iap is not None:
            self.vocab_size = int(self.text.vocab_size)
            if tokenizer_vocab_size is not None and int(tokenizer_vocab_size) != self.vocab_size:
                raise ValueError(
                    f"the tokenizer's vocabulary ({int(tokenizer_vocab_size)} ids, INPUT.TEXT.TOKENIZER) is not the "
                    f"text encoder's ({self.vocab_size} ids, MODEL.TEXT.NAME): INPUT.TEXT.TOKENIZER does not match "
                    f"MODEL.TEXT.NAME. MLM (MODEL.PRETRAIN.MLM_WEIGHT > 0) and IAP (IAP_WEIGHT > 0) need them "
                    f"equal: the loader draws the masked ids from the tokenizer's vocabulary and their heads "
                    f"predict the encoder's")
        self.mlm_head = MLMHead(self.text.out_dim, self.vocab_size) if self.mlm_weight > 0 else None
        # PLIP's IAP and TIC: built last (class docstring)
        self.iap_weight = float(iap.weight) if iap else 0.0
        self.iap_fusion = self.iap_head = None
        if iap is not None:
            width = int(iap.width) or int(self.text.out_dim)
            heads = default_heads(width, iap.heads, "MODEL.PRETRAIN.IAP.HEADS")
            self.iap_fusion = CrossAttentionStack(self.text.out_dim, self.visual.out_dim, width, heads,
                                                  int(iap.layers), float(iap.dropout))
            self.iap_head = MLMHead(width, self.vocab_size)
        self.tic_weight = float(tic.weight) if tic else 0.0
        self.tic_decoder = None
        if tic is not None:
            grid = getattr(self.visual, "grid_size", None)
            if grid is None:
                raise ValueError(f"MODEL.PRETRAIN.TIC_WEIGHT > 0: TIC lays the visual encoder's patch tokens on its "
                                 f"grid, but {type(self.visual).__name__} has no grid_size")
            heads = default_heads(int(tic.width), tic.heads, "MODEL.PRETRAIN.TIC.HEADS")
            self.tic_scale, self.tic_loss_beta, self.tic_samples = int(tic.scale), float(tic.loss_beta), int(tic.samples)
            self.tic_decoder = ColourisationDecoder(self.visual.out_dim, self.text.out_dim, tuple(grid),
                                                    gray_target_size(tic.image_size, tic.scale), int(tic.width),
                                                    heads, int(tic.layers), float(tic.dropout))
        if not (self.contrastive_weight or self.ivlc_weight):
            # no image-text contrast: the projections and the temperature get no gradient
            frozen = [self.image_proj, self.text_proj] + ([self.log_logit_scale] if self.log_logit_scale is not None
                                                           else [])
            for part in frozen:
                part.requires_grad_(False)
            logger.info("MODEL.PRETRAIN.CONTRASTIVE_WEIGHT and IVLC_WEIGHT are 0: the projections%s are frozen (no "
                        "loss reaches them; the embeddings of encode_image / encode_text stay at their init)",
                        " and the temperature" if self.log_logit_scale is not None else "")
        compile_encoders(self, bool(torch_compile))

    @classmethod
    def from_config(cls, cfg, visual: nn.Module | None = None, text: nn.Module | None = None,
                    tokenizer: Any = None) -> dict[str, Any]:
        """The arguments of ``__init__`` from cfg (MODEL.PRETRAIN.*, MODEL.PIXEL_MEAN/STD,
        MODEL.COMPILE, INPUT.SIZE_TRAIN for TIC; MODEL.T2I.LINEAR_PROBE True is refused). ``visual`` /
        ``text``: encoders to use instead of building them from cfg (fast-reid's ``build_backbone``,
        ``build_text_encoder``); ``tokenizer``: an object with ``vocab_size`` to check the text encoder's vocabulary
        against instead of ``build_tokenizer(cfg)`` (read only when MLM or IAP is on)."""
        p = cfg.MODEL.PRETRAIN
        if cfg.MODEL.T2I.LINEAR_PROBE:
            raise ValueError("MODEL.T2I.LINEAR_PROBE True is a fine-tuning mode (MODEL.META_ARCHITECTURE UniPTT2I: "
                             "frozen encoders, trained projections and heads); UniPTPretrain trains its encoders. "
                             "Remove the key, or fine-tune with a UniPTT2I config (docs/evaluation.md, Transfer modes)")
        iap = tic = None
        if float(p.IAP_WEIGHT) > 0:
            iap = IAPSettings(weight=float(p.IAP_WEIGHT), layers=int(p.IAP.LAYERS), width=int(p.IAP.WIDTH),
                              heads=int(p.IAP.HEADS), dropout=float(p.IAP.DROPOUT))
        if float(p.TIC_WEIGHT) > 0:
            tic = TICSettings(weight=float(p.TIC_WEIGHT), image_size=tuple(int(v) for v in cfg.INPUT.SIZE_TRAIN),
                              layers=int(p.TIC.LAYERS), width=int(p.TIC.WIDTH), heads=int(p.TIC.HEADS),
                              dropout=float(p.TIC.DROPOUT), scale=int(p.TIC.SCALE), loss_beta=float(p.TIC.LOSS_BETA),
                              samples=int(p.TIC.SAMPLES))
        # before building the encoders
        _check_options(p.TEMPERATURE, p.MLM_WEIGHT, p.PROJ_INIT, p.CONTRASTIVE_WEIGHT, p.IVLC_WEIGHT, p.IAP_WEIGHT,
                       p.TIC_WEIGHT)
        if tic is not None:
            _check_tic(tic)
        vocab = None
        if float(p.MLM_WEIGHT) > 0 or iap is not None:
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
                "torch_compile": bool(cfg.MODEL.COMPILE), "proj_init": str(p.PROJ_INIT),
                "contrastive_weight": float(p.CONTRASTIVE_WEIGHT), "ivlc_weight": float(p.IVLC_WEIGHT),
                "iap": iap, "tic": tic}

    @property
    def device(self) -> torch.device:
        return self.normalizer.pixel_mean.device

    def logit_scale(self) -> torch.Tensor | float:
        """1 / temperature (a tensor clamped to <= 100 when learnable)."""
        if self.log_logit_scale is None:
            return self.fixed_logit_scale
        return self.log_logit_scale.exp().clamp(max=_MAX_LOGIT_SCALE)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) 0-255 -> the visual encoder's tokens (B, 1 + N, C_v)."""
        return self.visual(self.normalizer(images))

    def embed_image(self, tokens: torch.Tensor) -> torch.Tensor:
        """visual tokens (B, 1 + N, C_v) -> (B, EMBED_DIM) L2-normalised."""
        return F.normalize(masked_max_pool(self.image_proj(tokens)).float(), dim=-1)

    def embed_text(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """text tokens (B, L, C_t), mask (B, L) -> (B, EMBED_DIM) L2-normalised."""
        pooled = masked_max_pool(self.text_proj(tokens), mask if self.pool_mask_padding else None)
        return F.normalize(pooled.float(), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) 0-255 -> (B, EMBED_DIM) L2-normalised."""
        return self.embed_image(self.image_tokens(images))

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (B, L) -> (B, EMBED_DIM) L2-normalised."""
        return self.embed_text(self.text(ids, mask), mask)

    def _check_masked_keys(self, batch: Mapping[str, torch.Tensor], keys: tuple[str, ...], what: str) -> None:
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(
                f"UniPTPretrain training batch lacks {missing} (has {sorted(batch)}): with {what} the model needs "
                f"the masked ids '{keys[0]}' and their labels '{keys[1]}' (long (B, L)), which the training "
                f"collator draws per sample (build_t2i_train_loader with MODEL.META_ARCHITECTURE UniPTPretrain); a "
                f"batch from elsewhere must add them (unipt_plugin.data.mlm_masking.MLMMasking, "
                f"unipt_plugin.data.attribute_masking.AttributeMasking)")
        for key in keys:
            if batch[key].shape != batch["text_mask"].shape:
                raise ValueError(f"UniPTPretrain training batch: '{key}' {tuple(batch[key].shape)} must have the "
                                 f"shape of 'text_mask' {tuple(batch['text_mask'].shape)}")

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
            self._check_masked_keys(batch, _MLM_KEYS, f"MODEL.PRETRAIN.MLM_WEIGHT = {self.mlm_weight} > 0")
        if self.iap_fusion is not None:
            self._check_masked_keys(batch, _IAP_KEYS, f"MODEL.PRETRAIN.IAP_WEIGHT = {self.iap_weight} > 0")
        keys = (("images", "text_ids", "text_mask") + (_MLM_KEYS if self.mlm_head is not None else ())
                + (_IAP_KEYS if self.iap_fusion is not None else ()))
        b = to_device(batch, dev, keys + (("targets",) if self.ivlc_weight else ()))
        contrast = bool(self.contrastive_weight or self.ivlc_weight)
        # the colour image's tokens (contrast, IAP) and the clean caption's (contrast, TIC), once each
        img_tokens = self.image_tokens(b["images"]) if contrast or self.iap_fusion is not None else None
        txt_tokens = self.text(b["text_ids"], b["text_mask"]) if contrast or self.tic_decoder is not None else None
        losses = {}
        if contrast:
            img = self.embed_image(img_tokens)
            txt = self.embed_text(txt_tokens, b["text_mask"])
            if self.contrastive_weight:
                losses["loss_con"] = self.contrastive_weight * contrastive_loss(
                    img, txt, self.logit_scale(), gather=self.gather_negatives)
            if self.ivlc_weight:
                losses["loss_ivlc"] = self.ivlc_weight * ivlc_loss(
                    img, txt, b.get("targets"), self.logit_scale(), gather=self.gather_negatives)
        if self.mlm_head is not None:
            losses["loss_mlm"] = self.mlm_weight * self._mlm(b["mlm_ids"], b["text_mask"], b["mlm_labels"])
        if self.iap_fusion is not None:
            losses["loss_iap"] = self.iap_weight * self._iap(b["iap_ids"], b["text_mask"], b["iap_labels"], img_tokens)
        if self.tic_decoder is not None:
            losses["loss_tic"] = self.tic_weight * self._tic(b["images"], txt_tokens, b["text_mask"])
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

    def _iap(self, masked_ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
             image_tokens: torch.Tensor) -> torch.Tensor:
        """IAP loss of one batch: the caption with its attribute phrases masked (B, L) through the
        text encoder, fused with the colour image's tokens (B, 1 + N, C_v) (text queries, image
        keys and values; the caption's padding masked), the head on the masked positions
        (``labels`` != -100): their mean cross-entropy against the original ids."""
        fused = self.iap_fusion(self.text(masked_ids, mask), image_tokens, query_padding=~mask.bool())  # (B, L, D)
        picked = labels != IGNORE_INDEX
        return mlm_loss(self.iap_head(fused[picked]), labels[picked])

    def tic_chroma(self, images: torch.Tensor, text_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """TIC's prediction: colour images (B, 3, H, W) 0-255 (made gray here), the caption's text
        tokens (B, L, C_t) and mask (B, L) -> chroma (B, 2, H / SCALE, W / SCALE) on [-1, 1]."""
        gray_tokens = self.image_tokens(gray_image(images))  # the visual encoder on the BT.601 gray view
        return self.tic_decoder(gray_tokens, text_tokens, mask, small_gray(images, self.tic_scale))

    def _tic(self, images: torch.Tensor, text_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """TIC loss of one batch (its first TIC.SAMPLES samples, all when 0): the smooth-L1
        distance of the predicted chroma to the colour image's own (``losses.tic``)."""
        k = self.tic_samples or images.shape[0]
        images, text_tokens, mask = images[:k], text_tokens[:k], mask[:k]
        pred = self.tic_chroma(images, text_tokens, mask)
        return tic_loss(pred, chroma_target(images, self.tic_scale), self.tic_loss_beta)
