"""Resumable, sharded pseudo-text generation and the merge step.

Layout of a run writing ``<output>`` (default work folder ``<output>.parts/``)::

    manifest.json                         settings fingerprint + hash of the image list
    shard-00000-of-00002/chunk-000000.json   one file per chunk of ``chunk_size`` images
    shard-00000-of-00002/done.json           written when every chunk of the shard exists

Shard ``i`` of ``N`` takes images ``sorted_list[i::N]``. Every file is written atomically, so a
killed run leaves only whole chunks; a re-run skips them. Each image's captions are drawn from a
generator seeded by (seed, file path), so they do not depend on the sharding. The merge step
streams the shards' (sorted) chunks into the annotation file ``[{"file_path", "captions",
"attribute_spans"}]``, the sidecar ``<stem>.attributes.json`` and ``<stem>.failed.json``, and
gathers the report. ``attribute_spans`` holds one list per caption (same order) of the
``[start, end]`` character spans (end exclusive) of its attribute phrases
(``templates.fill_template_with_spans``), which PLIP's IAP masks; the LUPerson-T reader reads them
(``unipt_plugin.data.datasets.luperson_t``; files without the field still load).
"""
from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from torch.utils.data import DataLoader

from ..utils.io import atomic_open, atomic_write_json
from tqdm import tqdm

from .combine import CaptionBuilder
from .conquer import ClipConquer
from .image_list import ImageListDataset
from .report import ReportStats

logger = logging.getLogger(__name__)

__all__ = ["RunSettings", "Conqueror", "default_work_dir", "shard_files", "run_shard", "merge_shards", "sidecar_paths"]

_SHARD_DIR = re.compile(r"^shard-(\d{5})-of-(\d{5})$")


@dataclass(frozen=True)
class RunSettings:
    """Everything that changes the output; a work folder only resumes under identical settings."""

    model: str
    weights: str
    vocabulary_sha256: str
    threshold: float
    seed: int
    captions_per_image: int
    num_templates: int
    resize_mode: str
    chunk_size: int
    files_sha256: str
    num_images: int
    # Version of the annotation entries: 2 adds "attribute_spans" (a work folder of version 1,
    # whose chunks have no spans, is refused rather than merged into a mixed file).
    annotation_format: int = 2


@dataclass
class Conqueror:
    """What the image pass needs, built lazily (only when a chunk is left to do)."""

    conquer: ClipConquer
    transform: Callable
    image_shape: tuple[int, int, int]


def default_work_dir(output: str | os.PathLike) -> Path:
    return Path(str(output) + ".parts")


def sidecar_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """(attributes sidecar, failed-images list) next to the annotation file."""
    out = Path(output)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(stem + ".attributes.json"), out.with_name(stem + ".failed.json")


def files_sha256(files: Sequence[str]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode("utf-8") + b"\n")
    return h.hexdigest()


def shard_files(files: Sequence[str], shard: int, num_shards: int) -> list[str]:
    """Images of shard ``shard`` of ``num_shards`` (interleaved over the sorted list)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, num_shards), got shard={shard}, num_shards={num_shards}")
    return list(files[shard::num_shards])


def _shard_dir(work_dir: Path, shard: int, num_shards: int) -> Path:
    return work_dir / f"shard-{shard:05d}-of-{num_shards:05d}"


def _check_manifest(work_dir: Path, settings: RunSettings) -> None:
    path = work_dir / "manifest.json"
    mine = asdict(settings)
    if path.is_file():
        theirs = json.loads(path.read_text(encoding="utf-8"))
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise RuntimeError(f"{work_dir} holds a run with different settings ({', '.join(diff)}); "
                               f"use another --output / --work-dir or delete that folder")
    else:
        atomic_write_json(path, mine, indent=1)


def _chunk_done(path: Path, files: list[str]) -> bool:
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("files") == files
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        logger.warning("unreadable chunk %s: redoing it", path)
        return False


class _ProgressLog:
    """What the image pass reports when the tqdm bar is off: a log line "<desc>: <done>/<total>
    images, <rate> img/s, eta H:MM:SS" every ``every_s`` seconds and once at the end (the same
    ``update(n)`` / ``close()`` calls as a tqdm bar). The rate counts the images of this run only."""

    def __init__(self, total: int, initial: int, desc: str, every_s: float = 10.0) -> None:
        self.total, self.done, self.desc, self.every_s = total, initial, desc, every_s
        self._initial = initial
        self._start = self._last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._log(now)

    def close(self) -> None:
        if self.done > self._initial:
            self._log(time.monotonic())

    def _log(self, now: float) -> None:
        rate = (self.done - self._initial) / max(now - self._start, 1e-9)
        eta = int((self.total - self.done) / rate) if rate > 0 else 0
        logger.info("%s: %d/%d images, %.1f img/s, eta %d:%02d:%02d", self.desc, self.done, self.total, rate,
                    eta // 3600, eta // 60 % 60, eta % 60)


def _process_chunk(files: list[str], image_root: Path, conq: Conqueror, builder: CaptionBuilder, settings: RunSettings,
                   batch_size: int, num_workers: int, progress: Any) -> dict[str, Any]:
    dataset = ImageListDataset(image_root, files, conq.transform, conq.image_shape)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                        pin_memory=conq.conquer.device.type == "cuda")
    entries, failed = [], []
    for images, index, errors in loader:
        ok = [i for i, e in enumerate(errors) if not e]
        failed += [{"file_path": files[int(index[i])], "error": errors[i]} for i, e in enumerate(errors) if e]
        if ok:
            sel = conq.conquer(images[ok] if len(ok) < len(errors) else images)
            for j, i in enumerate(ok):
                key = files[int(index[i])]
                caps = builder.captions(sel.ids[j], key, settings.seed, settings.captions_per_image)
                entries.append({
                    "file_path": key,
                    "captions": [c.text for c in caps],
                    "attribute_spans": [[list(span) for span in c.attribute_spans] for c in caps],
                    "templates": [c.template_index for c in caps],
                    "attributes": {a: {"id": sel.ids[j][a], "score": round(sel.scores[j][a], 5)} for a in sel.ids[j]},
                })
        if progress is not None:
            progress.update(len(errors))
    return {"files": files, "entries": entries, "failed": failed}


def run_shard(files: Sequence[str], image_root: str | os.PathLike, work_dir: str | os.PathLike, shard: int, num_shards: int,
              settings: RunSettings, builder: CaptionBuilder, make_conqueror: Callable[[], Conqueror],
              batch_size: int = 64, num_workers: int = 4, show_progress: bool = True,
              stop_after_chunks: int | None = None) -> dict[str, int]:
    """Process one shard, chunk by chunk, skipping chunks already written.

    Args:
        files: the whole sorted image list (relative to ``image_root``).
        make_conqueror: builds the CLIP scorer; called only if a chunk is left to do.
        stop_after_chunks: stop after writing this many new chunks (tests of interruption).
    Returns:
        {"images", "chunks", "skipped_chunks", "new_chunks", "failed"} counts of this call.
    """
    work_dir = Path(work_dir)
    _check_manifest(work_dir, settings)
    mine = shard_files(files, shard, num_shards)
    sdir = _shard_dir(work_dir, shard, num_shards)
    chunks = [mine[s:s + settings.chunk_size] for s in range(0, len(mine), settings.chunk_size)]
    todo = [j for j, c in enumerate(chunks) if not _chunk_done(sdir / f"chunk-{j:06d}.json", c)]
    stats = {"images": len(mine), "chunks": len(chunks), "skipped_chunks": len(chunks) - len(todo), "new_chunks": 0, "failed": 0}
    progress = None
    if todo:
        conq = make_conqueror()
        done_images = sum(len(c) for j, c in enumerate(chunks) if j not in set(todo))
        if show_progress:
            progress = tqdm(total=len(mine), initial=done_images, unit="img", desc=f"shard {shard}/{num_shards}")
        else:
            progress = _ProgressLog(len(mine), done_images, f"shard {shard}/{num_shards}")
        try:
            for j in todo:
                if stop_after_chunks is not None and stats["new_chunks"] >= stop_after_chunks:
                    return stats
                out = _process_chunk(chunks[j], Path(image_root), conq, builder, settings, batch_size, num_workers, progress)
                atomic_write_json(sdir / f"chunk-{j:06d}.json", out)
                stats["new_chunks"] += 1
                stats["failed"] += len(out["failed"])
        finally:
            if progress is not None:
                progress.close()
    atomic_write_json(sdir / "done.json", {"shard": shard, "num_shards": num_shards, "chunks": len(chunks), "images": len(mine)})
    logger.info("shard %d/%d: %s", shard, num_shards, stats)
    return stats


def _complete_shards(work_dir: Path) -> list[Path]:
    """Shard folders of the single shard count present, all of them finished."""
    found: dict[int, dict[int, Path]] = {}
    for p in work_dir.iterdir() if work_dir.is_dir() else []:
        m = _SHARD_DIR.match(p.name)
        if m and p.is_dir():
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    if not found:
        raise FileNotFoundError(f"no shard folders in {work_dir}: run the generation first")
    if len(found) > 1:
        raise RuntimeError(f"{work_dir} mixes shard counts {sorted(found)}; keep one")
    (n, shards), = found.items()
    missing = [i for i in range(n) if i not in shards or not (shards[i] / "done.json").is_file()]
    if missing:
        raise RuntimeError(f"{work_dir}: shards {missing} of {n} are not finished; run them (same settings) before merging")
    return [shards[i] for i in range(n)]


def _iter_shard(sdir: Path) -> Iterator[tuple[str, str, dict]]:
    """(file_path, kind, record) of one shard, in sorted order; kind is "ok" or "failed"."""
    done = json.loads((sdir / "done.json").read_text(encoding="utf-8"))
    for j in range(done["chunks"]):
        path = sdir / f"chunk-{j:06d}.json"
        if not path.is_file():
            raise RuntimeError(f"{path} is missing although {sdir / 'done.json'} exists; re-run that shard")
        chunk = json.loads(path.read_text(encoding="utf-8"))
        records = [(e["file_path"], "ok", e) for e in chunk["entries"]] + [(f["file_path"], "failed", f) for f in chunk["failed"]]
        yield from sorted(records, key=lambda r: r[0])


def merge_shards(work_dir: str | os.PathLike, output: str | os.PathLike) -> ReportStats:
    """Merge finished shards into the annotation file, the sidecar and the failed list.

    Streams the shards (one chunk per shard in memory). Returns the statistics for the report.
    """
    work_dir = Path(work_dir)
    settings = json.loads((work_dir / "manifest.json").read_text(encoding="utf-8"))
    shards = _complete_shards(work_dir)
    sidecar, failed_path = sidecar_paths(output)
    stats = ReportStats()
    failed = []
    with atomic_open(output, "w", encoding="utf-8") as out, atomic_open(sidecar, "w", encoding="utf-8") as side:
        out.write("[")
        side.write('{"settings": ' + json.dumps(settings, sort_keys=True) + ', "images": [')
        first = True
        for file_path, kind, rec in heapq.merge(*(_iter_shard(s) for s in shards), key=lambda r: r[0]):
            if kind == "failed":
                failed.append(rec)
                stats.add_failed(rec)
                continue
            sep = "" if first else ","
            first = False
            out.write(sep + "\n" + json.dumps({"file_path": file_path, "captions": rec["captions"],
                                                "attribute_spans": rec["attribute_spans"]}, ensure_ascii=False))
            side.write(sep + "\n" + json.dumps({"file_path": file_path, "attributes": rec["attributes"],
                                                "templates": rec["templates"]}, ensure_ascii=False))
            stats.add(rec["attributes"], rec["templates"], rec["captions"])
        out.write("\n]\n")
        side.write("\n]}\n")
    atomic_write_json(failed_path, failed, indent=1)
    logger.info("merged %d shards: %d images captioned, %d failed -> %s", len(shards), stats.num_images, len(failed), output)
    return stats

