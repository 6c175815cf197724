"""Registry of text encoders and the config builder.

Every registered class takes ``(input_ids (B, L), attention_mask (B, L))`` in ``forward`` and
returns token features (B, L, C); it has attributes ``out_dim`` (C) and ``vocab_size``, and is
built from the config as ``cls(cfg)``: fast-reid's ``@configurable`` ``__init__`` with a
``from_config(cfg)`` classmethod returning the ``__init__`` arguments.
"""
from __future__ import annotations

from fastreid.utils.registry import Registry
from torch import nn

__all__ = ["TEXT_ENCODER_REGISTRY", "build_text_encoder"]

TEXT_ENCODER_REGISTRY = Registry("TEXT_ENCODER")
TEXT_ENCODER_REGISTRY.__doc__ = "Text encoders: (input_ids, attention_mask) -> tokens (B, L, C)."


def build_text_encoder(cfg) -> nn.Module:
    """The text encoder named by ``cfg.MODEL.TEXT.NAME``, built as ``cls(cfg)``."""
    name = cfg.MODEL.TEXT.NAME
    try:
        cls = TEXT_ENCODER_REGISTRY.get(name)
    except KeyError as e:
        raise KeyError(
            f"MODEL.TEXT.NAME '{name}' is not a registered text encoder "
            f"(BertTextEncoder, SmallBertTextEncoder, CLIPTextEncoder or a plugin's own)"
        ) from e
    return cls(cfg)
