"""A gallery of image features on disk: a faiss index, the features, and a JSON manifest.

Layout of an index folder::

    manifest.json          # the commit point: files, entries, sources, hashes, kind, parameters,
                           #  data file names
    index.<gen>.faiss      # the faiss index of generation <gen>
    features.<gen>.npy     # (N, D) float32 features in manifest order (the index can be rebuilt
                           #  from them, e.g. with another kind, without re-encoding)
    crops/<xx>/<name>.jpg  # person crops cut from scene photos and video frames (the files of
                           #  their entries; written before the manifest that lists them)

Manifest format 2 (format 1, files only, is still read: its entries are whole image files):

* ``files[i]``: the image of row ``i`` (what was encoded): a crop under the folder, written
  relative to it (``crops/...``; absolute again once loaded, so the folder may be moved), or an
  absolute path of an image indexed whole;
* ``entries[i]``: ``null`` for an image indexed whole (detector ``none``), else
  ``{"source", "frame", "time_s", "box", "det_score"}``: the photo or video it was cut from,
  the 0-based frame index and its time in seconds (videos; null for photos), the box
  ``[x, y, w, h]`` in source pixels and the detector's score;
* ``sources``: per scene photo or video that was completely processed, ``{"kind", "detector",
  "entries", ...}``: what ``index`` skips on the next run (images indexed whole are skipped by
  being in ``files``).

File names that are not valid UTF-8 are written as ``\\udcXX`` escapes (see
``unipt_plugin.data.image_files.json_dumps``) and read back unchanged.

Every save writes a new generation's data files (each through ``atomic_open``) and then
replaces ``manifest.json`` atomically; only after that are the previous generation's files
deleted. A save interrupted at any point therefore leaves the previous manifest pointing at the
previous, complete files: the index on disk is always the old one or the new one, never a mix.

Kinds (faiss, inner product on L2-normalised features = cosine):

* ``flat``: ``IndexFlatIP``, exact (default).
* ``ivf``: ``IndexIVFFlat`` with ``nlist`` lists (trained by k-means on the gallery) and
  ``nprobe`` lists scanned per query.
* ``hnsw``: ``IndexHNSWFlat`` with ``hnsw_m`` links per node, ``ef_construction`` and
  ``ef_search`` beam widths.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from ..data.image_files import json_dumps
from ..utils.io import atomic_open

logger = logging.getLogger(__name__)

__all__ = ["GalleryIndex", "IndexMismatchError", "build_faiss_index", "factory_string", "DEFAULT_PARAMS",
           "KINDS"]

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
#: manifest versions :meth:`GalleryIndex.load` reads
READABLE_VERSIONS = (1, 2)
#: keys of an entry's metadata (``entries[i]``; the ``render.Hit`` fields of the same names)
ENTRY_FIELDS = ("source", "frame", "time_s", "box", "det_score")
KINDS = ("flat", "ivf", "hnsw")
# Defaults of every kind's parameters (the CLI flags document them).
DEFAULT_PARAMS: dict[str, dict[str, int]] = {
    "flat": {},
    "ivf": {"nlist": 1024, "nprobe": 32},
    "hnsw": {"hnsw_m": 32, "ef_construction": 80, "ef_search": 64},
}
# faiss wants about 39 training points per IVF list; fewer lists are used on small galleries.
IVF_MIN_POINTS_PER_LIST = 39


class IndexMismatchError(RuntimeError):
    """The index was made with another model config or other weights than the ones given."""


def factory_string(kind: str, params: dict[str, int]) -> str:
    """The ``faiss.index_factory`` description of ``kind`` with ``params`` ("Flat", "IVF1024,Flat", "HNSW32")."""
    if kind == "flat":
        return "Flat"
    if kind == "ivf":
        return f"IVF{int({**DEFAULT_PARAMS['ivf'], **params}['nlist'])},Flat"
    if kind == "hnsw":
        return f"HNSW{int({**DEFAULT_PARAMS['hnsw'], **params}['hnsw_m'])}"
    raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(KINDS)}")


def build_faiss_index(dim: int, kind: str, params: dict[str, int]) -> faiss.Index:
    """An empty inner-product faiss index of ``kind`` ("flat", "ivf", "hnsw") for ``dim``-d vectors,
    made by ``faiss.index_factory`` from :func:`factory_string`, with its search parameters set.

    An "ivf" index must be trained before vectors are added.
    """
    index = faiss.index_factory(int(dim), factory_string(kind, params), faiss.METRIC_INNER_PRODUCT)
    p = {**DEFAULT_PARAMS[kind], **params}
    if kind == "hnsw":
        index.hnsw.efConstruction = int(p["ef_construction"])
    _set_search_params(index, kind, p)
    return index


def _set_search_params(index: faiss.Index, kind: str, params: dict[str, int]) -> None:
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    elif kind == "hnsw":
        index.hnsw.efSearch = int(params["ef_search"])


@dataclass
class GalleryIndex:
    """Image paths, their features (N, D) and a faiss index over them, with provenance hashes.

    ``files[i]`` is the path (absolute once saved and loaded) of the image of row ``i`` of
    ``features`` and of faiss id ``i``; ``entries[i]`` its metadata (None for an image indexed
    whole, else a dict of :data:`ENTRY_FIELDS`); ``sources`` the completely processed scene
    photos and videos (see the module docstring).
    """

    dim: int
    config_hash: str
    weights_hash: str
    kind: str = "flat"
    params: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    features: np.ndarray | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    entries: list[dict[str, Any] | None] = field(default_factory=list)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    _index: faiss.Index | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown index kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        self.params = {**DEFAULT_PARAMS[self.kind], **{k: int(v) for k, v in self.params.items()}}
        if self.features is None:
            self.features = np.zeros((0, self.dim), dtype=np.float32)
        if not self.entries:
            self.entries = [None] * len(self.files)
        if len(self.entries) != len(self.files):
            raise ValueError(f"{len(self.entries)} entries for {len(self.files)} files")

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self.files)

    def missing(self, paths: Sequence[str]) -> list[str]:
        """The paths of ``paths`` not in the index yet (order kept, duplicates dropped)."""
        present = set(self.files)
        out: list[str] = []
        for p in paths:
            if p not in present:
                present.add(p)
                out.append(p)
        return out

    def add(self, paths: Sequence[str], features: np.ndarray,
            entries: Sequence[dict[str, Any] | None] | None = None) -> None:
        """Append ``paths`` with their ``features`` (len(paths), D) float32 and ``entries``
        (metadata dicts of :data:`ENTRY_FIELDS`, or None per image indexed whole; default all None).

        Raises ValueError on a shape mismatch or a path already present.
        """
        if not len(paths) and features.size == 0:
            return
        entries = [None] * len(paths) if entries is None else list(entries)
        if len(entries) != len(paths):
            raise ValueError(f"{len(entries)} entries for {len(paths)} paths")
        for e in entries:
            if e is not None and set(e) - set(ENTRY_FIELDS):
                raise ValueError(f"unknown entry fields {sorted(set(e) - set(ENTRY_FIELDS))}; "
                                 f"expected {', '.join(ENTRY_FIELDS)}")
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape != (len(paths), self.dim):
            raise ValueError(f"features of shape {features.shape} for {len(paths)} paths; "
                             f"expected ({len(paths)}, {self.dim})")
        dup = set(paths) & set(self.files)
        if dup or len(set(paths)) != len(paths):
            raise ValueError(f"paths already in the index: {sorted(dup)[:5] or 'duplicates in the input'}")
        self.files.extend(paths)
        self.entries.extend({k: e.get(k) for k in ENTRY_FIELDS} if e is not None else None for e in entries)
        self.features = np.concatenate([self.features, features], axis=0)
        if self._index is not None and self._index.is_trained:
            self._index.add(features)
        else:
            self._index = None  # (re)built lazily from all features

    def rebuild(self) -> faiss.Index:
        """Build the faiss index from all stored features (trains IVF on them)."""
        kind, params, n = self.kind, dict(self.params), len(self.features)
        if kind == "ivf":
            nlist = int(params["nlist"])
            usable = max(1, n // IVF_MIN_POINTS_PER_LIST)
            if nlist > usable:
                logger.warning("IVF: %d features are too few for nlist=%d (faiss wants %d per list); "
                               "using nlist=%d", n, nlist, IVF_MIN_POINTS_PER_LIST, usable)
                params["nlist"] = usable
            params["nprobe"] = min(int(params["nprobe"]), int(params["nlist"]))
        index = build_faiss_index(self.dim, kind, params)
        if kind == "ivf" and n:
            index.train(self.features)
        if n:
            index.add(self.features)
        self.params.update({k: params[k] for k in ("nlist", "nprobe") if k in params})
        self._index = index
        return index

    @property
    def faiss_index(self) -> faiss.Index:
        """The faiss index over all features (built on first use)."""
        if self._index is None or self._index.ntotal != len(self.files):
            self.rebuild()
        return self._index

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the query-time parameters (IVF ``nprobe``, HNSW ``ef_search``)."""
        if nprobe is not None and self.kind == "ivf":
            self.params["nprobe"] = int(nprobe)
        if ef_search is not None and self.kind == "hnsw":
            self.params["ef_search"] = int(ef_search)
        if self._index is not None:
            _set_search_params(self._index, self.kind, self.params)

    def search(self, queries: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``topk`` gallery rows per query by inner product.

        Args:
            queries: (Q, D) float32 query features.
        Returns:
            scores (Q, k) float32 and indices (Q, k) int64 into ``files``, best first;
            k = min(topk, len(self)).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries of shape {queries.shape}; expected (Q, {self.dim})")
        if not len(self):
            raise ValueError("the index is empty")
        k = min(int(topk), len(self))
        index = self.faiss_index
        _set_search_params(index, self.kind, self.params)
        scores, ids = index.search(queries, k)
        return scores, ids

    # ------------------------------------------------------------------ checks
    def check_model(self, config_hash: str, weights_hash: str, location: str = "<memory>") -> None:
        """Raise IndexMismatchError unless both hashes equal the index's."""
        problems = []
        if config_hash != self.config_hash:
            problems.append(f"model config hash {config_hash} != the index's {self.config_hash}")
        if weights_hash != self.weights_hash:
            problems.append(f"weights hash {weights_hash} != the index's {self.weights_hash}")
        if problems:
            raise IndexMismatchError(
                f"index {location} was made with another model: " + "; ".join(problems) + ". "
                f"Its features are not comparable with this model's; query it with the config "
                f"and weights it was built with (see {os.path.join(location, MANIFEST)}) or "
                f"build a new index into another folder.")

    # ------------------------------------------------------------------ disk
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index to ``directory`` atomically (see the module docstring)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        index = self.faiss_index
        gen = uuid.uuid4().hex[:12]
        index_name, feat_name = f"index.{gen}.faiss", f"features.{gen}.npy"
        inside = os.path.realpath(directory) + os.sep
        manifest = {
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "kind": self.kind,
            "params": self.params,
            "config_hash": self.config_hash,
            "weights_hash": self.weights_hash,
            "num_files": len(self.files),
            "index_file": index_name,
            "features_file": feat_name,
            "files": [_relative_to(f, inside) for f in self.files],
            "entries": self.entries,
            "sources": self.sources,
            "skipped": self.skipped,
            "info": self.info,
        }
        old = _read_manifest(directory) if (directory / MANIFEST).is_file() else None
        try:
            with atomic_open(directory / feat_name, "wb") as f:
                np.save(f, self.features)
            with atomic_open(directory / index_name, "wb") as f:
                _write_faiss(index, f)
            _write_manifest(directory / MANIFEST, manifest)  # the commit point
        except BaseException:
            # the previous manifest and its files are untouched; drop this generation's files
            for name in (index_name, feat_name):
                try:
                    (directory / name).unlink()
                except FileNotFoundError:
                    pass
            raise
        if old is not None:
            for name in (old.get("index_file"), old.get("features_file")):
                if name and name not in (index_name, feat_name):
                    try:
                        (directory / name).unlink()
                    except FileNotFoundError:
                        pass
        logger.info("Saved %d features (%s) to %s", len(self), self.kind, directory)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, config_hash: str | None = None,
             weights_hash: str | None = None) -> "GalleryIndex":
        """Read an index folder; when hashes are given, refuse an index of another model.

        Raises:
            FileNotFoundError: no manifest or a data file is missing (names the path).
            IndexMismatchError: ``config_hash`` / ``weights_hash`` differ from the index's.
            ValueError: the manifest is malformed or inconsistent with the data files.
        """
        directory = Path(directory)
        m = _read_manifest(directory)
        version = m.get("format_version", 1) if isinstance(m, dict) else None
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{directory / MANIFEST}: index format_version {version!r}; this version of the "
                             f"tools reads {', '.join(map(str, READABLE_VERSIONS))} (newer tools made it?)")
        try:
            files = [str(f) for f in m["files"]]
            if version >= 2:  # paths relative to the index folder (its crops)
                files = [f if os.path.isabs(f) or f.startswith("arrow:") else os.path.join(os.path.abspath(directory), f)
                         for f in files]
            entries = list(m.get("entries") or [None] * len(files)) if version >= 2 else [None] * len(files)
            gi = cls(dim=int(m["dim"]), config_hash=m["config_hash"], weights_hash=m["weights_hash"],
                     kind=m["kind"], params=dict(m["params"]), files=files,
                     skipped=list(m.get("skipped", [])), info=dict(m.get("info", {})),
                     entries=entries, sources=dict(m.get("sources") or {}) if version >= 2 else {})
            index_file, feat_file = directory / m["index_file"], directory / m["features_file"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{directory / MANIFEST}: malformed manifest ({e!r})") from e
        if config_hash is not None or weights_hash is not None:
            gi.check_model(config_hash if config_hash is not None else gi.config_hash,
                           weights_hash if weights_hash is not None else gi.weights_hash, str(directory))
        for path in (index_file, feat_file):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {directory / MANIFEST} but missing")
        gi.features = np.load(feat_file, allow_pickle=False)
        gi._index = faiss.read_index(str(index_file))
        if gi.features.shape != (len(gi.files), gi.dim) or gi._index.ntotal != len(gi.files):
            raise ValueError(f"{directory}: {len(gi.files)} files in the manifest but features "
                             f"{gi.features.shape} and {gi._index.ntotal} vectors in {index_file.name}")
        return gi

    @staticmethod
    def exists(directory: str | os.PathLike) -> bool:
        """True when ``directory`` holds an index manifest."""
        return (Path(directory) / MANIFEST).is_file()


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no index at {directory}: {MANIFEST} not found "
                                f"(build one with `tools/search.py index`)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _relative_to(path: str, inside: str) -> str:
    """``path`` relative (POSIX) to the folder ``inside`` (real path + separator) when it lies in it."""
    if path.startswith("arrow:") or not os.path.isabs(path):
        return path
    real = os.path.realpath(path)
    return Path(os.path.relpath(real, inside)).as_posix() if real.startswith(inside) else path


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically as UTF-8 JSON (undecodable file names as ``\\udcXX`` escapes)."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(json_dumps(manifest, indent=1))


def _write_faiss(index: faiss.Index, f) -> None:
    """Serialise ``index`` into the open binary file ``f``."""
    f.write(faiss.serialize_index(index).tobytes())
