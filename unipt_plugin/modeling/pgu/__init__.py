"""PGU: prototype-based granularity unification (shared prototypes + cross-attention decoder)."""
from .pgu import PGU, PGUDecoderLayer

__all__ = ["PGU", "PGUDecoderLayer"]
