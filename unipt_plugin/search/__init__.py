"""Text-to-image person search over your own images and videos: find people, encode, index,
query, render, serve, export.

* ``detectors``: how people are found in a photo or video frame, one :func:`build_detector`
  per ``--detector`` spec: ``hog`` (OpenCV's HOG pedestrian detector, nothing downloaded),
  ``onnx:<file>`` (a person detector exported to ONNX, run with onnxruntime), ``boxes:<file>``
  (boxes computed elsewhere, MOTChallenge ``det.txt`` / ``gt.txt`` layout) or ``none`` (every
  image is one person crop); :class:`DetectorOptions` holds their settings, boxes are
  :class:`Detection` ``(x, y, w, h)`` in source pixels.
* ``video``: videos read with ``cv2.VideoCapture`` and sampled at ``--fps`` frames per second of
  video (:func:`sample_frames`); consecutive near-duplicate crops of a person who stays put (box
  IoU and feature cosine above thresholds) kept once (:class:`Deduplicator`); the frame or
  upright photo an entry's box refers to read back (:func:`read_source_frame`).
* ``encoder``: batched encoding of image files / query strings with a trained model.
* ``fingerprint``: config and weights hashes that tie an index to the model that made it.
* ``index``: ``GalleryIndex``, a faiss index (flat, IVF-Flat, HNSW) + features + manifest on disk.
* ``pipeline``: the index / query workflows behind ``tools/search.py`` (:func:`index_folder`
  with :class:`SceneOptions` for scene photos and videos, :func:`search_texts`).
* ``render``: PNG grid and self-contained HTML page of the results (scene hits beside their
  source frame with the box drawn).
* ``server``: the local search page and JSON API behind ``tools/search.py serve``
  (:class:`SearchService` holds the model and index loaded once, :func:`create_app` the FastAPI
  app, :func:`running_server` serves it in a thread); images are served by entry id only.
* ``export``: both encoders as ``torch.export`` programs (.pt2) and ONNX models.
"""
from ..data.image_files import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_images
from .detectors import Detection, Detector, DetectorOptions, build_detector
from .encoder import ImageEncoding, SearchEncoder, TextEncoding, load_model
from .export import ExportMismatchError, ImageEncoder, TextEncoder, export_encoders
from .fingerprint import config_hash, feature_config, weights_hash
from .index import DEFAULT_PARAMS, KINDS, GalleryIndex, IndexMismatchError, build_faiss_index
from .pipeline import IndexReport, SceneOptions, dataset_gallery, index_folder, search_texts
from .render import Hit, QueryResult, render_grid_png, render_html, results_to_json
from .server import SearchService, create_app, running_server
from .video import Deduplicator, read_source_frame, sample_frames, video_info

__all__ = [
    "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "list_images",
    "Detection", "Detector", "DetectorOptions", "build_detector",
    "ImageEncoding", "SearchEncoder", "TextEncoding", "load_model",
    "ExportMismatchError", "ImageEncoder", "TextEncoder", "export_encoders",
    "config_hash", "feature_config", "weights_hash",
    "DEFAULT_PARAMS", "KINDS", "GalleryIndex", "IndexMismatchError", "build_faiss_index",
    "IndexReport", "SceneOptions", "dataset_gallery", "index_folder", "search_texts",
    "Hit", "QueryResult", "render_grid_png", "render_html", "results_to_json",
    "SearchService", "create_app", "running_server",
    "Deduplicator", "read_source_frame", "sample_frames", "video_info",
]
