"""Meta-architectures registered in fast-reid's ``META_ARCH_REGISTRY``: ``UniPTPretrain``
(contrastive + MLM pre-training) and ``UniPTT2I`` (ID + ranking + PGU fine-tuning)."""
from .unipt_pretrain import MLMHead, UniPTPretrain
from .unipt_t2i import UniPTT2I

__all__ = ["UniPTPretrain", "UniPTT2I", "MLMHead"]
