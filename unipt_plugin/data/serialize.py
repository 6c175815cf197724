"""``PackedItems``: a read-only sequence of same-shaped tuples held in a few flat buffers.

Why: a Python list of N item tuples is N tuples plus their strings and ints, each an object
with a reference count. A DataLoader worker forked from the main process shares those pages
with it until it *reads* an item: reading changes the item's reference counts, which writes to
the page, and the kernel copies the page into the worker (copy-on-write). Over an epoch each
worker ends up with a private copy of most of the items (at 1.3M LUPerson-T items: +90 to
+130 MiB per worker within 200 batches). ``PackedItems`` keeps the same items in a handful of
numpy arrays (offsets and one byte buffer per string field): reading item i touches only those few
objects' headers and the bytes of item i, so a worker's private memory stays flat, and the main
process holds ~ the raw bytes of the items instead of ~300 bytes of object overhead per item.

Layout, for N items whose fields are ``kinds`` (each "str" or "int"), K int fields, S str fields:

- ``ints``: int64 array (N, K), C order: row i holds item i's int fields in field order.
- per str field s: ``(prefix, offsets, data)``:
    * ``prefix``: str, a prefix common to the field's N values, stored once (what
      :func:`pack_strings` makes: their longest common prefix when it has at least 8
      characters, e.g. the image folder all paths start with, else "");
    * ``offsets``: int64 array (N + 1,), offsets[0] = 0, non-decreasing;
    * ``data``: uint8 array, the UTF-8 encoding (errors="surrogatepass", so any Python str
      round-trips) of every value with its prefix removed, concatenated;
    * value i = prefix + bytes(data[offsets[i]:offsets[i + 1]]).decode("utf-8", "surrogatepass").

Item i is rebuilt on access as a tuple of Python ``str`` / ``int`` equal to the tuple it was
packed from; iteration yields the items in order. The arrays are read-only; nothing in the
object changes after construction, so it can be shared by forked processes and pickled (for
spawned workers) as it is.
"""
from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Union, overload

import numpy as np

__all__ = ["PackedItems", "pack_strings", "TRAIN_ITEM", "QUERY_ITEM", "GALLERY_ITEM"]

#: field kinds of the text-image items (unipt_plugin.data.datasets.base)
TRAIN_ITEM = ("str", "str", "int", "int")  # (img_path, caption, pid 0..C-1, image_id)
QUERY_ITEM = ("str", "int")  # (caption, raw pid)
GALLERY_ITEM = ("str", "int", "int")  # (img_path, raw pid, image_id)

_KINDS = ("str", "int")
_ITER_CHUNK = 65536
_PACK_CHUNK = 65536
_MIN_PREFIX = 8  # shorter common prefixes of a str field are stored in every value
_Item = tuple[Any, ...]
_StrField = tuple[str, np.ndarray, np.ndarray]  # (prefix, offsets int64 (N+1,), data uint8)


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


def pack_strings(values: Sequence[str]) -> _StrField:
    """N strings -> one str field of the layout: (common prefix, int64 offsets (N + 1,), uint8
    UTF-8 bytes of the suffixes); pass it to ``PackedItems(kinds, ints, strings)``."""
    return _pack_strings(values, 0)


def _pack_strings(values: Sequence[str], field: int) -> _StrField:
    """N strings -> (common prefix, int64 offsets (N + 1,), uint8 UTF-8 bytes of the suffixes)."""
    if len(values) == 0:
        return "", _readonly(np.zeros(1, dtype=np.int64)), _readonly(np.zeros(0, dtype=np.uint8))
    try:
        return _pack_str_values(values)
    except (TypeError, AttributeError):
        bad = next(((i, v) for i, v in enumerate(values) if not isinstance(v, str)), None)
        if bad is None:
            raise
        raise TypeError(f"PackedItems: field {field} of item {bad[0]} is {type(bad[1]).__name__} {bad[1]!r}; "
                        "expected a str") from None


def _pack_str_values(values: Sequence[str]) -> _StrField:
    n = len(values)
    # the common prefix of all values is that of the smallest and the largest; three samples
    # without one spare the two passes over the values
    prefix = os.path.commonprefix([values[0], values[n // 2], values[-1]])
    if len(prefix) >= _MIN_PREFIX:
        prefix = os.path.commonprefix([min(values), max(values)])
    if len(prefix) < _MIN_PREFIX:  # not worth a copy of every value
        prefix = ""
    cut = len(prefix)
    lengths = np.empty(n, dtype=np.int64)
    encoded: list[bytes | None] = []
    for start in range(0, n, _PACK_CHUNK):
        chunk = values[start:start + _PACK_CHUNK]
        if cut:
            chunk = [v[cut:] for v in chunk]
        joined = "".join(chunk)
        blob = joined.encode("utf-8", "surrogatepass")
        if len(blob) == len(joined):  # all ASCII: one byte per character
            lengths[start:start + len(chunk)] = np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk))
        else:
            lengths[start:start + len(chunk)] = np.fromiter(
                (len(c.encode("utf-8", "surrogatepass")) for c in chunk), dtype=np.int64, count=len(chunk))
        encoded.append(blob)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # np.empty's pages become resident only as they are written, and each chunk is dropped once
    # copied: the buffer and the chunks are not held twice
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    at = 0
    for k, blob in enumerate(encoded):
        encoded[k] = None
        data[at:at + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
        at += len(blob)
        del blob
    return prefix, _readonly(offsets), _readonly(data)


def _pack_ints(values: Any, field: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer))), None)
        raise TypeError(f"PackedItems: field {field} holds {type(bad).__name__} {bad!r}; expected integers "
                        "(that fit in int64)")
    if arr.dtype == np.uint64 and int(arr.max()) > np.iinfo(np.int64).max:
        raise OverflowError(f"PackedItems: field {field} holds {int(arr.max())}, which does not fit in int64")
    return arr.astype(np.int64, copy=False)


class PackedItems(Sequence):
    """Read-only sequence of N tuples with fields of ``kinds`` ("str" / "int"); see the module docstring.

    Build with :meth:`from_rows` (an iterable of tuples) or :meth:`from_columns` (one sequence
    per field). ``items[i]`` -> tuple; ``items[a:b]`` -> list of tuples; equal (``==``) to a
    list or tuple of the same tuples in the same order, or to another ``PackedItems`` holding
    them.
    """

    __hash__ = None  # type: ignore[assignment]  # compares by value, like a list

    def __init__(self, kinds: Sequence[str], ints: np.ndarray, strings: Sequence[_StrField]) -> None:
        """Wrap packed buffers (use :meth:`from_rows` / :meth:`from_columns` to pack items).

        Args:
            kinds: kind of each field, "str" or "int".
            ints: int64 (N, number of int fields); marked read-only (not copied when C-contiguous).
            strings: (prefix, offsets int64 (N + 1,), data uint8 array or bytes) per str field, in
                field order.
        """
        kinds = tuple(kinds)
        if not kinds or any(k not in _KINDS for k in kinds):
            raise ValueError(f"PackedItems: kinds must be a non-empty sequence of 'str' / 'int', got {kinds}")
        num_int = kinds.count("int")
        num_str = len(kinds) - num_int
        if ints.dtype != np.int64 or ints.ndim != 2 or ints.shape[1] != num_int:
            raise ValueError(f"PackedItems: ints must be int64 (N, {num_int}), got {ints.dtype} {ints.shape}")
        if len(strings) != num_str:
            raise ValueError(f"PackedItems: {num_str} str fields in {kinds}, got {len(strings)} string buffers")
        n = ints.shape[0] if num_int else len(strings[0][1]) - 1
        strings = [(str(p), o, np.frombuffer(d, dtype=np.uint8) if isinstance(d, (bytes, bytearray)) else d)
                   for p, o, d in strings]
        for prefix, offsets, data in strings:
            if offsets.dtype != np.int64 or offsets.shape != (n + 1,) or data.dtype != np.uint8 or data.ndim != 1 \
                    or int(offsets[-1]) != len(data):
                raise ValueError(f"PackedItems: string offsets must be int64 ({n + 1},) ending at len(data), data "
                                 "a 1-D uint8 buffer")
        self.kinds = kinds
        self._len = int(n)
        self._ints = _readonly(np.ascontiguousarray(ints)) if num_int else _readonly(np.zeros((n, 0), np.int64))
        self._strs = [(p, _readonly(o), _readonly(d)) for p, o, d in strings]
        # per field: (is_str, index into ints columns or into _strs)
        self._layout = []
        counters = {"int": 0, "str": 0}
        for k in kinds:
            self._layout.append((k == "str", counters[k]))
            counters[k] += 1

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_columns(cls, columns: Sequence[Any], kinds: Sequence[str]) -> "PackedItems":
        """Pack one sequence per field (str fields: sequences of str; int fields: of ints or an
        integer numpy array), all of the same length N."""
        kinds = tuple(kinds)
        if len(columns) != len(kinds):
            raise ValueError(f"PackedItems: {len(columns)} columns for {len(kinds)} fields {kinds}")
        lengths = {len(c) for c in columns}
        if len(lengths) > 1:
            raise ValueError(f"PackedItems: columns of different lengths {[len(c) for c in columns]}")
        n = lengths.pop() if lengths else 0
        int_cols = [_pack_ints(c, f) for f, (c, k) in enumerate(zip(columns, kinds)) if k == "int"]
        ints = np.stack(int_cols, axis=1) if int_cols else np.zeros((n, 0), dtype=np.int64)
        if ints.shape[0] != n:  # only empty columns
            ints = np.zeros((n, len(int_cols)), dtype=np.int64)
        strings = [_pack_strings(c, f) for f, (c, k) in enumerate(zip(columns, kinds)) if k == "str"]
        return cls(kinds, ints, strings)

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]], kinds: Sequence[str]) -> "PackedItems":
        """Pack an iterable of tuples (each of ``len(kinds)`` fields)."""
        kinds = tuple(kinds)
        rows = rows if isinstance(rows, (list, tuple)) else list(rows)
        for i, row in enumerate(rows):
            if len(row) != len(kinds):
                raise ValueError(f"PackedItems: item {i} has {len(row)} fields {tuple(row)!r}; expected "
                                 f"{len(kinds)} ({', '.join(kinds)})")
        columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in kinds]
        return cls.from_columns(columns, kinds)

    # ------------------------------------------------------------------ derived sequences
    def shifted(self, deltas: Mapping[int, int]) -> "PackedItems":
        """The same items with ``deltas[f]`` added to int field f (e.g. pid / image-id offsets
        when datasets are concatenated); the string buffers are shared, not copied."""
        if not any(deltas.values()):
            return self
        ints = self._ints.copy()
        for field, delta in deltas.items():
            is_str, j = self._layout[field]
            if is_str:
                raise ValueError(f"PackedItems.shifted: field {field} is a str field")
            ints[:, j] += int(delta)
        return PackedItems(self.kinds, ints, self._strs)

    @classmethod
    def concatenate(cls, parts: Sequence["PackedItems"]) -> "PackedItems":
        """One ``PackedItems`` holding the items of ``parts`` in order (all of the same kinds)."""
        if not parts:
            raise ValueError("PackedItems.concatenate: no parts")
        kinds = parts[0].kinds
        for p in parts:
            if p.kinds != kinds:
                raise ValueError(f"PackedItems.concatenate: kinds {p.kinds} differ from {kinds}")
        if len(parts) == 1:
            return parts[0]
        ints = np.concatenate([p._ints for p in parts], axis=0)
        strings = []
        for s in range(len(parts[0]._strs)):
            fields = [p._strs[s] for p in parts]
            nonempty = [f[0] for f, p in zip(fields, parts) if len(p)]
            prefix = os.path.commonprefix(nonempty) if nonempty else ""
            datas, offsets, base = [], [np.zeros(1, dtype=np.int64)], 0
            for (p_prefix, p_off, p_data), part in zip(fields, parts):
                if len(part) == 0:
                    continue
                extra = p_prefix[len(prefix):].encode("utf-8", "surrogatepass")
                if extra:  # this part's values share a longer prefix: put its rest back in front
                    o = p_off.tolist()
                    blob = p_data.tobytes()
                    p_data = np.frombuffer(b"".join(extra + blob[a:b] for a, b in zip(o, o[1:])), dtype=np.uint8)
                    p_off = p_off + len(extra) * np.arange(len(p_off), dtype=np.int64)
                datas.append(p_data)
                offsets.append(p_off[1:] + base)
                base += len(p_data)
            strings.append((prefix, np.concatenate(offsets), np.concatenate(datas) if datas else np.zeros(0, np.uint8)))
        return cls(kinds, ints, strings)

    # ------------------------------------------------------------------ Sequence
    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> _Item: ...

    @overload
    def __getitem__(self, index: slice) -> list[_Item]: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[_Item, list[_Item]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._len))]
        i = operator.index(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"PackedItems index {index} out of range for {self._len} items")
        row = self._ints[i].tolist()
        out = []
        for is_str, j in self._layout:
            if is_str:
                prefix, offsets, data = self._strs[j]
                a, b = offsets[i:i + 2].tolist()
                out.append(prefix + data[a:b].tobytes().decode("utf-8", "surrogatepass"))
            else:
                out.append(row[j])
        return tuple(out)

    def __iter__(self) -> Iterator[_Item]:
        for start in range(0, self._len, _ITER_CHUNK):
            stop = min(self._len, start + _ITER_CHUNK)
            cols: list[list[Any]] = []
            for is_str, j in self._layout:
                if is_str:
                    prefix, offsets, data = self._strs[j]
                    o = offsets[start:stop + 1].tolist()
                    blob, base = data[o[0]:o[-1]].tobytes(), o[0]
                    cols.append([prefix + blob[a - base:b - base].decode("utf-8", "surrogatepass")
                                 for a, b in zip(o, o[1:])])
                else:
                    cols.append(self._ints[start:stop, j].tolist())
            yield from zip(*cols)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedItems):
            if self.kinds != other.kinds or len(self) != len(other):
                return False
        elif isinstance(other, (list, tuple)):
            if len(self) != len(other):
                return False
        else:
            return NotImplemented
        return all(a == b for a, b in zip(self, other))

    # ------------------------------------------------------------------ columns and introspection
    def int_column(self, field: int) -> np.ndarray:
        """Read-only int64 view (N,) of int field ``field`` (no per-item objects are made)."""
        is_str, j = self._layout[field]
        if is_str:
            raise ValueError(f"PackedItems.int_column: field {field} is a str field ({self.kinds})")
        return self._ints[:, j]

    def str_column(self, field: int) -> list[str]:
        """The N values of str field ``field`` as a list (decoded; one str object per item)."""
        is_str, _ = self._layout[field]
        if not is_str:
            raise ValueError(f"PackedItems.str_column: field {field} is an int field ({self.kinds})")
        return [item[field] for item in self]

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers (ints, offsets, string data and prefixes)."""
        return int(self._ints.nbytes + sum(o.nbytes + d.nbytes + len(p.encode("utf-8", "surrogatepass"))
                                           for p, o, d in self._strs))

    def __repr__(self) -> str:
        return f"PackedItems({self._len} items of ({', '.join(self.kinds)}), {self.nbytes / 2 ** 20:.1f} MiB)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PackedItems, (self.kinds, self._ints, self._strs))
