"""Text-to-image retrieval evaluation."""
from .retrieval_metrics import image_to_text, retrieval_metrics
from .t2i_evaluator import TextToImageEvaluator, all_gather_rows, collective_device

__all__ = ["retrieval_metrics", "image_to_text", "TextToImageEvaluator", "all_gather_rows",
           "collective_device"]
