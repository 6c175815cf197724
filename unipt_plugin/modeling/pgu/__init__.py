"""PGU: prototype-based granularity unification (shared prototypes + cross-attention decoder)."""
from .pgu import PGU, PGUCrossAttention, PGUDecoderLayer

__all__ = ["PGU", "PGUCrossAttention", "PGUDecoderLayer"]
