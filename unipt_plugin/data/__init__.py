"""Text-image data: datasets (registered in fast-reid's DATASET_REGISTRY), tokenizer, transforms, loaders."""
from . import datasets  # noqa: F401  (registers the text-image datasets)
from .build import build_t2i_test_loader, build_t2i_train_loader  # noqa: E402
from .tokenizer import build_tokenizer  # noqa: E402

__all__ = ["build_t2i_train_loader", "build_t2i_test_loader", "build_tokenizer"]
