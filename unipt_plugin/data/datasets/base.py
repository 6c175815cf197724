"""``TextImageDataset``: parses a raw text-image ReID annotation file into train / query / gallery.

A subclass names its folder under the datasets root, its annotation file, the key of the image
path and which splits are its training and test splits (method-notes section 5). Construction
reads and validates everything; the results are plain lists:

- ``train``: one item per caption, ``(img_path, caption, pid, image_id)`` with ``pid``
  relabelled to 0..C-1 in sorted raw-id order and ``image_id`` the index of the image among the
  training images (0..N-1, order of first appearance).
- ``query``: one item per test caption, ``(caption, raw_pid)``.
- ``gallery``: each test image once, ``(img_path, raw_pid, image_id)``, image_id = its index
  in the gallery.

Errors are explicit: a missing root / folder / annotation file / image names the path and the
expected layout; an empty (0-byte) image file is refused at construction like a missing one;
malformed JSON names the file, line and column (a UTF-8 byte-order mark is accepted); a bad
entry names the file, the entry index, the field, its value and what was expected. Person ids
must be non-negative integers (any gaps: training ids are relabelled to 0..C-1; a negative id
such as -1, the "junk / distractor" label of other ReID formats, is refused rather than turned
into one identity). Empty or whitespace-only captions are skipped and counted in one warning.
Image paths are compared after ``os.path.normpath`` ("a/./b.png" and "a/b.png" are one file).
An image listed twice in a split is one image (captions merged; a caption repeated verbatim for
the same image is kept once, counted in one warning); listed twice with two different ids is an
error. An image listed in both the training and the test split is kept in both, with a warning
(train/test overlap).
"""
from __future__ import annotations

import json
import logging
import os
import stat
from collections import OrderedDict
from typing import Any

from tabulate import tabulate
from termcolor import colored

from ..transforms import ImageReadError

__all__ = ["TextImageDataset", "DatasetFormatError", "TrainItem", "QueryItem", "GalleryItem"]

logger = logging.getLogger(__name__)

TrainItem = tuple[str, str, int, int]  # (img_path, caption, pid 0..C-1, image_id)
QueryItem = tuple[str, int]  # (caption, raw pid)
GalleryItem = tuple[str, int, int]  # (img_path, raw pid, image_id)

_MAX_LISTED = 5


def _listed(indices: list[int]) -> str:
    """"[3, 8, 12]" or, beyond _MAX_LISTED, "[3, 8, 12, 20, 31, ...]"."""
    shown = ", ".join(str(i) for i in indices[:_MAX_LISTED])
    return f"[{shown}{', ...' if len(indices) > _MAX_LISTED else ''}]"


class DatasetFormatError(ValueError):
    """An annotation file whose content does not follow the dataset's raw format."""


class _Image:
    """One image of one split with its raw id and its non-empty captions."""

    __slots__ = ("path", "pid", "captions", "entry")

    def __init__(self, path: str, pid: int, entry: int) -> None:
        self.path = path
        self.pid = pid
        self.captions: list[str] = []
        self.entry = entry


class TextImageDataset:
    """Base class of the text-image ReID datasets; see the module docstring.

    Args:
        root: folder holding one sub-folder per dataset (cfg.DATASETS.ROOT).
        cfg: the config (used by subclasses that read keys, e.g. LUPerson-T); may be None.
        verify_images: check at construction that every listed image file exists.
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

    def __init__(self, root: str, cfg: Any = None, verify_images: bool = True, **kwargs: Any) -> None:
        self.root = root
        self.cfg = cfg
        self.name = type(self).__name__
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
        if not os.path.isdir(self.image_dir):
            raise FileNotFoundError(f"{self.name}: image folder {self.image_dir!r} does not exist; "
                                    f"expected layout:\n{self.expected_layout()}")

        entries = self._load_json()
        splits = self._parse(entries)
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
        if verify_images:
            self._verify_images([img.path for s in used for img in splits[s].values()])

        self.train: list[TrainItem] = []
        self.num_train_images = 0
        self.num_classes = 0
        if self.train_split is not None:
            self.train, self.num_train_images, self.num_classes = self._build_train(splits[self.train_split])
            if not self.train:
                raise DatasetFormatError(f"{self.name}: split {self.train_split!r} of {self.annotation_path} "
                                         "has images but no non-empty caption")
        self.query: list[QueryItem] = []
        self.gallery: list[GalleryItem] = []
        if self.test_split is not None:
            self.query, self.gallery = self._build_test(splits[self.test_split])
            if not self.query:
                raise DatasetFormatError(f"{self.name}: split {self.test_split!r} of {self.annotation_path} "
                                         "has images but no non-empty caption (no queries)")

    # ------------------------------------------------------------------ overridable paths
    def resolve_annotation_path(self) -> str:
        return os.path.join(self.dataset_dir, self.annotation_file)

    def resolve_image_dir(self) -> str:
        return os.path.join(self.dataset_dir, self.image_subdir)

    def expected_layout(self) -> str:
        return (f"  <DATASETS.ROOT>/{self.folder}/{self.annotation_file}\n"
                f"  <DATASETS.ROOT>/{self.folder}/{self.image_subdir}/<{self.path_key} of each entry>\n"
                f"  with {self.annotation_file} a JSON list of entries like {self.example_entry}\n"
                "  (see datasets/README.md)")

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

    def _parse(self, entries: list) -> dict[str, "OrderedDict[str, _Image]"]:
        """Validate every entry -> {split: {img_path: _Image}} (insertion order = file order)."""
        splits: dict[str, OrderedDict[str, _Image]] = {}
        num_empty = 0
        empty_entries: list[int] = []
        num_repeated = 0
        repeated_entries: list[int] = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise DatasetFormatError(f"{self.name}: entry {index} of {self.annotation_path} is a "
                                         f"{type(entry).__name__}; expected an object like {self.example_entry}")
            if self.split_key is None:
                split = self.train_split or "train"
            else:
                split = self._field(entry, index, self.split_key)
                if split not in self.known_splits:
                    raise self._bad(index, self.split_key, split, f"one of {list(self.known_splits)}")
            rel = self._field(entry, index, self.path_key)
            if not isinstance(rel, str) or not rel.strip():
                raise self._bad(index, self.path_key, rel, "a non-empty relative image path (string)")
            captions = self._field(entry, index, "captions")
            if not isinstance(captions, list):
                raise self._bad(index, "captions", captions, "a list of strings")
            if self.id_key is None:
                pid = -1  # assigned below: each image its own identity
            else:
                pid = self._field(entry, index, self.id_key)
                if isinstance(pid, bool) or not isinstance(pid, int):
                    raise self._bad(index, self.id_key, pid, "an integer person id")
                if pid < 0:
                    raise self._bad(index, self.id_key, pid,
                                    "a non-negative integer person id (negative ids such as -1 mark junk / "
                                    "distractor images in other ReID formats; this format has none)")
            path = os.path.join(self.image_dir, os.path.normpath(rel))
            images = splits.setdefault(split, OrderedDict())
            img = images.get(path)
            if img is None:
                img = images[path] = _Image(path, pid, index)
            elif img.pid != pid:
                raise DatasetFormatError(
                    f"{self.name}: image {rel!r} appears in entries {img.entry} and {index} of "
                    f"{self.annotation_path} with two ids ({img.pid} and {pid}); expected one id per image")
            for c_index, caption in enumerate(captions):
                if not isinstance(caption, str):
                    raise self._bad(index, f"captions[{c_index}]", caption, "a string")
                caption = caption.strip()
                if not caption:
                    num_empty += 1
                    if index not in empty_entries[-1:]:
                        empty_entries.append(index)
                elif caption in img.captions:
                    num_repeated += 1
                    if index not in repeated_entries[-1:]:
                        repeated_entries.append(index)
                else:
                    img.captions.append(caption)
        if num_empty:
            logger.warning("%s: skipped %d empty or whitespace-only caption(s) in %s (entries %s)",
                           self.name, num_empty, self.annotation_path, _listed(empty_entries))
        if num_repeated:
            logger.warning("%s: skipped %d caption(s) repeated verbatim for the same image in %s (entries %s); "
                           "each is kept once", self.name, num_repeated, self.annotation_path,
                           _listed(repeated_entries))
        self.num_empty_captions = num_empty
        self.num_repeated_captions = num_repeated
        return splits

    def _warn_split_overlap(self, first: "OrderedDict[str, _Image]", second: "OrderedDict[str, _Image]",
                            first_name: str, second_name: str) -> None:
        """Log one warning when images are listed in both used splits (kept in both)."""
        shared = [path for path in first if path in second]
        self.num_split_overlap = len(shared)
        if shared:
            shown = ", ".join(repr(os.path.relpath(p, self.image_dir)) for p in shared[:_MAX_LISTED])
            logger.warning("%s: %d image(s) of %s are listed in both split %r and split %r (e.g. %s%s); they are "
                           "kept in both, so the test split overlaps the training data",
                           self.name, len(shared), self.annotation_path, first_name, second_name, shown,
                           ", ..." if len(shared) > _MAX_LISTED else "")

    def _verify_images(self, paths: list[str]) -> None:
        """Refuse missing images (FileNotFoundError) and empty 0-byte files (ImageReadError), naming them."""
        missing: list[str] = []
        empty: list[str] = []
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                missing.append(p)
                continue
            if not stat.S_ISREG(st.st_mode):
                missing.append(p)
            elif st.st_size == 0:
                empty.append(p)
        if missing:
            shown = "\n".join(f"    {p}" for p in missing[:_MAX_LISTED])
            raise FileNotFoundError(
                f"{self.name}: {len(missing)} of the {len(paths)} images listed in {self.annotation_path} "
                f"(field {self.path_key!r}) are missing under {self.image_dir}, e.g.:\n{shown}\n"
                f"expected layout:\n{self.expected_layout()}")
        if empty:
            shown = "\n".join(f"    {p}" for p in empty[:_MAX_LISTED])
            raise ImageReadError(
                f"{self.name}: {len(empty)} of the {len(paths)} images listed in {self.annotation_path} "
                f"(field {self.path_key!r}) are empty files (0 bytes), e.g.:\n{shown}\n"
                "expected a decodable image file (JPEG, PNG, ...) at each path")

    # ------------------------------------------------------------------ items
    def _build_train(self, images: "OrderedDict[str, _Image]") -> tuple[list[TrainItem], int, int]:
        with_text = [img for img in images.values() if img.captions]
        if self.id_key is None:
            raw_ids = list(range(len(with_text)))
        else:
            raw_ids = [img.pid for img in with_text]
        label = {raw: new for new, raw in enumerate(sorted(set(raw_ids)))}
        items: list[TrainItem] = []
        for image_id, (img, raw) in enumerate(zip(with_text, raw_ids)):
            pid = label[raw]
            items.extend((img.path, caption, pid, image_id) for caption in img.captions)
        return items, len(with_text), len(label)

    def _build_test(self, images: "OrderedDict[str, _Image]") -> tuple[list[QueryItem], list[GalleryItem]]:
        query: list[QueryItem] = []
        gallery: list[GalleryItem] = []
        for image_id, img in enumerate(images.values()):
            gallery.append((img.path, img.pid, image_id))
            query.extend((caption, img.pid) for caption in img.captions)
        return query, gallery

    # ------------------------------------------------------------------ statistics (fast-reid style)
    def _log_table(self, rows: list[list[Any]]) -> None:
        headers = ["subset", "# ids", "# images", "# captions"]
        table = tabulate(rows, tablefmt="pipe", headers=headers, numalign="left")
        logger.info(f"=> Loaded {self.name} in csv format: \n" + colored(table, "cyan"))

    def train_statistics(self) -> list[Any]:
        return ["train", self.num_classes, self.num_train_images, len(self.train)]

    def test_statistics(self) -> list[list[Any]]:
        return [["query", len({p for _, p in self.query}), "-", len(self.query)],
                ["gallery", len({p for _, p, _ in self.gallery}), len(self.gallery), "-"]]

    def show_train(self) -> None:
        """Log the training split's table: ids, images, captions."""
        self._log_table([self.train_statistics()])

    def show_test(self) -> None:
        """Log the test split's table: query ids / captions, gallery ids / images."""
        self._log_table(self.test_statistics())
