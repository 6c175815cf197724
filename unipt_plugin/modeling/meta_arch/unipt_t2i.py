"""``UniPTT2I``: supervised text-to-image fine-tuning (paper section 4.2; method-notes 3).

Global embedding per modality: per-token Linear(C, T2I.EMBED_DIM) then max-pooling (or the
first token, T2I.POOL = "cls"). PGU (MODEL.PGU.*) gives part features. Losses:
ID_WEIGHT * L_id + RANK_WEIGHT * L_rk on the global embeddings and PGU_WEIGHT (gamma) *
(L_id on the parts + L_rk on the normalised concatenation). Inference (T2I.TEST_SCORE):
"global" -> normalise(g); "pgu" -> the PGU feature; "sum" -> cat(normalise(g), PGU feature),
whose inner product is the sum of the two cosines.

Choices of ours: the ID classifiers see the un-normalised global embedding and un-normalised
parts; with PGU_WEIGHT = 0 (and PGU.ENABLED) the PGU is not run in training and is frozen
(``requires_grad`` False), as is the ID classifier with ID_WEIGHT = 0, so every trainable
parameter gets a gradient at every step and multi-process training (DDP, ``static_graph``) runs.
"""
from __future__ import annotations

import logging
from typing import Mapping

import torch
import torch.nn.functional as F
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from ..losses import (PartClassifiers, SharedClassifier, identity_loss, part_identity_loss,
                      ranking_loss)
from ..pgu import PGU
from ..text_encoders import build_text_encoder
from .common import (ImageNormalizer, check_finite_losses, compile_encoders, masked_max_pool, seeded_generator,
                     to_device)

logger = logging.getLogger(__name__)

__all__ = ["UniPTT2I"]

_POOLS = ("max", "cls")
_TEST_SCORES = ("global", "pgu", "sum")


@META_ARCH_REGISTRY.register()
class UniPTT2I(nn.Module):
    """ID + ranking + PGU fine-tuning of ``visual`` and ``text`` encoders.

    Args:
        cfg: the run's config (MODEL.T2I.*, MODEL.PGU.*, MODEL.HEADS.NUM_CLASSES, SEED).
        visual, text: encoders to use instead of building them from cfg.
    Train: ``forward(batch)`` -> {"loss_id", "loss_rank", "loss_pgu_id", "loss_pgu_rank"}
        (a term whose weight is 0 is left out).
        Multi-process (a process group of W > 1 and MODEL.T2I.GATHER_NEGATIVES): both ranking
        losses rank this process's N anchors against the W * N candidates of every process
        (embeddings gathered with gradients, identities too), and, being SUMS over anchors, are
        returned multiplied by W: DistributedDataParallel averages gradients over processes, so
        the averaged gradients then equal those of one process's loss on the concatenated batch
        of W * N, and the mean over processes of each term equals that loss (``ranking_loss``
        derives it). The identity losses are means over the batch and are not scaled. With
        W = 1 or GATHER_NEGATIVES False each process ranks within its own batch.
    Eval: ``forward(batch)`` -> (B, D) features of the batch's modality, D = EMBED_DIM,
        P * PART_DIM or their sum for TEST_SCORE global / pgu / sum.
    """

    def __init__(self, cfg, visual: nn.Module | None = None, text: nn.Module | None = None) -> None:
        super().__init__()
        t = cfg.MODEL.T2I
        if t.POOL not in _POOLS:
            raise ValueError(f"MODEL.T2I.POOL must be one of {_POOLS}, got {t.POOL!r}")
        if t.TEST_SCORE not in _TEST_SCORES:
            raise ValueError(f"MODEL.T2I.TEST_SCORE must be one of {_TEST_SCORES}, got {t.TEST_SCORE!r}")
        if not cfg.MODEL.PGU.ENABLED and t.TEST_SCORE != "global":
            raise ValueError(f"MODEL.T2I.TEST_SCORE={t.TEST_SCORE!r} needs the PGU, but MODEL.PGU.ENABLED "
                             f"is False: set TEST_SCORE to 'global' or enable the PGU")
        num_classes = int(cfg.MODEL.HEADS.NUM_CLASSES)
        self.visual = visual if visual is not None else build_backbone(cfg)
        self.text = text if text is not None else build_text_encoder(cfg)
        self.normalizer = ImageNormalizer(cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)
        self.image_proj = nn.Linear(self.visual.out_dim, t.EMBED_DIM)
        self.text_proj = nn.Linear(self.text.out_dim, t.EMBED_DIM)
        # NUM_CLASSES = 0 builds an inference-only model (evaluation, search, export): the
        # identity classifiers exist only for training.
        self.num_classes = num_classes
        self.classifier = SharedClassifier(t.EMBED_DIM, num_classes, t.CLASSIFIER_STD) if num_classes > 0 else None
        if self.classifier is not None and float(t.ID_WEIGHT) == 0:
            self.classifier.requires_grad_(False)  # ID_WEIGHT = 0: unused in training, frozen (see PGU below)
        self.pool = t.POOL
        self.pool_mask_padding = bool(t.POOL_MASK_PADDING)
        self.margin = float(t.RANK_MARGIN)
        self.hardest_fallback = bool(t.RANK_HARDEST_FALLBACK)
        self.id_weight, self.rank_weight = float(t.ID_WEIGHT), float(t.RANK_WEIGHT)
        self.pgu_weight = float(t.PGU_WEIGHT)
        self.test_score = t.TEST_SCORE
        if cfg.MODEL.PGU.ENABLED:
            self.pgu = PGU.from_config(cfg, self.visual.out_dim, self.text.out_dim)
            self.part_classifiers = (PartClassifiers(self.pgu.num_prototypes, self.pgu.part_dim,
                                                     num_classes, t.CLASSIFIER_STD) if num_classes > 0 else None)
            if self.pgu_weight == 0:
                # Not trained: frozen, so the optimiser and DistributedDataParallel leave it out
                # (a parameter without gradient would stop DDP at its second iteration).
                self.pgu.requires_grad_(False)
                if self.part_classifiers is not None:
                    self.part_classifiers.requires_grad_(False)
                logger.info("MODEL.T2I.PGU_WEIGHT = 0: the PGU is built (TEST_SCORE=%s) but frozen, not trained",
                            self.test_score)
        else:
            self.pgu = None
            self.part_classifiers = None
        self.gather_negatives = bool(t.GATHER_NEGATIVES)
        # Semi-hard negative draws: a generator on the model's device (cfg.MODEL.DEVICE; the CPU
        # by default) seeded from cfg.SEED (and the rank).
        self.rank_generator = seeded_generator(cfg.SEED, offset=2, device=cfg.MODEL.DEVICE)
        compile_encoders(self, bool(cfg.MODEL.COMPILE))

    @property
    def device(self) -> torch.device:
        return self.normalizer.pixel_mean.device

    def _global(self, tokens: torch.Tensor, proj: nn.Linear, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pool == "cls":
            return proj(tokens[:, 0])
        return masked_max_pool(proj(tokens), mask)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) 0-255 -> visual tokens (B, 1 + N, C_v)."""
        return self.visual(self.normalizer(images))

    def _features(self, tokens: torch.Tensor, modality: str, mask: torch.Tensor | None) -> torch.Tensor:
        """Inference feature (B, D) per TEST_SCORE."""
        proj = self.image_proj if modality == "image" else self.text_proj
        pool_mask = mask if (modality == "text" and self.pool_mask_padding) else None
        out = []
        if self.test_score in ("global", "sum"):
            out.append(F.normalize(self._global(tokens, proj, pool_mask).float(), dim=-1))
        if self.test_score in ("pgu", "sum"):
            out.append(self.pgu(tokens, modality, mask)[1])
        return torch.cat(out, dim=1)

    def forward(self, batch: Mapping[str, torch.Tensor]):
        dev = self.device
        if not self.training:
            if "images" in batch:
                return self._features(self.image_tokens(batch["images"].to(dev, non_blocking=True)), "image", None)
            b = to_device(batch, dev, ("text_ids", "text_mask"))
            return self._features(self.text(b["text_ids"], b["text_mask"]), "text", b["text_mask"])
        if self.classifier is None:
            raise ValueError("UniPTT2I was built with MODEL.HEADS.NUM_CLASSES = 0 (inference only) and cannot "
                             "train; the trainer sets the number of classes from the training data")
        for key in ("images", "text_ids", "text_mask", "targets"):
            if key not in batch:
                raise KeyError(f"UniPTT2I training batch lacks '{key}' (has {sorted(batch)})")
        b = to_device(batch, dev, ("images", "text_ids", "text_mask", "targets"))
        targets, mask = b["targets"], b["text_mask"]
        img_tok = self.image_tokens(b["images"])
        txt_tok = self.text(b["text_ids"], mask)
        g_img = self._global(img_tok, self.image_proj, None)
        g_txt = self._global(txt_tok, self.text_proj, mask if self.pool_mask_padding else None)
        losses = {}
        if self.id_weight:
            losses["loss_id"] = self.id_weight * identity_loss(self.classifier(g_img), self.classifier(g_txt), targets)
        if self.rank_weight:
            losses["loss_rank"] = self.rank_weight * ranking_loss(
                g_img, g_txt, targets, self.margin, self.rank_generator, self.hardest_fallback,
                gather=self.gather_negatives)
        if self.pgu is not None and self.pgu_weight:
            parts_img, feat_img = self.pgu(img_tok, "image", None)
            parts_txt, feat_txt = self.pgu(txt_tok, "text", mask)
            losses["loss_pgu_id"] = self.pgu_weight * part_identity_loss(
                self.part_classifiers(parts_img), self.part_classifiers(parts_txt), targets)
            losses["loss_pgu_rank"] = self.pgu_weight * ranking_loss(
                feat_img, feat_txt, targets, self.margin, self.rank_generator, self.hardest_fallback,
                gather=self.gather_negatives)
        return check_finite_losses(losses)
