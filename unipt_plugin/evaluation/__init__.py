"""Text-to-image retrieval evaluation, and fast-reid's image-ReID evaluator for Baseline runs."""
from .image_reid import ImageReIDEvaluator
from .results import EVAL_RESULTS_FILE, read_eval_results
from .retrieval_metrics import image_to_text, retrieval_metrics
from .t2i_evaluator import TextToImageEvaluator, all_gather_rows, collective_device

__all__ = ["retrieval_metrics", "image_to_text", "TextToImageEvaluator", "all_gather_rows",
           "collective_device", "read_eval_results", "EVAL_RESULTS_FILE", "ImageReIDEvaluator"]
