"""Text encoders in their own registry: BERT (transformers), small BERT, CLIP's text tower.

``build_text_encoder(cfg)`` builds ``cfg.MODEL.TEXT.NAME``; every encoder maps
``(input_ids (B, L), attention_mask (B, L))`` to token features (B, L, C) and has ``out_dim``
(C) and ``vocab_size``.
"""
from .registry import TEXT_ENCODER_REGISTRY, build_text_encoder
from .bert import BertTextEncoder, SmallBertTextEncoder
from .clip_text import CLIPTextEncoder

__all__ = [
    "TEXT_ENCODER_REGISTRY",
    "build_text_encoder",
    "BertTextEncoder",
    "SmallBertTextEncoder",
    "CLIPTextEncoder",
]
