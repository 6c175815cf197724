"""LUPerson-T pseudo-text generation (paper section 3): divide (``vocabulary``), conquer
(``conquer``, ``clip_model``), combine (``templates``, ``combine``); the sharded, resumable
driver (``generate``, ``pipeline``) and the run report (``report``). See docs/pseudo_texts.md."""
from .combine import Caption, CaptionBuilder
from .conquer import ClipConquer, Selection, select_attributes
from .templates import build_templates
from .vocabulary import REQUIRED_ATTRIBUTES, Vocabulary, VocabularyError, load_vocabulary

__all__ = [
    "Caption", "CaptionBuilder", "ClipConquer", "Selection", "select_attributes", "build_templates",
    "REQUIRED_ATTRIBUTES", "Vocabulary", "VocabularyError", "load_vocabulary",
]
