"""The search workflows behind ``tools/search.py``: index a folder, query an index or a dataset."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..data import build_t2i_test_loader
from ..data.image_files import list_images
from .encoder import SearchEncoder
from .fingerprint import config_hash, weights_hash
from .index import GalleryIndex
from .render import Hit, QueryResult

logger = logging.getLogger(__name__)

__all__ = ["IndexReport", "index_folder", "search_texts", "dataset_gallery"]


@dataclass
class IndexReport:
    """What :func:`index_folder` did: files found, newly encoded, skipped, total in the index."""

    found: int
    encoded: int
    skipped: list[dict[str, str]]
    total: int
    rebuilt: bool


def index_folder(encoder: SearchEncoder, cfg: Any, images_dir: str | os.PathLike, index_dir: str | os.PathLike,
                 kind: str | None = None, params: dict[str, int] | None = None,
                 progress: bool = False) -> IndexReport:
    """Encode the images under ``images_dir`` that ``index_dir`` does not hold yet and save.

    A new index gets ``kind`` (default "flat") and ``params``. An existing one must have been
    made with the same config and weights (IndexMismatchError otherwise); a different ``kind``
    or ``params`` rebuilds its faiss index from the stored features without re-encoding.
    Unreadable images are skipped and listed in the report and the manifest ("skipped"); they
    are tried again on the next run.
    """
    chash, whash = config_hash(cfg), weights_hash(encoder.model.state_dict())
    paths = list_images(images_dir, absolute=True, what="--images")
    gi: GalleryIndex | None = None
    rebuilt = False
    if GalleryIndex.exists(index_dir):
        gi = GalleryIndex.load(index_dir, chash, whash)
        new_kind = kind or gi.kind
        new_params = {**(gi.params if new_kind == gi.kind else {}), **(params or {})}
        if new_kind != gi.kind or any(gi.params.get(k) != v for k, v in new_params.items()):
            logger.info("rebuilding the %s index as %s %s", gi.kind, new_kind, new_params)
            gi = GalleryIndex(dim=gi.dim, config_hash=chash, weights_hash=whash, kind=new_kind,
                              params=new_params, files=gi.files, features=gi.features, info=gi.info)
            rebuilt = True
    todo = gi.missing(paths) if gi is not None else list(dict.fromkeys(paths))
    enc = encoder.encode_images(todo, progress=progress)
    if gi is None:
        if not len(enc.paths):
            raise ValueError(f"--images {images_dir}: no readable image among {len(paths)} files "
                             f"(extensions {', '.join(e for e in ('jpg', 'jpeg', 'png', 'bmp', 'webp'))})")
        gi = GalleryIndex(dim=enc.features.shape[1], config_hash=chash, weights_hash=whash,
                          kind=kind or "flat", params=params or {},
                          info={"weights": str(encoder.cfg.MODEL.WEIGHTS or ""),
                                "meta_architecture": encoder.cfg.MODEL.META_ARCHITECTURE})
    gi.add(enc.paths, enc.features)
    gi.skipped = enc.skipped
    gi.save(index_dir)
    return IndexReport(found=len(paths), encoded=len(enc.paths), skipped=enc.skipped, total=len(gi),
                       rebuilt=rebuilt)


def search_texts(encoder: SearchEncoder, gallery: GalleryIndex, texts: Sequence[str], topk: int,
                 names: Sequence[str] | None = None) -> list[QueryResult]:
    """Encode ``texts`` and return their top-``topk`` gallery entries, best first.

    ``names`` (default ``gallery.files``) gives what each hit's ``path`` shows.
    """
    enc = encoder.encode_texts(texts)
    scores, ids = gallery.search(enc.features, topk)
    names = gallery.files if names is None else names
    results = []
    for text, n, cut, srow, irow in zip(texts, enc.num_tokens, enc.truncated, scores, ids):
        hits = [Hit(path=names[int(i)], score=float(s), rank=r + 1)
                for r, (s, i) in enumerate(zip(srow, irow)) if i >= 0]
        results.append(QueryResult(query=text, hits=hits, truncated=cut, num_tokens=n))
    return results


@torch.no_grad()
def dataset_gallery(encoder: SearchEncoder, cfg: Any, dataset_name: str) -> GalleryIndex:
    """An in-memory exact index of a registered dataset's test gallery (every test image once).

    Uses ``build_t2i_test_loader(cfg, dataset_name)``: its image batches ("images", "img_ids")
    are encoded (the caption batches are not used); hits show the gallery image paths.
    """
    loader, _ = build_t2i_test_loader(cfg, dataset_name)
    feats, img_ids = [], []
    for batch in loader:
        if "images" not in batch:
            continue
        feats.append(encoder.encode_image_tensor(batch["images"]))
        img_ids.extend(int(i) for i in batch["img_ids"])
    if not feats:
        raise ValueError(f"dataset {dataset_name}: its test loader yielded no gallery image")
    names = _gallery_names(loader.dataset, img_ids, dataset_name)
    features = np.concatenate(feats, axis=0)
    gi = GalleryIndex(dim=features.shape[1], config_hash=config_hash(cfg),
                      weights_hash=weights_hash(encoder.model.state_dict()), kind="flat")
    gi.add(names, features)
    return gi


def _gallery_names(dataset: Any, img_ids: Sequence[int], dataset_name: str) -> list[str]:
    """Image paths for the loader's ``img_ids``: the test set's ``gallery`` holds
    ``(path, person id, image id)`` tuples; ``<dataset>:<img_id>`` when it exposes none."""
    gallery = getattr(dataset, "gallery", None) or []
    by_id = {int(item[2]): str(item[0]) for item in gallery}
    return [by_id.get(int(i), f"{dataset_name}:{int(i)}") for i in img_ids]
