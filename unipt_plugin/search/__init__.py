"""Text-to-image person search over your own images: encode, index, query, render, export.

* ``encoder``: batched encoding of image files / query strings with a trained model.
* ``fingerprint``: config and weights hashes that tie an index to the model that made it.
* ``index``: ``GalleryIndex``, a faiss index (flat, IVF-Flat, HNSW) + features + manifest on disk.
* ``pipeline``: the index / query workflows behind ``tools/search.py``.
* ``render``: PNG grid and self-contained HTML page of the results.
* ``export``: both encoders as ``torch.export`` programs (.pt2) and ONNX models.
"""
from ..data.image_files import IMAGE_EXTENSIONS, list_images
from .encoder import ImageEncoding, SearchEncoder, TextEncoding, load_model
from .export import ExportMismatchError, ImageEncoder, TextEncoder, export_encoders
from .fingerprint import config_hash, feature_config, weights_hash
from .index import DEFAULT_PARAMS, KINDS, GalleryIndex, IndexMismatchError, build_faiss_index
from .pipeline import IndexReport, dataset_gallery, index_folder, search_texts
from .render import Hit, QueryResult, render_grid_png, render_html, results_to_json

__all__ = [
    "IMAGE_EXTENSIONS", "ImageEncoding", "SearchEncoder", "TextEncoding", "list_images", "load_model",
    "ExportMismatchError", "ImageEncoder", "TextEncoder", "export_encoders",
    "config_hash", "feature_config", "weights_hash",
    "DEFAULT_PARAMS", "KINDS", "GalleryIndex", "IndexMismatchError", "build_faiss_index",
    "IndexReport", "dataset_gallery", "index_folder", "search_texts",
    "Hit", "QueryResult", "render_grid_png", "render_html", "results_to_json",
]
