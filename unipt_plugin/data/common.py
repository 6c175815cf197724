"""torch Datasets over text-image items, their collate functions and the test batch sampler.

Items come from ``unipt_plugin.data.datasets`` (see ``TextImageDataset``). Images are read and
transformed in ``__getitem__``; captions are tokenised per batch in the collate function
(one batched call of the tokenizer).

Training randomness is a function of the sample's position in the training stream, not of the
process that loads it: ``ResumableBatchSampler`` hands every index out with a seed derived from
(run seed, rank, position), ``T2ITrainSet`` draws that sample's augmentation from it, and
``TrainCollator`` draws the sample's MLM mask from a sub-seed of it (:func:`derive_seed`) and
hands the seeds on to the model (``batch["seeds"]``, from which ``UniPTT2I`` seeds its
semi-hard negative draws). So the batches are the same for any DATALOADER.NUM_WORKERS, and a
resumed run can start the stream at any batch and see exactly what an uninterrupted run would
have seen, with no generator state to save.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset, Sampler

from .serialize import GALLERY_ITEM, QUERY_ITEM, TRAIN_ITEM, PackedItems
from .tokenizer import TextTokenizer
from .transforms import read_image

if TYPE_CHECKING:
    from .attribute_masking import AttributeMasking
    from .attribute_spans import AttributeSpanSource
    from .mlm_masking import MLMMasking

__all__ = ["T2ITrainSet", "T2ITestSet", "IdentityView", "TrainCollator", "TestCollator", "ModalityBatchSampler",
           "ResumableBatchSampler", "sample_seed", "derive_seed", "AUGMENT_SEED_STREAM",
           "MLM_SEED_STREAM", "RANKING_SEED_STREAM", "IAP_SEED_STREAM"]

# Streams of derive_seed(sample seed, stream): every random use of a training sample's seed gets
# its own stream (torch's CPU generator keeps only the low 32 bits of a seed, which for the raw
# sample seed are the stream position alone: the run seed and the rank sit above bit 31).
# Image augmentation of the sample (T2ITrainSet: flip, crop, erasing, ...).
AUGMENT_SEED_STREAM = 3
# MLM masking of the sample's caption (TrainCollator, unipt_plugin.data.mlm_masking).
MLM_SEED_STREAM = 1
# Semi-hard negative draws of UniPTT2I's ranking losses (from the seed of a batch's first sample).
RANKING_SEED_STREAM = 2
# Which attribute phrases of the sample's caption PLIP's IAP masks (unipt_plugin.data.attribute_masking).
IAP_SEED_STREAM = 4

_MASK64 = 2 ** 64 - 1


def _packed(items: Sequence[tuple], kinds: tuple[str, ...], what: str) -> PackedItems:
    """``items`` as ``PackedItems`` of ``kinds`` (packed when given as another sequence).

    Stored packed, the items are not copied into DataLoader workers as they read them (see
    unipt_plugin/data/serialize.py)."""
    if isinstance(items, PackedItems):
        if items.kinds != kinds:
            raise ValueError(f"{what}: PackedItems of fields {items.kinds}; expected {kinds}")
        return items
    return PackedItems.from_rows(items, kinds)


def _read_listed_image(path: str) -> Any:
    """``read_image`` of an image a dataset lists; a missing file's error also names the check's key."""
    try:
        return read_image(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e} (listed by the dataset's annotation file; listed images are checked when the dataset is "
            "built only with DATASETS.VERIFY_IMAGES = \"full\", the default: with \"lazy\" a missing one "
            "is found when it is first read)") from e


class T2ITrainSet(Dataset):
    """Training items ``(img_path, caption, pid, image_id)`` -> dicts for ``TrainCollator``.

    Indexed by ``index`` or by ``(index, seed)`` (what ``ResumableBatchSampler`` yields): with a
    seed, the image transform's random draws (flip, crop, erasing, ...) come from torch's RNG seeded
    with ``derive_seed(seed, AUGMENT_SEED_STREAM)``, inside ``torch.random.fork_rng`` so that the process's own RNG is left untouched
    (only the CPU generator is seeded; CUDA generators are never touched), and the item carries
    it as "seed" (``TrainCollator`` draws the MLM mask from it and puts it in the batch).

    With ``attribute_spans`` (PLIP's IAP, ``unipt_plugin.data.attribute_spans``) the item also
    carries "attribute_spans": the ``(start, end)`` character spans of its caption's attribute
    phrases.

    Attributes:
        num_classes: number of training identities C (pids are 0..C-1); fast-reid's trainer
            reads it to size the classifier.
        img_items: the items themselves (fast-reid's name), as ``PackedItems`` (a sequence of
            the same tuples, in the same order, that DataLoader workers read without copying).
    """

    def __init__(self, items: Sequence[tuple[str, str, int, int]], transform: Callable, num_classes: int,
                 attribute_spans: AttributeSpanSource | None = None) -> None:
        self.img_items = _packed(items, TRAIN_ITEM, "T2ITrainSet items")
        self.transform = transform
        self.num_classes = int(num_classes)
        self.attribute_spans = attribute_spans

    def __len__(self) -> int:
        return len(self.img_items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, caption, pid, image_id = self.img_items[index]
        img = _read_listed_image(path)
        if seed is None:
            image = self.transform(img)
        else:
            # CPU generator only: torch.manual_seed would also reseed every CUDA generator (and
            # with NUM_WORKERS = 0 this runs in the training process, whose GPU dropout masks
            # would then repeat per sample); fork_rng(devices=[]) restores the CPU state after.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(derive_seed(seed, AUGMENT_SEED_STREAM))
                image = self.transform(img)
        item = {"image": image, "caption": caption, "target": pid, "img_id": image_id}
        if self.attribute_spans is not None:
            item["attribute_spans"] = self.attribute_spans(index, caption, image_id)
        if seed is not None:
            item["seed"] = int(seed)
        return item


class IdentityView(Sequence):
    """Read-only view of training items as ``(index, pid, image_id)`` for fast-reid's identity samplers.

    fast-reid's ``NaiveIdentitySampler`` reads ``item[1]`` as the pid and
    ``BalancedIdentitySampler`` unpacks ``(_, pid, camid)``; the image id plays the camera's
    role, so that a balanced batch prefers captions of other images of the same person.

    Reads the pid and image-id columns of ``PackedItems`` directly (int64 arrays; the samplers
    enumerate all N items once when they are built); other sequences item by item.
    """

    def __init__(self, items: Sequence[tuple[str, str, int, int]]) -> None:
        self._items = items
        self._columns = None
        if isinstance(items, PackedItems) and items.kinds == TRAIN_ITEM:
            self._columns = (items.int_column(2), items.int_column(3))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[int, int, int]:  # type: ignore[override]
        if self._columns is not None:
            if index < 0:
                index += len(self._items)
            if not 0 <= index < len(self._items):
                raise IndexError(f"IdentityView index {index} out of range for {len(self._items)} items")
            return index, int(self._columns[0][index]), int(self._columns[1][index])
        _, _, pid, image_id = self._items[index]
        return index, pid, image_id

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        if self._columns is None:
            yield from super().__iter__()
            return
        yield from zip(range(len(self._items)), self._columns[0].tolist(), self._columns[1].tolist())


class T2ITestSet(Dataset):
    """Queries then gallery: index < num_query is a caption, the rest are images.

    ``__getitem__`` returns {"caption", "target"} for a query and {"image", "target",
    "img_id"} for a gallery image (raw person ids). ``query`` and ``gallery`` are stored as
    ``PackedItems`` (not copied into DataLoader workers).
    """

    def __init__(self, query: Sequence[tuple[str, int]], gallery: Sequence[tuple[str, int, int]],
                 transform: Callable) -> None:
        self.query = _packed(query, QUERY_ITEM, "T2ITestSet query")
        self.gallery = _packed(gallery, GALLERY_ITEM, "T2ITestSet gallery")
        self.num_query = len(self.query)
        self.transform = transform

    def __len__(self) -> int:
        return self.num_query + len(self.gallery)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < self.num_query:
            caption, pid = self.query[index]
            return {"caption": caption, "target": pid}
        path, pid, image_id = self.gallery[index - self.num_query]
        return {"image": self.transform(_read_listed_image(path)), "target": pid, "img_id": image_id}


def _tokenize(tokenizer: TextTokenizer, captions: list[str]) -> dict[str, torch.Tensor]:
    """B captions -> {"text_ids": long (B, L), "text_mask": long (B, L)}; L = MAX_LENGTH or the
    batch's longest caption rounded up to PAD_MULTIPLE (INPUT.TEXT.PADDING)."""
    tok = tokenizer(captions)
    return {"text_ids": tok["input_ids"].long(), "text_mask": tok["attention_mask"].long()}


class TrainCollator:
    """list of train dicts -> {"images" uint8 (B,3,H,W) 0-255, "text_ids" long (B,L), "text_mask" long (B,L),
    "targets" long (B,), "img_ids" long (B,), "seeds" long (B,)}, plus with ``mlm``
    {"mlm_ids" long (B,L), "mlm_labels" long (B,L)} and with ``iap`` {"iap_ids" long (B,L),
    "iap_labels" long (B,L)}.

    Images are stacked as the transform made them (uint8 from ``build_image_transform``; the
    model converts to float32 on its device); L per INPUT.TEXT.PADDING (see ``_tokenize``).
    "seeds" are the samples' own seeds (``sample_seed``; present when the items carry a "seed",
    i.e. when the dataset was indexed with ``(index, seed)`` as ``ResumableBatchSampler`` does);
    they stay on the CPU (the model reads ``seeds[0]`` without a device synchronisation).

    Args:
        tokenizer: the caption tokenizer.
        mlm: the MLM masking (``unipt_plugin.data.mlm_masking.MLMMasking``; pre-training with
            MODEL.PRETRAIN.MLM_WEIGHT > 0) or None: "mlm_ids" are the masked ids and
            "mlm_labels" the original id at predicted positions, -100 elsewhere, each caption
            masked from its own sample's seed.
        iap: PLIP's IAP masking (``unipt_plugin.data.attribute_masking.AttributeMasking``;
            pre-training with MODEL.PRETRAIN.IAP_WEIGHT > 0) or None: "iap_ids" are the ids with
            the attribute phrases of the items' "attribute_spans" masked, "iap_labels" the
            original id there, -100 elsewhere.
    """

    def __init__(self, tokenizer: TextTokenizer, mlm: MLMMasking | None = None,
                 iap: AttributeMasking | None = None) -> None:
        self.tokenizer = tokenizer
        self.mlm = mlm
        self.iap = iap

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = {"images": torch.stack([b["image"] for b in batch])}
        out.update(_tokenize(self.tokenizer, [b["caption"] for b in batch]))
        out["targets"] = torch.tensor([b["target"] for b in batch], dtype=torch.long)
        out["img_ids"] = torch.tensor([b["img_id"] for b in batch], dtype=torch.long)
        has_seed = ["seed" in b for b in batch]
        if all(has_seed):
            out["seeds"] = torch.tensor([b["seed"] for b in batch], dtype=torch.long)
        elif any(has_seed):
            raise ValueError("a training batch mixes items with and without a 'seed': index T2ITrainSet with "
                             "(index, seed) pairs for every item, as ResumableBatchSampler does")
        if self.mlm is not None:
            if "seeds" not in out:
                raise ValueError("MLM masking (MODEL.PRETRAIN.MLM_WEIGHT > 0) draws each caption's mask from its "
                                 "sample's seed, but the training items carry no 'seed': index T2ITrainSet with "
                                 "(index, seed) pairs, as ResumableBatchSampler does")
            out["mlm_ids"], out["mlm_labels"] = self.mlm(out["text_ids"], out["text_mask"], out["seeds"])
        if self.iap is not None:
            if not all("attribute_spans" in b for b in batch):
                raise ValueError("IAP masking (MODEL.PRETRAIN.IAP_WEIGHT > 0) needs each training item's "
                                 "'attribute_spans': build T2ITrainSet with an attribute span source, as "
                                 "build_t2i_train_loader does")
            out["iap_ids"], out["iap_labels"] = self.iap(
                [b["caption"] for b in batch], [b["attribute_spans"] for b in batch], out["text_ids"],
                out["text_mask"], out.get("seeds"))
        return out


class TestCollator:
    """list of test dicts of ONE modality -> a text batch {"text_ids", "text_mask", "targets"} or an
    image batch {"images", "targets", "img_ids"} (shapes as in ``TrainCollator``)."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = ["caption" in b for b in batch]
        if any(texts) and not all(texts):
            raise ValueError("a test batch mixes captions and images; use ModalityBatchSampler")
        targets = torch.tensor([b["target"] for b in batch], dtype=torch.long)
        if texts[0]:
            out = _tokenize(self.tokenizer, [b["caption"] for b in batch])
            out["targets"] = targets
            return out
        return {"images": torch.stack([b["image"] for b in batch]), "targets": targets,
                "img_ids": torch.tensor([b["img_id"] for b in batch], dtype=torch.long)}


def _shard(begin: int, end: int, rank: int, world_size: int) -> range:
    """Contiguous share of [begin, end) for ``rank``: sizes differ by at most one, in rank order."""
    n = end - begin
    lo = begin + (n * rank) // world_size
    hi = begin + (n * (rank + 1)) // world_size
    return range(lo, hi)


class ModalityBatchSampler(Sampler):
    """Batches of test indices that never mix queries (0..num_query-1) and gallery (num_query..).

    ``query_order`` (a permutation of the query indices; default: 0..num_query-1) is the order in
    which queries are batched: the test loader passes the queries sorted by caption length, so
    that each batch is padded to captions of similar length (dynamic padding does far less
    work). The evaluator's metrics do not depend on the order of the queries.

    With ``world_size`` processes, rank r gets the r-th contiguous share of that query order and
    of the gallery, so that gathering features in rank order gives the single-process order.
    """

    def __init__(self, num_query: int, num_gallery: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 query_order: Sequence[int] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"test batch size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        if query_order is None:
            self.query_order: Sequence[int] = range(num_query)
        else:
            if len(query_order) != num_query:
                raise ValueError(f"query_order has {len(query_order)} entries for {num_query} queries")
            self.query_order = [int(i) for i in query_order]
        self.ranges = [_shard(0, num_query, rank, world_size),
                       _shard(num_query, num_query + num_gallery, rank, world_size)]

    def __iter__(self) -> Iterator[list[int]]:
        queries, gallery = self.ranges
        for start in range(queries.start, queries.stop, self.batch_size):
            yield [self.query_order[i] for i in range(start, min(start + self.batch_size, queries.stop))]
        for start in range(gallery.start, gallery.stop, self.batch_size):
            yield list(range(start, min(start + self.batch_size, gallery.stop)))

    def __len__(self) -> int:
        return sum((len(r) + self.batch_size - 1) // self.batch_size for r in self.ranges)


def sample_seed(seed: int, rank: int, position: int) -> int:
    """The augmentation seed of the sample at ``position`` (0-based, counted over the whole
    training stream of process ``rank``) of a run seeded with ``seed``: distinct for distinct
    (seed, rank, position) with seed < 2**20, rank < 2**12, position < 2**31."""
    return ((int(seed) % 2 ** 20) << 43) | ((int(rank) % 2 ** 12) << 31) | (int(position) % 2 ** 31)


def derive_seed(seed: int, stream: int) -> int:
    """A sub-seed in [0, 2**64) of ``seed`` for the random draws of ``stream`` (MLM_SEED_STREAM,
    RANKING_SEED_STREAM): the first output of the SplitMix64 generator started at
    ``seed + stream * 0x9E3779B97F4A7C15`` (mod 2**64), i.e. SplitMix64's finaliser of
    ``seed + (stream + 1) * 0x9E3779B97F4A7C15``.

    The finaliser mixes every bit of the seed into every bit of the result. That matters for
    torch's CPU generator, whose ``manual_seed`` keeps only the low 32 bits: the sub-seed's low
    bits depend on the run seed, rank and position that ``sample_seed`` packs into 63 bits."""
    z = (int(seed) + (int(stream) + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class ResumableBatchSampler(Sampler):
    """Batches of ``(index, seed)`` from an infinite index sampler, startable at any batch.

    Args:
        sampler: an infinite iterable of dataset indices (fast-reid's ``TrainingSampler`` or
            identity samplers; they restart their stream from their own seed on every
            ``iter()``).
        batch_size: indices per batch.
        seed, rank: feed :func:`sample_seed` with the sample's stream position.

    ``start_batch`` (default 0) skips that many batches of the stream when the next iterator
    starts: the indices are drawn and discarded (cheap; no image is read), so the stream and
    the seeds continue exactly where an uninterrupted run would be. The trainer sets it on
    ``--resume`` to ``start_iter``.
    """

    def __init__(self, sampler: Iterable[int], batch_size: int, seed: int, rank: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"training batch size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.start_batch = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = iter(self.sampler)
        skip = self.start_batch * self.batch_size
        # consume() idiom: advance the stream without building the skipped batches
        next(itertools.islice(indices, skip, skip), None)
        position = skip
        while True:
            batch = list(itertools.islice(indices, self.batch_size))
            if len(batch) < self.batch_size:
                return  # a finite sampler ran out: drop the last, incomplete batch
            yield [(int(i), sample_seed(self.seed, self.rank, position + j)) for j, i in enumerate(batch)]
            position += self.batch_size
