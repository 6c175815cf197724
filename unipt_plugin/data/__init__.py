"""Text-image data: datasets (registered in fast-reid's DATASET_REGISTRY), tokenizer, transforms, loaders;
and image-ReID loaders over fast-reid's own image datasets (image_reid.py)."""
from . import datasets  # noqa: F401  (registers the text-image datasets)
from .build import build_t2i_test_loader, build_t2i_train_loader  # noqa: E402
from .image_reid import build_image_reid_test_loader, build_image_reid_train_loader  # noqa: E402
from .tokenizer import build_tokenizer  # noqa: E402

__all__ = ["build_t2i_train_loader", "build_t2i_test_loader", "build_tokenizer", "build_image_reid_train_loader",
           "build_image_reid_test_loader"]
