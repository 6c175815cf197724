"""``UniPTT2I``: supervised text-to-image fine-tuning (paper section 4.2; docs/choices.md, Fine-tuning).

Global embedding per modality: per-token Linear(C, T2I.EMBED_DIM) then max-pooling (or the
first token, T2I.POOL = "cls"). PGU (MODEL.PGU.*) gives part features. Losses:
ID_WEIGHT * L_id + RANK_WEIGHT * L_rk on the global embeddings and PGU_WEIGHT (gamma) *
(L_id on the parts + L_rk on the normalised concatenation). Inference (T2I.TEST_SCORE):
"global" -> normalise(g); "pgu" -> the PGU feature; "sum" -> cat(normalise(g), PGU feature),
whose inner product is the sum of the two cosines. PLIP's losses on the global embeddings are
options (docs/choices.md, PLIP; 0 = off): IVLC_WEIGHT * L_ivlc (identity-level contrast at
IVLC_TEMPERATURE), CMPM_WEIGHT * L_cmpm and CMPC_WEIGHT * L_cmpc (its norm-softmax classifier
``cmpc_classifier`` is built only when CMPC_WEIGHT > 0).

Choices of ours: the ID classifiers see the un-normalised global embedding and un-normalised
parts; with PGU_WEIGHT = 0 (and PGU.ENABLED) the PGU is not run in training and is frozen
(``requires_grad`` False), as is the ID classifier with ID_WEIGHT = 0, so every trainable
parameter gets a gradient at every step and multi-process training (DDP, ``static_graph``) runs.
Linear probing (MODEL.T2I.LINEAR_PROBE) freezes ``visual`` and ``text`` the same way for the whole
run and keeps them in eval mode (:meth:`UniPTT2I.train`); everything else trains.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from fastreid.config import configurable
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from ...data.common import RANKING_SEED_STREAM
from ..losses import (CMPM_TARGET_NORMS, NormSoftmaxClassifier, PartClassifiers, SharedClassifier, cmpc_loss,
                      cmpm_loss, identity_loss, ivlc_loss, part_identity_loss, ranking_loss)
from ..pgu import PGU
from ..text_encoders import build_text_encoder
from .common import (ImageNormalizer, check_finite_losses, compile_encoders, masked_max_pool, seeds_generator,
                     to_device)

logger = logging.getLogger(__name__)

__all__ = ["UniPTT2I"]

_POOLS = ("max", "cls")
# The encoders MODEL.T2I.LINEAR_PROBE freezes (top-level children of the model).
_ENCODERS = ("visual", "text")
_TEST_SCORES = ("global", "pgu", "sum")


def _check_plip_options(ivlc_weight: float, ivlc_temperature: float, cmpm_weight: float, cmpc_weight: float,
                        cmpm_eps: float, cmpm_target_norm: str) -> None:
    for key, value in (("IVLC_WEIGHT", ivlc_weight), ("CMPM_WEIGHT", cmpm_weight), ("CMPC_WEIGHT", cmpc_weight)):
        if not float(value) >= 0:
            raise ValueError(f"MODEL.T2I.{key} must be >= 0 (0 = off), got {value}")
    if not float(ivlc_temperature) > 0:
        raise ValueError(f"MODEL.T2I.IVLC_TEMPERATURE must be > 0, got {ivlc_temperature}")
    if not float(cmpm_eps) > 0:
        raise ValueError(f"MODEL.T2I.CMPM_EPS must be > 0 (it keeps log(q + eps) finite), got {cmpm_eps}")
    if cmpm_target_norm not in CMPM_TARGET_NORMS:
        raise ValueError(f"MODEL.T2I.CMPM_TARGET_NORM must be one of {CMPM_TARGET_NORMS}, got {cmpm_target_norm!r}")


def _check_linear_probe(cfg) -> None:
    """Refuse the settings MODEL.T2I.LINEAR_PROBE True cannot honour, naming the key."""
    if not cfg.MODEL.T2I.LINEAR_PROBE:
        return
    for key in ("VISUAL", "TEXT"):
        if getattr(cfg.MODEL, key).GRAD_CHECKPOINTING:
            raise ValueError(f"MODEL.{key}.GRAD_CHECKPOINTING True with MODEL.T2I.LINEAR_PROBE True: the frozen "
                             f"encoders run without gradients, so there are no activations to recompute; set "
                             f"MODEL.{key}.GRAD_CHECKPOINTING False")
    frozen = [str(n) for n in cfg.MODEL.FREEZE_LAYERS if str(n) in _ENCODERS]
    if frozen and int(cfg.SOLVER.FREEZE_ITERS) > 0:
        raise ValueError(f"MODEL.FREEZE_LAYERS {list(cfg.MODEL.FREEZE_LAYERS)} with SOLVER.FREEZE_ITERS "
                         f"{cfg.SOLVER.FREEZE_ITERS} and MODEL.T2I.LINEAR_PROBE True: linear probing already freezes "
                         f"{frozen} for the whole run, and fast-reid's LayerFreeze hook would put them back in train "
                         f"mode after SOLVER.FREEZE_ITERS; remove {frozen} from MODEL.FREEZE_LAYERS")


def _check_options(pool: str, test_score: str, pgu_enabled: bool) -> None:
    if pool not in _POOLS:
        raise ValueError(f"MODEL.T2I.POOL must be one of {_POOLS}, got {pool!r}")
    if test_score not in _TEST_SCORES:
        raise ValueError(f"MODEL.T2I.TEST_SCORE must be one of {_TEST_SCORES}, got {test_score!r}")
    if not pgu_enabled and test_score != "global":
        raise ValueError(f"MODEL.T2I.TEST_SCORE={test_score!r} needs the PGU, but MODEL.PGU.ENABLED "
                         f"is False: set TEST_SCORE to 'global' or enable the PGU")


@META_ARCH_REGISTRY.register()
class UniPTT2I(nn.Module):
    """ID + ranking + PGU fine-tuning of ``visual`` and ``text`` encoders.

    Built from a config (``UniPTT2I(cfg)``, what fast-reid's ``build_model`` does; see
    :meth:`from_config`) or from plain arguments (fast-reid's ``@configurable``):

    Args:
        visual: image encoder, (B, 3, H, W) normalised -> tokens (B, 1 + N, C_v), attribute ``out_dim``.
        text: text encoder, (ids (B, L), mask (B, L)) -> tokens (B, L, C_t), attribute ``out_dim``.
        pgu: the PGU module (``unipt_plugin.modeling.pgu.PGU`` over C_v / C_t tokens; attributes
            ``num_prototypes``, ``part_dim``), or None for MODEL.PGU.ENABLED False. It gets the
            visual tokens as they come, class token first, and drops that token itself when
            MODEL.PGU.IMAGE_TOKENS is "patches" (the global feature still max-pools over all).
        embed_dim: MODEL.T2I.EMBED_DIM. num_classes: MODEL.HEADS.NUM_CLASSES (0: inference only).
        pixel_mean, pixel_std: MODEL.PIXEL_MEAN / PIXEL_STD (0-255 scale).
        pool, pool_mask_padding, rank_margin, hardest_fallback, id_weight, rank_weight,
            pgu_weight, test_score, gather_negatives, classifier_std: MODEL.T2I.{POOL,
            POOL_MASK_PADDING, RANK_MARGIN, RANK_HARDEST_FALLBACK, ID_WEIGHT, RANK_WEIGHT,
            PGU_WEIGHT, TEST_SCORE, GATHER_NEGATIVES, CLASSIFIER_STD}.
        ivlc_weight, ivlc_temperature, cmpm_weight, cmpc_weight, cmpm_eps, cmpm_target_norm:
            MODEL.T2I.{IVLC_WEIGHT, IVLC_TEMPERATURE, CMPM_WEIGHT, CMPC_WEIGHT, CMPM_EPS,
            CMPM_TARGET_NORM}: PLIP's losses on the global embeddings (0 = off).
        torch_compile: MODEL.COMPILE (see ``compile_encoders``).
        linear_probe: MODEL.T2I.LINEAR_PROBE: ``visual`` and ``text`` frozen (``requires_grad``
            False: the optimiser and DistributedDataParallel leave them out) and kept in eval mode
            whatever ``train()`` is asked (no dropout / drop-path, BatchNorm statistics fixed);
            the projections, classifiers, PGU and CMPC classifier train.
    Train: ``forward(batch)`` -> {"loss_id", "loss_rank", "loss_pgu_id", "loss_pgu_rank",
        "loss_ivlc", "loss_cmpm", "loss_cmpc"} (a term whose weight is 0 is left out; the last
        three are off by default). IVLC and CMPM score against the candidates of every process
        under GATHER_NEGATIVES (means over anchors: not scaled by W); CMPC needs no candidates.
        The semi-hard negatives of both ranking losses are drawn from a generator made for the
        step on the model's device and seeded from the batch's "seeds" (the samples' seeds that
        the training collator adds; ``seeds_generator``, stream RANKING_SEED_STREAM): a
        function of the run seed, rank and stream position, so the model holds no generator
        and a resumed run draws what an uninterrupted one would. A batch without "seeds"
        draws from torch's global RNG.
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

    @configurable
    def __init__(self, visual: nn.Module, text: nn.Module, pgu: nn.Module | None, embed_dim: int,
                 num_classes: int, *, pixel_mean: Sequence[float] = (127.5, 127.5, 127.5),
                 pixel_std: Sequence[float] = (127.5, 127.5, 127.5), pool: str = "max",
                 pool_mask_padding: bool = True, rank_margin: float = 0.2, hardest_fallback: bool = False,
                 id_weight: float = 1.0, rank_weight: float = 1.0, pgu_weight: float = 1.0,
                 test_score: str = "sum", gather_negatives: bool = True, classifier_std: float = 0.001,
                 torch_compile: bool = False, ivlc_weight: float = 0.0, ivlc_temperature: float = 1.0,
                 cmpm_weight: float = 0.0, cmpc_weight: float = 0.0, cmpm_eps: float = 1e-8,
                 cmpm_target_norm: str = "l1", linear_probe: bool = False) -> None:
        super().__init__()
        _check_options(pool, test_score, pgu is not None)
        _check_plip_options(ivlc_weight, ivlc_temperature, cmpm_weight, cmpc_weight, cmpm_eps, cmpm_target_norm)
        num_classes = int(num_classes)
        self.visual = visual
        self.text = text
        self.normalizer = ImageNormalizer(pixel_mean, pixel_std)
        self.image_proj = nn.Linear(self.visual.out_dim, embed_dim)
        self.text_proj = nn.Linear(self.text.out_dim, embed_dim)
        # NUM_CLASSES = 0 builds an inference-only model (evaluation, search, export): the
        # identity classifiers exist only for training.
        self.num_classes = num_classes
        self.classifier = SharedClassifier(embed_dim, num_classes, classifier_std) if num_classes > 0 else None
        if self.classifier is not None and float(id_weight) == 0:
            self.classifier.requires_grad_(False)  # ID_WEIGHT = 0: unused in training, frozen (see PGU below)
        self.pool = pool
        self.pool_mask_padding = bool(pool_mask_padding)
        self.margin = float(rank_margin)
        self.hardest_fallback = bool(hardest_fallback)
        self.id_weight, self.rank_weight = float(id_weight), float(rank_weight)
        self.pgu_weight = float(pgu_weight)
        self.test_score = test_score
        self.pgu = pgu
        if pgu is not None:
            self.part_classifiers = (PartClassifiers(pgu.num_prototypes, pgu.part_dim, num_classes, classifier_std)
                                     if num_classes > 0 else None)
            if self.pgu_weight == 0:
                # Not trained: frozen, so the optimiser and DistributedDataParallel leave it out
                # (a parameter without gradient would stop DDP at its second iteration).
                self.pgu.requires_grad_(False)
                if self.part_classifiers is not None:
                    self.part_classifiers.requires_grad_(False)
                logger.info("MODEL.T2I.PGU_WEIGHT = 0: the PGU is built (TEST_SCORE=%s) but frozen, not trained",
                            self.test_score)
        else:
            self.part_classifiers = None
        self.gather_negatives = bool(gather_negatives)
        self.ivlc_weight, self.ivlc_logit_scale = float(ivlc_weight), 1.0 / float(ivlc_temperature)
        self.cmpm_weight, self.cmpc_weight = float(cmpm_weight), float(cmpc_weight)
        self.cmpm_eps, self.cmpm_target_norm = float(cmpm_eps), str(cmpm_target_norm)
        # Built last, and only when used, so that every other parameter draws the same init as
        # without it and checkpoints / DDP's static graph are those of a model without CMPC.
        self.cmpc_classifier = (NormSoftmaxClassifier(embed_dim, num_classes)
                                if self.cmpc_weight > 0 and num_classes > 0 else None)
        self.linear_probe = bool(linear_probe)
        if self.linear_probe:
            for name in _ENCODERS:
                getattr(self, name).requires_grad_(False)
            self.train(self.training)  # the encoders to eval mode
            logger.info("MODEL.T2I.LINEAR_PROBE: the visual and text encoders are frozen (not in the optimiser, in "
                        "eval mode: no dropout / drop-path, BatchNorm statistics fixed; SOLVER.VISUAL_LR / TEXT_LR "
                        "have nothing to train); %d parameter tensors train",
                        sum(1 for p in self.parameters() if p.requires_grad))
        compile_encoders(self, bool(torch_compile))

    @classmethod
    def from_config(cls, cfg, visual: nn.Module | None = None, text: nn.Module | None = None) -> dict[str, Any]:
        """The arguments of ``__init__`` from cfg (MODEL.T2I.*, MODEL.PGU.*, MODEL.HEADS.NUM_CLASSES,
        MODEL.PIXEL_MEAN/STD, MODEL.COMPILE; with MODEL.T2I.LINEAR_PROBE also MODEL.VISUAL/TEXT.
        GRAD_CHECKPOINTING and MODEL.FREEZE_LAYERS, checked by ``_check_linear_probe``). ``visual`` /
        ``text``: encoders to use instead of building them from cfg (fast-reid's ``build_backbone``,
        ``build_text_encoder``); the PGU is built from MODEL.PGU over their widths when MODEL.PGU.ENABLED."""
        t = cfg.MODEL.T2I
        _check_options(t.POOL, t.TEST_SCORE, bool(cfg.MODEL.PGU.ENABLED))  # before building the encoders
        _check_plip_options(t.IVLC_WEIGHT, t.IVLC_TEMPERATURE, t.CMPM_WEIGHT, t.CMPC_WEIGHT, t.CMPM_EPS,
                            t.CMPM_TARGET_NORM)
        _check_linear_probe(cfg)
        visual = visual if visual is not None else build_backbone(cfg)
        text = text if text is not None else build_text_encoder(cfg)
        pgu = PGU(cfg, image_dim=visual.out_dim, text_dim=text.out_dim) if cfg.MODEL.PGU.ENABLED else None
        return {"visual": visual, "text": text, "pgu": pgu, "embed_dim": int(t.EMBED_DIM),
                "num_classes": int(cfg.MODEL.HEADS.NUM_CLASSES),
                "pixel_mean": list(cfg.MODEL.PIXEL_MEAN), "pixel_std": list(cfg.MODEL.PIXEL_STD),
                "pool": str(t.POOL), "pool_mask_padding": bool(t.POOL_MASK_PADDING),
                "rank_margin": float(t.RANK_MARGIN), "hardest_fallback": bool(t.RANK_HARDEST_FALLBACK),
                "id_weight": float(t.ID_WEIGHT), "rank_weight": float(t.RANK_WEIGHT),
                "pgu_weight": float(t.PGU_WEIGHT), "test_score": str(t.TEST_SCORE),
                "gather_negatives": bool(t.GATHER_NEGATIVES), "classifier_std": float(t.CLASSIFIER_STD),
                "torch_compile": bool(cfg.MODEL.COMPILE),
                "ivlc_weight": float(t.IVLC_WEIGHT), "ivlc_temperature": float(t.IVLC_TEMPERATURE),
                "cmpm_weight": float(t.CMPM_WEIGHT), "cmpc_weight": float(t.CMPC_WEIGHT),
                "cmpm_eps": float(t.CMPM_EPS), "cmpm_target_norm": str(t.CMPM_TARGET_NORM),
                "linear_probe": bool(t.LINEAR_PROBE)}

    @property
    def device(self) -> torch.device:
        return self.normalizer.pixel_mean.device

    def train(self, mode: bool = True) -> "UniPTT2I":
        """nn.Module's ``train(mode)``; under linear probing the encoders stay in eval mode (the
        trainer, the evaluation loop and DDP all switch modes through this call)."""
        super().train(mode)
        if getattr(self, "linear_probe", False):
            for name in _ENCODERS:
                getattr(self, name).eval()
        return self

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
                             "train (the ID and CMPC classifiers need the classes); the trainer sets the number "
                             "of classes from the training data")
        for key in ("images", "text_ids", "text_mask", "targets"):
            if key not in batch:
                raise KeyError(f"UniPTT2I training batch lacks '{key}' (has {sorted(batch)})")
        b = to_device(batch, dev, ("images", "text_ids", "text_mask", "targets"))
        targets, mask = b["targets"], b["text_mask"]
        # the step's semi-hard draws (both ranking losses, in this order); "seeds" stay on the CPU
        generator = seeds_generator(batch.get("seeds"), RANKING_SEED_STREAM, dev)
        img_tok = self.image_tokens(b["images"])
        txt_tok = self.text(b["text_ids"], mask)
        g_img = self._global(img_tok, self.image_proj, None)
        g_txt = self._global(txt_tok, self.text_proj, mask if self.pool_mask_padding else None)
        losses = {}
        if self.id_weight:
            losses["loss_id"] = self.id_weight * identity_loss(self.classifier(g_img), self.classifier(g_txt), targets)
        if self.rank_weight:
            losses["loss_rank"] = self.rank_weight * ranking_loss(
                g_img, g_txt, targets, self.margin, generator, self.hardest_fallback,
                gather=self.gather_negatives)
        if self.pgu is not None and self.pgu_weight:
            parts_img, feat_img = self.pgu(img_tok, "image", None)
            parts_txt, feat_txt = self.pgu(txt_tok, "text", mask)
            losses["loss_pgu_id"] = self.pgu_weight * part_identity_loss(
                self.part_classifiers(parts_img), self.part_classifiers(parts_txt), targets)
            losses["loss_pgu_rank"] = self.pgu_weight * ranking_loss(
                feat_img, feat_txt, targets, self.margin, generator, self.hardest_fallback,
                gather=self.gather_negatives)
        if self.ivlc_weight:
            losses["loss_ivlc"] = self.ivlc_weight * ivlc_loss(
                g_img, g_txt, targets, self.ivlc_logit_scale, gather=self.gather_negatives)
        if self.cmpm_weight:
            losses["loss_cmpm"] = self.cmpm_weight * cmpm_loss(
                g_img, g_txt, targets, self.cmpm_eps, self.cmpm_target_norm, gather=self.gather_negatives)
        if self.cmpc_weight:
            losses["loss_cmpc"] = self.cmpc_weight * cmpc_loss(g_img, g_txt, targets, self.cmpc_classifier.weight)
        if not losses:
            raise ValueError("UniPTT2I has no loss to train: MODEL.T2I.ID_WEIGHT, RANK_WEIGHT, PGU_WEIGHT (or "
                             "MODEL.PGU.ENABLED), IVLC_WEIGHT, CMPM_WEIGHT and CMPC_WEIGHT are all 0 / off")
        return check_finite_losses(losses)
