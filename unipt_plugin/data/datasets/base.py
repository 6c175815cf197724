"""``TextImageDataset``: parses a raw text-image ReID annotation file into train / query / gallery.

A subclass names its folder under the datasets root, its annotation file, the key of the image
path and which splits are its training and test splits (datasets/README.md). Construction
reads and validates everything; the results are ``PackedItems`` (unipt_plugin/data/serialize.py:
read-only sequences of tuples in flat buffers, so that DataLoader workers do not copy them;
they iterate, index, unpack and compare with ``==`` like lists of tuples):

- ``train``: one item per caption, ``(img_path, caption, pid, image_id)`` with ``pid``
  relabelled to 0..C-1 in sorted raw-id order and ``image_id`` the index of the image among the
  training images (0..N-1, order of first appearance).
- ``query``: one item per test caption, ``(caption, raw_pid)``.
- ``gallery``: each test image once, ``(img_path, raw_pid, image_id)``, image_id = its index
  in the gallery.

Listed images are checked according to DATASETS.VERIFY_IMAGES (or the ``verify_images``
argument): "full" (default) = every listed image of the used splits must exist as a file,
checked with one ``os.scandir`` per distinct folder and set membership (no ``os.stat`` per
image); "lazy" = not checked; a missing image is then an error naming the file when it is
first read. Empty (0-byte) files are not detected at construction (that would take one
``stat`` per image): ``read_image`` refuses them, naming the file, when they are loaded.

Errors are explicit: a missing root / folder / annotation file / image names the path and the
expected layout; malformed JSON names the file, line and column (a UTF-8 byte-order mark is
accepted); a bad entry names the file, the entry index, the field, its value and what was
expected. Person ids must be non-negative integers (any gaps: training ids are relabelled to
0..C-1; a negative id such as -1, the "junk / distractor" label of other ReID formats, is
refused rather than turned into one identity). Empty or whitespace-only captions are skipped
and counted in one warning. Image paths are compared after ``os.path.normpath`` ("a/./b.png"
and "a/b.png" are one file). An image listed twice in a split is one image (captions merged; a
caption repeated verbatim for the same image is kept once, counted in one warning); listed
twice with two different ids is an error. An image listed in both the training and the test
split is kept in both, with a warning (train/test overlap).

Construction runs with Python's cyclic garbage collector paused (it builds millions of small
acyclic objects, and collecting them while they are built costs more than the parsing); a
construction that takes longer than a few seconds shows its progress (a tqdm bar on a
terminal, otherwise a log line every 10 s).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import json
import logging
import os
import sys
import time
from array import array
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from tabulate import tabulate
from termcolor import colored
from tqdm import tqdm

from ..serialize import GALLERY_ITEM, QUERY_ITEM, TRAIN_ITEM, PackedItems

__all__ = ["TextImageDataset", "DatasetFormatError", "TrainItem", "QueryItem", "GalleryItem", "VERIFY_MODES",
           "resolve_verify_mode"]

logger = logging.getLogger(__name__)

TrainItem = tuple[str, str, int, int]  # (img_path, caption, pid 0..C-1, image_id)
QueryItem = tuple[str, int]  # (caption, raw pid)
GalleryItem = tuple[str, int, int]  # (img_path, raw pid, image_id)

#: values of DATASETS.VERIFY_IMAGES
VERIFY_MODES = ("full", "lazy")

_MAX_LISTED = 5
_PROGRESS_DELAY_S = 3.0
_PROGRESS_LOG_EVERY_S = 10.0
_PROGRESS_STEP = 1 << 16  # entries between two progress updates


def _listed(indices: list[int]) -> str:
    """"[3, 8, 12]" or, beyond _MAX_LISTED, "[3, 8, 12, 20, 31, ...]"."""
    shown = ", ".join(str(i) for i in indices[:_MAX_LISTED])
    return f"[{shown}{', ...' if len(indices) > _MAX_LISTED else ''}]"


def resolve_verify_mode(cfg: Any = None, verify_images: bool | str | None = None) -> str:
    """The image-check mode, "full" or "lazy": ``verify_images`` when given (True = "full",
    False = "lazy", or the mode itself), else cfg.DATASETS.VERIFY_IMAGES, else "full".

    Raises:
        ValueError: any other value, naming DATASETS.VERIFY_IMAGES and the allowed values.
    """
    if verify_images is None:
        value = getattr(getattr(cfg, "DATASETS", None), "VERIFY_IMAGES", "full")
    elif isinstance(verify_images, bool):
        value = "full" if verify_images else "lazy"
    else:
        value = verify_images
    if not isinstance(value, str) or value not in VERIFY_MODES:
        raise ValueError(f"DATASETS.VERIFY_IMAGES = {value!r}: expected one of {list(VERIFY_MODES)} "
                         "(\"full\": every listed image must exist when the dataset is built; \"lazy\": not "
                         "checked, a missing image is an error when it is first read)")
    return value


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (restored on exit, also on an exception)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _release_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Parsing frees hundreds of MiB of small blocks that glibc would otherwise keep mapped (and
    counted in the process's resident memory) after the dataset is built."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: libc's, where it is glibc
    except (OSError, AttributeError, TypeError):
        pass


class _Progress:
    """Progress of one long construction step, shown only once it has taken ``_PROGRESS_DELAY_S``:
    a tqdm bar when stderr is a terminal, otherwise an INFO log line every ``_PROGRESS_LOG_EVERY_S``."""

    def __init__(self, desc: str, total: int, unit: str) -> None:
        self.desc, self.total, self.unit = desc, int(total), unit
        self.start = self.last_log = time.monotonic()
        self.bar: Any = None

    def update_to(self, done: int) -> None:
        now = time.monotonic()
        if now - self.start < _PROGRESS_DELAY_S:
            return
        if sys.stderr is not None and sys.stderr.isatty():
            if self.bar is None:
                self.bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, unit_scale=True, leave=False,
                                mininterval=0.5)
            self.bar.update(done - self.bar.n)
        elif now - self.last_log >= _PROGRESS_LOG_EVERY_S or self.last_log == self.start:
            self.last_log = now
            logger.info("%s: %d / %d %s (%.0f%%, %.0f s)", self.desc, done, self.total, self.unit,
                        100.0 * done / max(1, self.total), now - self.start)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.total - self.bar.n)
            self.bar.close()
            self.bar = None


def _is_valid_id(pid: Any) -> bool:
    """A non-negative int that is not a bool."""
    return (type(pid) is int or (isinstance(pid, int) and not isinstance(pid, bool))) and pid >= 0


class DatasetFormatError(ValueError):
    """An annotation file whose content does not follow the dataset's raw format."""


class SplitImages:
    """The images of one split in order of first appearance, as parallel columns.

    Attributes:
        index: image path -> position (paths are unique; a packed layout, whose row references
            are unique by construction, may leave it empty).
        paths: image path of each image (absolute or relative to the working directory, after
            normpath; a packed layout's row reference, see ``arrow_layout``).
        pids: raw person id of each image (int64 ``array`` or numpy array; -1 where the format
            has none).
        entries: index of the first annotation entry / row that lists the image (for errors;
            int64 ``array`` or numpy array).
        captions: the image's non-empty, stripped, distinct captions, in file order.
    """

    __slots__ = ("index", "paths", "pids", "entries", "captions")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.paths: list[str] = []
        self.pids = array("q")
        self.entries = array("q")
        self.captions: list[list[str]] = []

    def __len__(self) -> int:
        return len(self.paths)


class _CaptionCounts:
    """Counts (and first entry indices) of skipped empty and repeated captions, for one warning each."""

    __slots__ = ("empty", "empty_entries", "repeated", "repeated_entries")

    def __init__(self) -> None:
        self.empty = 0
        self.empty_entries: list[int] = []
        self.repeated = 0
        self.repeated_entries: list[int] = []


class TextImageDataset:
    """Base class of the text-image ReID datasets; see the module docstring.

    Args:
        root: folder holding one sub-folder per dataset (cfg.DATASETS.ROOT).
        cfg: the config (DATASETS.VERIFY_IMAGES; subclasses read their own keys, e.g.
            LUPerson-T); may be None.
        verify_images: overrides DATASETS.VERIFY_IMAGES: "full" / "lazy", or True / False
            for the same; None (default) = the config's value ("full" without a config).
    """

    #: sub-folder of ``root``
    folder: str = ""
    #: annotation file inside the dataset folder
    annotation_file: str = ""
    #: key of the image path in each entry
    path_key: str = "file_path"
    #: key of the split; None = every entry belongs to ``train_split``
    split_key: str | None = "split"
    #: split values present in the raw file
    known_splits: tuple[str, ...] = ("train", "val", "test")
    #: split used for training items (None = no training items)
    train_split: str | None = "train"
    #: split used for query / gallery (None = no test items)
    test_split: str | None = "test"
    #: key of the person id; None = every image is its own identity (pid = image index)
    id_key: str | None = "id"
    #: sub-folder of the dataset folder holding the images
    image_subdir: str = "imgs"
    #: one example entry, shown in errors
    example_entry: str = ""
    #: what the annotation file's records are called in warnings
    _entry_noun: str = "entries"

    def __init__(self, root: str, cfg: Any = None, verify_images: bool | str | None = None, **kwargs: Any) -> None:
        self.root = root
        self.cfg = cfg
        self.name = type(self).__name__
        self.verify_mode = resolve_verify_mode(cfg, verify_images)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{self.name}: datasets root {root!r} (DATASETS.ROOT) does not exist; "
                                    f"expected layout:\n{self.expected_layout()}")
        self.dataset_dir = os.path.join(root, self.folder)
        self.annotation_path = self.resolve_annotation_path()
        self.image_dir = self.resolve_image_dir()
        if not os.path.isdir(self.dataset_dir) and not os.path.isfile(self.annotation_path):
            raise FileNotFoundError(f"{self.name}: dataset folder {self.dataset_dir!r} does not exist; "
                                    f"expected layout:\n{self.expected_layout()}")
        if not os.path.isfile(self.annotation_path):
            raise FileNotFoundError(f"{self.name}: annotation file {self.annotation_path!r} does not exist; "
                                    f"expected layout:\n{self.expected_layout()}")
        if self.uses_image_dir() and not os.path.isdir(self.image_dir):
            raise FileNotFoundError(f"{self.name}: image folder {self.image_dir!r} does not exist; "
                                    f"expected layout:\n{self.expected_layout()}")

        start = time.monotonic()
        with _gc_paused():
            splits = self.read_splits()
            used = [s for s in (self.train_split, self.test_split) if s is not None]
            for split in used:
                if not splits.get(split):
                    found = {k: len(v) for k, v in splits.items()}
                    raise DatasetFormatError(
                        f"{self.name}: split {split!r} of {self.annotation_path} has no images "
                        f"(images per split found: {found}); expected entries like {self.example_entry}")
            self.num_split_overlap = 0
            if len(used) == 2 and used[0] != used[1]:
                self._warn_split_overlap(splits[used[0]], splits[used[1]], used[0], used[1])
            if self.verify_mode == "full":
                self.verify_images([splits[s] for s in dict.fromkeys(used)])

            self.train = PackedItems.from_rows([], TRAIN_ITEM)
            self.num_train_images = 0
            self.num_classes = 0
            if self.train_split is not None:
                self.train, self.num_train_images, self.num_classes = self._build_train(splits[self.train_split])
                if not self.train:
                    raise DatasetFormatError(f"{self.name}: split {self.train_split!r} of {self.annotation_path} "
                                             "has images but no non-empty caption")
            self.query = PackedItems.from_rows([], QUERY_ITEM)
            self.gallery = PackedItems.from_rows([], GALLERY_ITEM)
            if self.test_split is not None:
                self.query, self.gallery = self._build_test(splits[self.test_split])
                if not self.query:
                    raise DatasetFormatError(f"{self.name}: split {self.test_split!r} of {self.annotation_path} "
                                             "has images but no non-empty caption (no queries)")
            del splits
        _release_freed_memory()
        seconds = time.monotonic() - start
        logger.log(logging.INFO if seconds >= _PROGRESS_DELAY_S else logging.DEBUG,
                   "%s: %d training items, %d queries, %d gallery images from %s in %.1f s "
                   "(DATASETS.VERIFY_IMAGES = %r; items hold %.1f MiB)", self.name, len(self.train), len(self.query),
                   len(self.gallery), self.annotation_path, seconds, self.verify_mode,
                   (self.train.nbytes + self.query.nbytes + self.gallery.nbytes) / 2 ** 20)

    # ------------------------------------------------------------------ overridable paths and layout
    def resolve_annotation_path(self) -> str:
        return os.path.join(self.dataset_dir, self.annotation_file)

    def resolve_image_dir(self) -> str:
        return os.path.join(self.dataset_dir, self.image_subdir)

    def uses_image_dir(self) -> bool:
        """Whether images are files under ``image_dir`` (False for a packed layout)."""
        return True

    def expected_layout(self) -> str:
        return (f"  <DATASETS.ROOT>/{self.folder}/{self.annotation_file}\n"
                f"  <DATASETS.ROOT>/{self.folder}/{self.image_subdir}/<{self.path_key} of each entry>\n"
                f"  with {self.annotation_file} a JSON list of entries like {self.example_entry}\n"
                "  (see datasets/README.md)")

    def read_splits(self) -> dict[str, SplitImages]:
        """Read and validate the annotation file -> {split: its images}. Default: the JSON list."""
        return self._parse(self._load_json())

    # ------------------------------------------------------------------ parsing
    def _load_json(self) -> list:
        path = self.annotation_path
        try:
            with open(path, "r", encoding="utf-8-sig") as f:  # a byte-order mark is not an error
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetFormatError(f"{self.name}: malformed JSON in {path} at line {e.lineno}, column {e.colno}: "
                                     f"{e.msg}") from e
        except UnicodeDecodeError as e:
            raise DatasetFormatError(f"{self.name}: {path} is not UTF-8 text ({e})") from e
        if not isinstance(data, list):
            raise DatasetFormatError(f"{self.name}: {path} holds a JSON {type(data).__name__}; expected a list of "
                                     f"entries like {self.example_entry}")
        return data

    def _field(self, entry: dict, index: int, key: str) -> Any:
        if key not in entry:
            raise DatasetFormatError(
                f"{self.name}: entry {index} of {self.annotation_path} has no field {key!r} "
                f"(its keys: {sorted(entry)}); expected entries like {self.example_entry}")
        return entry[key]

    def _bad(self, index: int, key: str, value: Any, expected: str) -> DatasetFormatError:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return DatasetFormatError(f"{self.name}: entry {index} of {self.annotation_path}: field {key!r} is {shown}; "
                                  f"expected {expected}")

    def _check_entry(self, entry: Any, index: int) -> None:
        """Raise the error of an entry that the fast path of ``_parse`` refused (same checks, in order)."""
        if not isinstance(entry, dict):
            raise DatasetFormatError(f"{self.name}: entry {index} of {self.annotation_path} is a "
                                     f"{type(entry).__name__}; expected an object like {self.example_entry}")
        if self.split_key is not None:
            split = self._field(entry, index, self.split_key)
            if split not in self.known_splits:
                raise self._bad(index, self.split_key, split, f"one of {list(self.known_splits)}")
        rel = self._field(entry, index, self.path_key)
        if not isinstance(rel, str) or not rel.strip():
            raise self._bad(index, self.path_key, rel, "a non-empty relative image path (string)")
        captions = self._field(entry, index, "captions")
        if not isinstance(captions, list):
            raise self._bad(index, "captions", captions, "a list of strings")
        if self.id_key is not None:
            pid = self._field(entry, index, self.id_key)
            if isinstance(pid, bool) or not isinstance(pid, int):
                raise self._bad(index, self.id_key, pid, "an integer person id")
            if pid < 0:
                raise self._bad(index, self.id_key, pid,
                                "a non-negative integer person id (negative ids such as -1 mark junk / "
                                "distractor images in other ReID formats; this format has none)")
        raise AssertionError(f"entry {index} passed every check")  # pragma: no cover

    def _add_image(self, images: SplitImages, path: str, pid: int, index: int, shown: str) -> list[str]:
        """Position of ``path`` in ``images`` (added when new) -> its caption list.

        ``shown``: how the image is named in an error (its path as written in the file)."""
        at = images.index.get(path)
        if at is None:
            images.index[path] = len(images.paths)
            images.paths.append(path)
            images.pids.append(pid)
            images.entries.append(index)
            caps: list[str] = []
            images.captions.append(caps)
            return caps
        if images.pids[at] != pid:
            raise DatasetFormatError(
                f"{self.name}: image {shown!r} appears in entries {images.entries[at]} and {index} of "
                f"{self.annotation_path} with two ids ({images.pids[at]} and {pid}); expected one id per image")
        return images.captions[at]

    def _add_captions(self, caps: list[str], captions: Sequence[Any], index: int, counts: _CaptionCounts) -> None:
        """Append the stripped, non-empty captions of entry ``index`` not yet in ``caps``."""
        for c_index, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise self._bad(index, f"captions[{c_index}]", caption, "a string")
            caption = caption.strip()
            if not caption:
                counts.empty += 1
                if index not in counts.empty_entries[-1:]:
                    counts.empty_entries.append(index)
            elif caption in caps:
                counts.repeated += 1
                if index not in counts.repeated_entries[-1:]:
                    counts.repeated_entries.append(index)
            else:
                caps.append(caption)

    def _report_captions(self, counts: _CaptionCounts) -> None:
        if counts.empty:
            logger.warning("%s: skipped %d empty or whitespace-only caption(s) in %s (%s %s)",
                           self.name, counts.empty, self.annotation_path, self._entry_noun,
                           _listed(counts.empty_entries))
        if counts.repeated:
            logger.warning("%s: skipped %d caption(s) repeated verbatim for the same image in %s (%s %s); "
                           "each is kept once", self.name, counts.repeated, self.annotation_path, self._entry_noun,
                           _listed(counts.repeated_entries))
        self.num_empty_captions = counts.empty
        self.num_repeated_captions = counts.repeated

    def _parse(self, entries: list) -> dict[str, SplitImages]:
        """Validate every entry -> {split: SplitImages} (order of first appearance = file order).

        One pass with the common case (a new image with one caption) inlined; an entry that
        fails any check goes through ``_check_entry``, which raises the error naming the entry,
        field and value. ``entries`` is consumed: each is set to None once read, so that the
        parsed JSON is freed while the images are collected (a lower peak of memory).
        """
        splits: dict[str, SplitImages] = {}
        counts = _CaptionCounts()
        split_key, path_key, id_key = self.split_key, self.path_key, self.id_key
        known = self.known_splits
        fixed_split = (self.train_split or "train") if split_key is None else None
        # os.path.join(image_dir, p) for a relative p, without the call
        base = self.image_dir if not self.image_dir or self.image_dir.endswith("/") else self.image_dir + "/"
        normpath = os.path.normpath
        progress = _Progress(f"{self.name}: parsing {os.path.basename(self.annotation_path)}", len(entries),
                             "entries")
        current = None  # the split whose columns are bound below
        images = index_get = index_set = paths_append = pids_append = entries_append = captions_append = None
        for index, entry in enumerate(entries):
            if not index & (_PROGRESS_STEP - 1):
                progress.update_to(index)
            try:
                split = fixed_split if split_key is None else entry[split_key]
                rel = entry[path_key]
                captions = entry["captions"]
                pid = -1 if id_key is None else entry[id_key]
            except (KeyError, TypeError):
                self._check_entry(entry, index)
            if (type(entry) is not dict and not isinstance(entry, dict)) \
                    or (fixed_split is None and split not in known) \
                    or not isinstance(rel, str) or not rel or rel.isspace() \
                    or not isinstance(captions, list) \
                    or (id_key is not None and not _is_valid_id(pid)):
                self._check_entry(entry, index)
            entries[index] = None
            if split != current:
                images = splits.get(split)
                if images is None:
                    images = splits[split] = SplitImages()
                index_get, index_set = images.index.get, images.index.__setitem__
                paths_append, pids_append = images.paths.append, images.pids.append
                entries_append, captions_append = images.entries.append, images.captions.append
                current = split
            # normpath changes only paths with "." / ".." components, "//" or a trailing "/"
            norm = normpath(rel) if rel[0] == "." or "/." in rel or "//" in rel or rel[-1] == "/" else rel
            path = norm if norm[0] == "/" else base + norm
            at = index_get(path)
            if at is not None:  # listed before: same id, merge the captions
                caps = self._add_image(images, path, pid, index, rel)
            else:
                index_set(path, len(images.paths))
                paths_append(path)
                pids_append(pid)
                entries_append(index)
                if len(captions) == 1 and type(captions[0]) is str:  # the common case
                    caption = captions[0].strip()
                    if caption:
                        captions_append([caption])
                        continue
                caps = []
                captions_append(caps)
            self._add_captions(caps, captions, index, counts)
        progress.close()
        self._report_captions(counts)
        return splits

    def _warn_split_overlap(self, first: SplitImages, second: SplitImages, first_name: str, second_name: str) -> None:
        """Log one warning when images are listed in both used splits (kept in both)."""
        other = second.index if len(second.index) == len(second) else set(second.paths)
        shared = [path for path in first.paths if path in other]
        self.num_split_overlap = len(shared)
        if shared:
            shown = ", ".join(repr(os.path.relpath(p, self.image_dir)) for p in shared[:_MAX_LISTED])
            logger.warning("%s: %d image(s) of %s are listed in both split %r and split %r (e.g. %s%s); they are "
                           "kept in both, so the test split overlaps the training data",
                           self.name, len(shared), self.annotation_path, first_name, second_name, shown,
                           ", ..." if len(shared) > _MAX_LISTED else "")

    # ------------------------------------------------------------------ image check (DATASETS.VERIFY_IMAGES "full")
    def verify_images(self, splits: Sequence[SplitImages]) -> None:
        """Refuse images of ``splits`` that are missing (FileNotFoundError naming them).

        Each distinct folder is listed once (``os.scandir``); an image is present when its name
        is in its folder's listing as a regular file or a symbolic link to one. Paths listed in
        several splits are checked once; the count in the error is over the distinct paths.
        """
        paths: Sequence[str] = splits[0].paths
        if len(splits) > 1:
            paths = list(dict.fromkeys(itertools.chain.from_iterable(s.paths for s in splits)))
        by_folder: dict[str, list[str]] = {}  # "folder/" -> names listed in it
        for p in paths:
            cut = p.rfind("/") + 1
            names = by_folder.get(p[:cut])
            if names is None:
                names = by_folder[p[:cut]] = []
            names.append(p[cut:])
        progress = _Progress(f"{self.name}: checking images", len(by_folder), "folders")
        missing: set[str] = set()
        for done, (folder, names) in enumerate(by_folder.items()):
            progress.update_to(done)
            try:
                with os.scandir(folder or ".") as listing:
                    present = {e.name for e in listing if e.is_file()}
            except OSError:  # no such folder, not a folder, not readable: all its images are missing
                present = set()
            missing.update(folder + n for n in names if n not in present)
        progress.close()
        if missing:
            listed = [p for p in paths if p in missing]
            shown = "\n".join(f"    {p}" for p in listed[:_MAX_LISTED])
            raise FileNotFoundError(
                f"{self.name}: {len(listed)} of the {len(paths)} images listed in {self.annotation_path} "
                f"(field {self.path_key!r}) are missing under {self.image_dir}, e.g.:\n{shown}\n"
                f"expected layout:\n{self.expected_layout()}\n"
                "(DATASETS.VERIFY_IMAGES = \"full\" checks every listed image when the dataset is built; "
                "\"lazy\" skips the check, and a missing image is then an error when it is first read)")

    # ------------------------------------------------------------------ items
    def _build_train(self, images: SplitImages) -> tuple[PackedItems, int, int]:
        """One item per caption of the images that have one, grouped by image in image order."""
        counts = np.fromiter(map(len, images.captions), dtype=np.int64, count=len(images))
        with_text = np.flatnonzero(counts)
        num = len(with_text)
        if self.id_key is None:
            labels = np.arange(num, dtype=np.int64)
            num_classes = num
        else:
            raw = np.asarray(images.pids, dtype=np.int64)[with_text]
            uniq, labels = np.unique(raw, return_inverse=True)  # sorted raw-id order -> 0..C-1
            num_classes = len(uniq)
        captions = list(itertools.chain.from_iterable(images.captions))  # images without text add none
        if len(captions) == len(images):  # one caption per image, the common case
            paths = images.paths
        else:
            paths = list(itertools.chain.from_iterable(map(itertools.repeat, images.paths, counts.tolist())))
        counts = counts[with_text]
        columns = [paths, captions, np.repeat(labels, counts), np.repeat(np.arange(num, dtype=np.int64), counts)]
        return PackedItems.from_columns(columns, TRAIN_ITEM), num, num_classes

    def _build_test(self, images: SplitImages) -> tuple[PackedItems, PackedItems]:
        """Queries: one per caption, in image order; gallery: every image once (captions or not)."""
        pids = np.array(images.pids, dtype=np.int64)
        counts = np.fromiter(map(len, images.captions), dtype=np.int64, count=len(images))
        query = PackedItems.from_columns(
            [list(itertools.chain.from_iterable(images.captions)), np.repeat(pids, counts)], QUERY_ITEM)
        gallery = PackedItems.from_columns([images.paths, pids, np.arange(len(images), dtype=np.int64)],
                                           GALLERY_ITEM)
        return query, gallery

    # ------------------------------------------------------------------ statistics (fast-reid style)
    def _log_table(self, rows: list[list[Any]]) -> None:
        headers = ["subset", "# ids", "# images", "# captions"]
        table = tabulate(rows, tablefmt="pipe", headers=headers, numalign="left")
        logger.info(f"=> Loaded {self.name}:\n" + colored(table, "cyan"))

    def train_statistics(self) -> list[Any]:
        return ["train", self.num_classes, self.num_train_images, len(self.train)]

    def test_statistics(self) -> list[list[Any]]:
        num_query_ids = len(np.unique(self.query.int_column(1))) if len(self.query) else 0
        num_gallery_ids = len(np.unique(self.gallery.int_column(1))) if len(self.gallery) else 0
        return [["query", num_query_ids, "-", len(self.query)],
                ["gallery", num_gallery_ids, len(self.gallery), "-"]]

    def show_train(self) -> None:
        """Log the training split's table: ids, images, captions."""
        self._log_table([self.train_statistics()])

    def show_test(self) -> None:
        """Log the test split's table: query ids / captions, gallery ids / images."""
        self._log_table(self.test_statistics())
