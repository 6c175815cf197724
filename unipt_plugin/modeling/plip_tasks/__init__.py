"""PLIP's pretext tasks beside UniPT's losses in pre-training (docs/choices.md, PLIP): the
cross-attention stack of IAP's fusion and TIC's decoder, the colour space of TIC, its decoder and
the demo's colourisation. The IAP / TIC losses: ``unipt_plugin.modeling.losses`` (``tic_loss``;
IAP's is ``mlm_loss`` over the masked attribute tokens)."""
from .colour_space import BT601_LUMA, gray_image, luma, rgb_to_chroma, ycbcr_to_rgb
from .colourisation import ColourisationDecoder
from .fusion import CrossAttentionStack, default_heads

__all__ = ["BT601_LUMA", "luma", "gray_image", "rgb_to_chroma", "ycbcr_to_rgb", "CrossAttentionStack",
           "default_heads", "ColourisationDecoder"]
