"""The packed LUPerson-T layout: images and captions in one Apache Arrow IPC file.

File (Arrow IPC *file* format, i.e. with a footer, so that it can be memory-mapped and read by
row), one row per image, in record batches:

    column     type                                      meaning
    image      binary (or large_binary)                  the image file's bytes (JPEG, PNG, ...)
    caption    list<string> (or large_list / large_string)  the image's captions
    image_id   any integer type, no nulls, unique        the image's id
    split      string (or large_string)                  "train" ("val" / "test" rows are not used)

and one optional column (files packed before it existed lack it; they load, and IAP then
matches the vocabulary's phrases in their captions):

    attribute_spans  list<list<list<integer>>> (any list / large_list, any integer type)
                     per caption (the order of ``caption``, as many), the [start, end] character
                     spans (end exclusive) of its attribute phrases in the caption as stored; a
                     null caption entry (or a null row) = spans not recorded

An item's image path refers to a row as ``"arrow:<absolute path of the file>#<row>"`` (row =
0-based over the whole file, :func:`image_ref`). ``read_image`` recognises the ``arrow:``
prefix and calls :func:`read_packed_image`, which opens the file lazily, once per process
(``pa.memory_map`` + ``pa.ipc.open_file``; an object opened by another process, e.g. inherited
by a forked DataLoader worker, is never used and nothing of it is pickled), finds the row's
record batch and its value offsets in the mapped file, and reads the row's bytes with
``os.pread`` at their position in the file. Reading them through the mapping instead would map
the pages around every image read into the worker (page-fault-around) and count them as its
private memory; ``pread`` leaves the worker's resident memory flat. A file written with
buffer compression has no file positions for its values; those rows are copied out of the
decompressed batch instead.

:func:`read_packed_annotations` reads the caption / image_id / split columns (memory-mapped;
the image column is not touched), validates them and returns one record per used row;
:func:`read_packed_attribute_spans` reads the used rows' captions and attribute spans (PLIP's IAP:
only when a pre-training masks them);
:func:`pack_luperson_t` writes the layout from the JSON + image-folder layout (what
``tools/pack_dataset.py`` runs): resumable (parts of ``rows_per_part`` rows are written under
``<output>.parts/``, each atomically; an interrupted pack continues with the missing parts when
re-run with the same inputs, and starts over when the inputs changed) and atomic (the parts are
joined into a temporary file next to the output, then renamed over it).
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from tqdm import tqdm

from ...config import get_unipt_cfg
from ...utils.io import atomic_open, atomic_write_json
from ..transforms import ImageReadError
from .base import DatasetFormatError

__all__ = ["PACKED_PREFIX", "PACKED_SUFFIX", "COLUMNS", "SPANS_COLUMN", "OPTIONAL_COLUMNS", "image_ref",
           "parse_image_ref", "read_packed_image",
           "PackedAnnotations", "read_packed_annotations", "PackedAttributeSpans", "read_packed_attribute_spans",
           "check_packed_images", "pack_luperson_t", "PackResult",
           "arrow_schema"]

logger = logging.getLogger(__name__)

#: prefix of an image path that refers to a row of a packed file
PACKED_PREFIX = "arrow:"
#: an annotation file with this suffix (case-insensitive) is read as the packed layout
PACKED_SUFFIX = ".arrow"
#: column -> what it holds (for errors and docs)
COLUMNS = {"image": "binary (the image file's bytes)", "caption": "list<string> (the image's captions)",
           "image_id": "integer (unique per row)", "split": "string ('train')"}
#: the optional column of the captions' attribute spans (module docstring)
SPANS_COLUMN = "attribute_spans"
#: optional column -> what it holds
OPTIONAL_COLUMNS = {SPANS_COLUMN: "list<list<list<integer>>> (per caption, its attribute phrases' [start, end] "
                                  "character spans; null = not recorded)"}
_USED_SPLIT = "train"
_KNOWN_SPLITS = ("train", "val", "test")
# 2: the attribute_spans column (parts of version 1 lack it and are not reused)
_PACK_VERSION = 2


def arrow_schema() -> Any:
    """The schema :func:`pack_luperson_t` writes (a ``pyarrow.Schema``)."""

    return pa.schema([("image", pa.binary()), ("caption", pa.list_(pa.string())), ("image_id", pa.int64()),
                      ("split", pa.string()), (SPANS_COLUMN, _spans_type())])


def _spans_type() -> Any:
    return pa.list_(pa.list_(pa.list_(pa.int32())))


def image_ref(path: str, row: int) -> str:
    """The image path of row ``row`` of the packed file ``path``: "arrow:<abs path>#<row>"."""
    return f"{PACKED_PREFIX}{os.path.abspath(path)}#{int(row)}"


def parse_image_ref(ref: str) -> tuple[str, int]:
    """"arrow:<path>#<row>" -> (path, row); ValueError naming ``ref`` when it is not one."""
    if ref.startswith(PACKED_PREFIX):
        path, sep, row = ref[len(PACKED_PREFIX):].rpartition("#")
        if sep and path and row.isdigit():
            return path, int(row)
    raise ValueError(f"{ref!r} is not a packed-image reference; expected \"{PACKED_PREFIX}<file>#<row>\"")


# ---------------------------------------------------------------------------------------------- reading images
class _PackedFile:
    """One packed file opened by this process: its record batches' row ranges and image offsets."""

    def __init__(self, path: str) -> None:

        self.path = path
        self.pid = os.getpid()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"packed image file not found: {path} (named by an image path "
                                    f"\"{PACKED_PREFIX}{path}#<row>\")")
        try:
            self.mmap = pa.memory_map(path, "r")
            self.reader = pa.ipc.open_file(self.mmap)
        except (pa.ArrowInvalid, OSError) as e:
            raise ImageReadError(f"cannot open packed image file {path}: {e}") from e
        self.column = self.reader.schema.get_field_index("image")
        if self.column < 0:
            raise ImageReadError(f"packed image file {path} has no column 'image' "
                                 f"(columns: {self.reader.schema.names})")
        self.mmap.seek(0)
        self.base = self.mmap.read_buffer(self.mmap.size()).address  # zero-copy: the mapping's start
        self.size = self.mmap.size()
        self.batches: list[Any] = [None] * self.reader.num_record_batches
        lengths = [self._batch(i).num_rows for i in range(len(self.batches))]
        self.starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self.fd = os.open(path, os.O_RDONLY)

    def _batch(self, i: int) -> "_Batch":

        batch = self.batches[i]
        if batch is None:
            col = self.reader.get_batch(i).column(self.column)
            offsets_buf, data_buf = col.buffers()[1], col.buffers()[2]
            dtype = np.int64 if pa.types.is_large_binary(col.type) else np.int32
            offsets = np.frombuffer(offsets_buf, dtype=dtype)[col.offset:col.offset + len(col) + 1]
            pos = None
            if data_buf is not None and self.base <= data_buf.address < self.base + self.size:
                pos = data_buf.address - self.base  # uncompressed: the values are in the file at pos
            batch = self.batches[i] = _Batch(len(col), col, offsets, pos)
        return batch

    def read(self, row: int) -> bytes:
        total = int(self.starts[-1])
        if not 0 <= row < total:
            raise ImageReadError(f"row {row} of packed image file {self.path} does not exist (it has {total} rows)")
        b = int(np.searchsorted(self.starts, row, side="right")) - 1
        batch, j = self._batch(b), row - int(self.starts[b])
        if batch.col.null_count and not batch.col[j].is_valid:
            raise ImageReadError(f"row {row} of packed image file {self.path} has no image (null)")
        start, end = int(batch.offsets[j]), int(batch.offsets[j + 1])
        if end <= start:
            raise ImageReadError(f"row {row} of packed image file {self.path} has an empty image (0 bytes)")
        if batch.pos is None:
            return batch.col[j].as_py()
        return os.pread(self.fd, end - start, batch.pos + start)


@dataclass
class _Batch:
    num_rows: int
    col: Any  # the image column of the batch (BinaryArray / LargeBinaryArray)
    offsets: np.ndarray  # value offsets (num_rows + 1,)
    pos: int | None  # file position of the values buffer; None when compressed


_OPEN: dict[str, _PackedFile] = {}


def read_packed_image(ref: str) -> bytes:
    """The bytes of the image ``ref`` ("arrow:<file>#<row>") refers to.

    The file is opened on first use in each process (see the module docstring). Raises
    FileNotFoundError (no such file) or ImageReadError (not a packed file, no such row, a
    null row), naming the file and the row.
    """
    path, row = parse_image_ref(ref)
    packed = _OPEN.get(path)
    if packed is None or packed.pid != os.getpid():
        if packed is not None:  # opened by the parent before a fork: close our copy of its descriptor
            os.close(packed.fd)
        packed = _OPEN[path] = _PackedFile(path)
    return packed.read(row)


# ---------------------------------------------------------------------------------------------- reading annotations
@dataclass
class PackedAnnotations:
    """The used rows of a packed file (split == "train", in row order).

    Attributes:
        path: the file (absolute).
        num_rows: rows in the file.
        rows: int64 (R,) index of each used row.
        captions: the R rows' captions as stored (validated as strings), as Python lists; None
            when ``clean`` holds them instead.
        clean: when no caption needs cleaning (none is empty, none has leading or trailing
            whitespace as ``str.strip`` sees it, none repeats within its row): ``(counts, field)``
            with counts int64 (R,) the captions per row and field the C captions in row order as
            a ``PackedItems`` str field (prefix "", offsets int64 (C + 1,), uint8 UTF-8 bytes),
            copied straight from the file's buffers, no Python string made.
    """

    path: str
    num_rows: int
    rows: np.ndarray
    captions: list[list[str]] | None
    clean: tuple[np.ndarray, tuple[str, np.ndarray, np.ndarray]] | None = None


_WHITESPACE: list[str] = []


def _python_whitespace() -> list[str]:
    """Every character ``str.isspace`` accepts (what ``str.strip`` removes), computed once."""
    if not _WHITESPACE:
        _WHITESPACE.extend(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    return _WHITESPACE


def _clean_captions(chunks: Sequence[Any]) -> tuple[np.ndarray, tuple[str, np.ndarray, np.ndarray]] | None:
    """``(counts, str field)`` of the captions (ListArray chunks, in row order) when none needs
    cleaning, else None. Reads the mapped buffers in place; copies only the caption bytes."""

    counts, views = [], []
    for caps in chunks:
        n = pc.list_value_length(caps).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = caps.flatten()  # the values of the rows, in order (respects slicing)
        counts.append(n)
        if len(flat) == 0:
            continue
        if pc.any(pc.equal(pc.binary_length(flat), 0)).as_py():
            return None
        ws = pa.array(_python_whitespace(), type=flat.type)
        for end in (pc.utf8_slice_codeunits(flat, 0, 1), pc.utf8_slice_codeunits(flat, -1)):
            if pc.any(pc.is_in(end, value_set=ws)).as_py():
                return None
        if (n > 1).any():  # a caption repeated within its row?
            codes = pc.dictionary_encode(flat).indices.to_numpy(zero_copy_only=False).astype(np.int64)
            keys = np.repeat(np.arange(len(n), dtype=np.int64), n) * (int(codes.max()) + 1) + codes
            if len(np.unique(keys)) < len(keys):
                return None
        wide = pa.types.is_large_string(flat.type)
        offsets = np.frombuffer(flat.buffers()[1], dtype=np.int64 if wide else np.int32)
        offsets = offsets[flat.offset:flat.offset + len(flat) + 1]
        views.append((offsets, np.frombuffer(flat.buffers()[2], dtype=np.uint8), flat))
    total = sum(int(o[-1] - o[0]) for o, _, _ in views)
    data = np.empty(total, dtype=np.uint8)
    all_offsets = [np.zeros(1, dtype=np.int64)]
    at = 0
    for offsets, values, _ in views:
        size = int(offsets[-1] - offsets[0])
        data[at:at + size] = values[offsets[0]:offsets[-1]]  # out of the mapped file
        all_offsets.append(offsets[1:].astype(np.int64) - int(offsets[0]) + at)
        at += size
    return np.concatenate(counts) if counts else np.zeros(0, np.int64), ("", np.concatenate(all_offsets), data)


def _fail(name: str, path: str, what: str) -> DatasetFormatError:
    return DatasetFormatError(f"{name}: {path} (packed LUPerson-T layout): {what}; expected an Arrow IPC file with "
                              f"columns {COLUMNS} (see datasets/README.md, or write one with tools/pack_dataset.py)")


def _null_rows(chunked: Any) -> list[int]:
    """Row indices of the nulls of a ChunkedArray (first few)."""

    mask = pc.is_null(chunked).to_numpy(zero_copy_only=False)
    return np.flatnonzero(mask)[:5].tolist()


def read_packed_annotations(path: str, name: str = "LUPersonT") -> PackedAnnotations:
    """Validate the caption / image_id / split columns of ``path`` -> the used rows.

    Raises:
        DatasetFormatError: not an Arrow IPC file, a missing column or one of another type,
            nulls, a split value other than train / val / test, a repeated image_id; each names
            the file, the column and the rows / value.
    """

    path = os.path.abspath(path)
    try:
        mm = pa.memory_map(path, "r")
        table = pa.ipc.open_file(mm).read_all()  # zero-copy: nothing is read until a column is used
    except pa.ArrowInvalid as e:
        raise _fail(name, path, f"not an Arrow IPC file ({e})") from e
    try:
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise _fail(name, path, f"no column {missing[0]!r} (its columns: {table.column_names})")
        types = {c: table.schema.field(c).type for c in COLUMNS}
        if not (pa.types.is_binary(types["image"]) or pa.types.is_large_binary(types["image"])):
            raise _fail(name, path, f"column 'image' is {types['image']}")
        cap_t = types["caption"]
        if not ((pa.types.is_list(cap_t) or pa.types.is_large_list(cap_t))
                and (pa.types.is_string(cap_t.value_type) or pa.types.is_large_string(cap_t.value_type))):
            raise _fail(name, path, f"column 'caption' is {cap_t}")
        if not pa.types.is_integer(types["image_id"]):
            raise _fail(name, path, f"column 'image_id' is {types['image_id']}")
        if not (pa.types.is_string(types["split"]) or pa.types.is_large_string(types["split"])):
            raise _fail(name, path, f"column 'split' is {types['split']}")
        for c in ("caption", "image_id", "split"):
            if table.column(c).null_count:
                raise _fail(name, path, f"column {c!r} is null in rows {_null_rows(table.column(c))}")

        split = table.column("split")
        values = [v for v in pc.unique(split).to_pylist()]
        unknown = [v for v in values if v not in _KNOWN_SPLITS]
        if unknown:
            row = int(np.flatnonzero(pc.equal(split, unknown[0]).to_numpy(zero_copy_only=False))[0])
            raise _fail(name, path, f"row {row}: column 'split' is {unknown[0]!r}, not one of {list(_KNOWN_SPLITS)}")
        used = pc.equal(split, _USED_SPLIT).to_numpy(zero_copy_only=False)

        ids = table.column("image_id").to_numpy().astype(np.int64, copy=False)
        order = np.argsort(ids, kind="stable")
        repeated = np.flatnonzero(ids[order][1:] == ids[order][:-1])
        if len(repeated):
            first, second = sorted(int(r) for r in order[repeated[0]:repeated[0] + 2])
            raise _fail(name, path, f"image_id {int(ids[first])} is in rows {first} and {second}; each row is one "
                                    "image with a unique image_id")

        rows = np.flatnonzero(used).astype(np.int64)
        caption_col = table.column("caption")
        if len(rows) < table.num_rows:  # only the captions of the used rows (a copy of that column only)
            caption_col = table.select(["caption"]).filter(pa.array(used)).column("caption")
        chunks = caption_col.chunks
        seen = 0
        for caps in chunks:
            for string_null in np.flatnonzero(pc.is_null(caps.flatten()).to_numpy(zero_copy_only=False))[:1]:
                rel = caps.offsets.to_numpy() - caps.offsets[0].as_py()
                row = seen + int(np.searchsorted(rel, string_null, side="right")) - 1
                raise _fail(name, path, f"row {int(rows[row])}: column 'caption' holds a null string")
            seen += len(caps)
        clean = _clean_captions(chunks)
        captions = None
        if clean is None:
            captions = []
            for caps in chunks:
                offsets = (caps.offsets.to_numpy() - caps.offsets[0].as_py()).tolist()
                texts = caps.flatten().to_pylist()
                captions.extend(texts[a:b] for a, b in zip(offsets, offsets[1:]))
        return PackedAnnotations(path=path, num_rows=table.num_rows, rows=rows, captions=captions, clean=clean)
    finally:
        del table
        mm.close()
        pa.default_memory_pool().release_unused()  # the compute kernels' temporaries


@dataclass
class PackedAttributeSpans:
    """The used rows' (split == "train", in row order) captions and attribute spans, as stored.

    Attributes:
        rows: int64 (R,) index of each used row (as ``PackedAnnotations.rows``).
        captions: per used row, its captions (uncleaned, as in the file).
        spans: per used row, None (a null row: not recorded) or one entry per caption: None (not
            recorded) or its ``[[start, end], ...]`` character spans (the JSON layout's field).
    """

    rows: np.ndarray
    captions: list[list[str]]
    spans: list[list[list[list[int]] | None] | None]


def _is_list(t: Any) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def read_packed_attribute_spans(path: str, name: str = "LUPersonT") -> PackedAttributeSpans | None:
    """The ``attribute_spans`` column of the used rows with their captions; None when the file has
    no such column (packed before it existed). The spans' values are checked by the reader
    (``LUPersonT``), which knows how the captions are cleaned.

    Raises:
        DatasetFormatError: the column is of another type than list<list<list<integer>>>, or a
            row's spans list has another length than its caption list; naming the file, the
            column and the row.
    """

    path = os.path.abspath(path)
    try:
        mm = pa.memory_map(path, "r")
        table = pa.ipc.open_file(mm).read_all()
    except pa.ArrowInvalid as e:
        raise _fail(name, path, f"not an Arrow IPC file ({e})") from e
    try:
        if SPANS_COLUMN not in table.column_names:
            return None
        t = table.schema.field(SPANS_COLUMN).type
        if not (_is_list(t) and _is_list(t.value_type) and _is_list(t.value_type.value_type)
                and pa.types.is_integer(t.value_type.value_type.value_type)):
            raise _fail(name, path, f"column {SPANS_COLUMN!r} is {t}, not {OPTIONAL_COLUMNS[SPANS_COLUMN]}")
        used = pc.equal(table.column("split"), _USED_SPLIT).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(used).astype(np.int64)
        part = table.select(["caption", SPANS_COLUMN])
        if len(rows) < table.num_rows:
            part = part.filter(pa.array(used))
        n_caps = pc.list_value_length(part.column("caption")).to_numpy(zero_copy_only=False)
        spans_col = part.column(SPANS_COLUMN)
        null_row = pc.is_null(spans_col).to_numpy(zero_copy_only=False)
        n_spans = pc.fill_null(pc.list_value_length(spans_col), 0).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~null_row & (n_spans != n_caps))
        if len(bad):
            i = int(bad[0])
            raise _fail(name, path, f"row {int(rows[i])}: column {SPANS_COLUMN!r} has {int(n_spans[i])} span lists "
                                    f"for the row's {int(n_caps[i])} captions (one per caption, null = not recorded)")
        return PackedAttributeSpans(rows=rows, captions=part.column("caption").to_pylist(),
                                    spans=spans_col.to_pylist())
    finally:
        del table
        mm.close()
        pa.default_memory_pool().release_unused()


def check_packed_images(path: str, rows: np.ndarray, name: str = "LUPersonT") -> None:
    """Refuse rows of ``rows`` whose image is null or 0 bytes (ImageReadError naming the file and rows).

    Only the value offsets of the image column are read, not the images.
    """

    with pa.memory_map(path, "r") as mm:
        column = pa.ipc.open_file(mm).read_all().column("image")
        lengths = pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
        bad = rows[lengths[rows] <= 0]
        del column
    if len(bad):
        raise ImageReadError(f"{name}: {len(bad)} of the {len(rows)} images of {path} (packed layout, column "
                             f"'image') are null or empty (0 bytes), rows {bad[:5].tolist()}"
                             f"{' ...' if len(bad) > 5 else ''}; expected the bytes of an image file in every row "
                             "(re-pack with tools/pack_dataset.py)")


# ---------------------------------------------------------------------------------------------- writing
@dataclass
class PackResult:
    """What :func:`pack_luperson_t` wrote."""

    output: str
    num_images: int
    num_captions: int
    num_bytes: int
    parts_reused: int
    seconds: float


def _read_file(path: str, decode_check: bool) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"image file not found: {path}") from e
    except OSError as e:
        raise OSError(f"cannot read image file {path}: {e}") from e
    if not data:
        raise ImageReadError(f"image file is empty (0 bytes): {path}")
    if decode_check:
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        except Exception as e:  # noqa: BLE001 - any decoder failure is this file's fault
            raise ImageReadError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e
    return data


def _images_of(annotation: str, image_dir: str) -> tuple[list[str], list[list[str]], list[list[Any]]]:
    """(image paths, captions per image, their attribute spans) as the JSON layout's LUPersonT reads
    them (validated, every listed image checked to exist; images without a non-empty caption left
    out; per caption its ``[[start, end], ...]`` spans in the stripped caption, or None where the
    file records none)."""
    from ..attribute_spans import decode_spans
    from .luperson_t import LUPersonT  # (circular: luperson_t imports this module)

    cfg = get_unipt_cfg()
    cfg.DATASETS.LUPERSON_T.ANNOTATION = os.path.abspath(annotation)
    cfg.DATASETS.LUPERSON_T.IMAGE_DIR = os.path.abspath(image_dir)
    cfg.DATASETS.VERIFY_IMAGES = "full"
    data = LUPersonT(root=os.path.dirname(os.path.abspath(annotation)), cfg=cfg, attribute_spans=True)
    paths: list[str] = []
    captions: list[list[str]] = []
    spans: list[list[Any]] = []
    last = -1
    # items are grouped by image, image ids 0, 1, ...; one encoded span record per item
    for (path, caption, _, image_id), (encoded,) in zip(data.train, data.train_attribute_spans):
        decoded = decode_spans(encoded)
        mine = None if decoded is None else [[s, e] for s, e in decoded]
        if image_id != last:
            paths.append(path)
            captions.append([caption])
            spans.append([mine])
            last = image_id
        else:
            captions[-1].append(caption)
            spans[-1].append(mine)
    return paths, captions, spans


def _write_part(path: str, paths: Sequence[str], captions: Sequence[list[str]], spans: Sequence[list[Any]],
                first_id: int, batch_bytes: int, decode_check: bool, on_image: Callable[[], None]) -> None:
    """Rows ``first_id``.. of the packed layout -> ``path`` (atomically)."""

    schema = arrow_schema()
    with atomic_open(path, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        start, buf, size = 0, [], 0
        for i, p in enumerate(paths):
            data = _read_file(p, decode_check)
            buf.append(data)
            size += len(data)
            on_image()
            if size >= batch_bytes or i == len(paths) - 1:
                stop = i + 1
                writer.write_batch(pa.record_batch([
                    pa.array(buf, pa.binary()), pa.array(captions[start:stop], pa.list_(pa.string())),
                    pa.array(np.arange(first_id + start, first_id + stop, dtype=np.int64)),
                    pa.array([_USED_SPLIT] * (stop - start), pa.string()),
                    pa.array(spans[start:stop], _spans_type())], schema=schema))
                start, buf, size = stop, [], 0


def _remove_stale_temporaries(folder: str, prefix: str) -> None:
    """Remove the ``<prefix>*.tmp`` files that a killed writer (``atomic_open``) left in ``folder``."""
    if not os.path.isdir(folder):
        return
    for entry in os.scandir(folder):
        if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
            logger.info("pack: removing %s, left by an interrupted pack", entry.path)
            os.remove(entry.path)


def pack_luperson_t(annotation: str, image_dir: str, output: str, rows_per_part: int = 65536,
                    batch_bytes: int = 64 * 2 ** 20, decode_check: bool = False, progress: bool = True) -> PackResult:
    """Write the packed layout of a JSON + folder LUPerson-T set (see the module docstring).

    Rows are the images in the order (and with the captions, stripped, de-duplicated, empty ones
    dropped) that ``LUPersonT`` reads from the JSON; image_id = row; split = "train";
    attribute_spans = each kept caption's recorded spans, shifted to the stripped caption (null
    where the JSON records none). So the packed file gives the same items, in the same order, and
    the same attribute spans, as the JSON layout.

    Args:
        annotation: the JSON list of {"file_path", "captions"}.
        image_dir: the folder ``file_path`` is relative to.
        output: the ``.arrow`` file to write (replaced atomically when complete).
        rows_per_part: rows per resumable part (the work an interruption can lose).
        batch_bytes: image bytes per record batch (batches also end with each part).
        decode_check: decode every image with PIL first (slow; refuses corrupt files by name).
        progress: show a tqdm bar.

    Raises:
        FileNotFoundError / ImageReadError / OSError naming the image that is missing, empty,
        unreadable (or, with ``decode_check``, not decodable); DatasetFormatError for the JSON (its
        attribute_spans included).
    """

    if rows_per_part < 1 or batch_bytes < 1:
        raise ValueError(f"rows_per_part ({rows_per_part}) and batch_bytes ({batch_bytes}) must be >= 1")
    t0 = time.monotonic()
    output = os.path.abspath(output)
    annotation = os.path.abspath(annotation)
    if not output.lower().endswith(PACKED_SUFFIX):
        raise ValueError(f"output {output!r} must end with {PACKED_SUFFIX!r} (DATASETS.LUPERSON_T.ANNOTATION selects "
                         "the packed layout by that suffix)")
    if not os.path.isfile(annotation):
        raise FileNotFoundError(f"annotation file not found: {annotation}")
    _remove_stale_temporaries(os.path.dirname(output), f".{os.path.basename(output)}.")
    paths, captions, spans = _images_of(annotation, image_dir)
    st = os.stat(annotation)
    manifest = {"version": _PACK_VERSION, "annotation": annotation, "annotation_size": st.st_size,
                "annotation_mtime_ns": st.st_mtime_ns, "image_dir": os.path.abspath(image_dir),
                "num_images": len(paths), "rows_per_part": int(rows_per_part)}
    parts_dir = output + ".parts"
    manifest_path = os.path.join(parts_dir, "manifest.json")
    if os.path.isdir(parts_dir):
        try:
            with open(manifest_path, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = None
        if previous != manifest:
            logger.info("pack: %s holds the parts of another pack (other inputs or settings); starting over", parts_dir)
            shutil.rmtree(parts_dir)
    atomic_write_json(manifest_path, manifest)

    num_parts = max(1, -(-len(paths) // rows_per_part))
    part_paths = [os.path.join(parts_dir, f"part-{k:05d}.arrow") for k in range(num_parts)]
    _remove_stale_temporaries(parts_dir, ".part-")
    reused = sum(os.path.isfile(p) for p in part_paths)
    if reused:
        logger.info("pack: continuing an interrupted pack: %d of %d parts already written", reused, num_parts)
    bar = None
    if progress:
        bar = tqdm(total=len(paths), desc=f"packing {os.path.basename(output)}", unit="img", mininterval=1.0)
    tick = (lambda: bar.update(1)) if bar is not None else (lambda: None)
    for k, part in enumerate(part_paths):
        lo, hi = k * rows_per_part, min(len(paths), (k + 1) * rows_per_part)
        if os.path.isfile(part):
            if bar is not None:
                bar.update(hi - lo)
            continue
        _write_part(part, paths[lo:hi], captions[lo:hi], spans[lo:hi], lo, batch_bytes, decode_check, tick)
    if bar is not None:
        bar.close()

    # join the parts (their record batches, as they are) into a temporary file, then rename
    with atomic_open(output, "wb") as sink, pa.ipc.new_file(sink, arrow_schema()) as writer:
        for part in part_paths:
            with pa.memory_map(part, "r") as mm:
                reader = pa.ipc.open_file(mm)
                for i in range(reader.num_record_batches):
                    writer.write_batch(reader.get_batch(i))
    num_bytes = os.path.getsize(output)
    shutil.rmtree(parts_dir)
    result = PackResult(output=output, num_images=len(paths), num_captions=sum(map(len, captions)),
                        num_bytes=num_bytes, parts_reused=reused, seconds=time.monotonic() - t0)
    logger.info("pack: wrote %s: %d images, %d captions, %.1f MiB in %.1f s", output, result.num_images,
                result.num_captions, num_bytes / 2 ** 20, result.seconds)
    return result
