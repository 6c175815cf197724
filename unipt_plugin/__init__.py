"""unipt-reid: UniPT (ICCV 2023) for text-to-image person ReID, as a fast-reid plugin.

Importing this package makes fast-reid 1.4.0 importable on today's stack (``compat``, first)
and registers every part: datasets (``data.datasets``, fast-reid's DATASET_REGISTRY), visual
backbones (``modeling.backbones``, fast-reid's BACKBONE_REGISTRY), meta architectures
(``modeling.meta_arch``, fast-reid's META_ARCH_REGISTRY) and text encoders
(``modeling.text_encoders``, the plugin's own TEXT_ENCODER_REGISTRY: fast-reid has none). The PGU module lives in ``modeling.pgu``, the losses in
``modeling.losses``, the text-to-image evaluator in ``evaluation``, the trainer in ``engine``.
"""
from . import compat  # noqa: F401  (must come before any fastreid import)
from . import data  # noqa: F401,E402  (registers datasets)
from . import modeling  # noqa: F401,E402  (registers backbones, text encoders, meta-archs)
from .config import add_unipt_config, get_unipt_cfg  # noqa: E402

__version__ = "0.1.0"
__all__ = ["add_unipt_config", "get_unipt_cfg", "__version__"]
