"""Train / test loaders for text-image ReID (the batch contract of the project).

``build_t2i_train_loader(cfg)``: an infinite ``torch.utils.data.DataLoader`` over the training
items of every dataset in cfg.DATASETS.NAMES (pids and image ids offset so that they stay
distinct across datasets), batches of SOLVER.IMS_PER_BATCH // world_size:

    {"images": uint8 (B,3,H,W) 0-255, "text_ids": long (B,L), "text_mask": long (B,L),
     "targets": long (B,) 0..C-1, "img_ids": long (B,), "seeds": long (B,)}

"seeds" are the samples' own seeds (``sample_seed(run seed, rank, stream position)``, on the
CPU). Pre-training with MLM (MODEL.META_ARCHITECTURE UniPTPretrain, MODEL.PRETRAIN.MLM_WEIGHT
> 0) adds {"mlm_ids": long (B,L) the masked ids, "mlm_labels": long (B,L) the original id at
predicted positions, -100 elsewhere}: each caption masked on its own from its sample's seed
(``unipt_plugin.data.mlm_masking``). With PLIP's IAP (MODEL.PRETRAIN.IAP_WEIGHT > 0) it adds
{"iap_ids": long (B,L) the ids with the caption's attribute phrases masked, "iap_labels": long
(B,L) their original ids there, -100 elsewhere} (``unipt_plugin.data.attribute_spans`` says where
each dataset's phrases come from, ``unipt_plugin.data.attribute_masking`` how they are masked).

``build_t2i_test_loader(cfg, name) -> (loader, num_query)``: text batches {"text_ids" long
(B,L), "text_mask" long (B,L), "targets" long (B,)} for every query caption, then image batches
{"images" uint8 (B,3,H,W) 0-255, "targets" long (B,), "img_ids" long (B,)} for every gallery
image; raw person ids. Distributed: each rank gets a contiguous share of each modality (the
evaluator gathers in rank order).

Images stay uint8 up to the model (4x less shared memory and host-to-device traffic than
float32); the meta-architectures' ``ImageNormalizer`` converts them to float32 on the model's
device and normalises, giving the same values as float32 0-255 batches. Captions are padded per
INPUT.TEXT.PADDING: "longest" (default) = the batch's longest caption rounded up to
INPUT.TEXT.PAD_MULTIPLE (<= MAX_LENGTH), "max_length" = always MAX_LENGTH; "longest" is refused
for a meta-architecture that pools over padding (``tokenizer.check_padding``).

Plain torch DataLoaders (fast-reid's ``DataLoaderX`` needs CUDA): pin_memory only when CUDA is
available; workers are seeded from cfg.SEED (when >= 0) and the rank. Training batches come from
a ``ResumableBatchSampler``: each sample's augmentation and MLM mask are drawn from its own
seed (run seed, rank, stream position), so batches do not depend on the number of workers, and
``--resume`` can start the stream at any batch (docs/determinism.md).

Test loaders keep their worker processes between passes (persistent_workers when
DATALOADER.NUM_WORKERS > 0), and for a frozen cfg (a run's) the built test loader is cached per
dataset name: fast-reid's trainer calls ``build_test_loader`` at every evaluation, which then
reuses the same loader, its workers and its dataset instead of re-reading the annotations and
re-spawning the workers.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from fastreid.data import samplers
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from torch.utils.data import DataLoader

from .common import (IdentityView, ModalityBatchSampler, ResumableBatchSampler, T2ITestSet, T2ITrainSet,
                     TestCollator, TrainCollator)
from .attribute_masking import build_attribute_masking
from .attribute_spans import build_attribute_span_source
from .serialize import PackedItems
from .datasets.base import TextImageDataset
from .mlm_masking import build_mlm_masking
from .tokenizer import build_tokenizer
from .transforms import build_image_transform

__all__ = ["build_t2i_train_loader", "build_t2i_test_loader", "build_dataset", "clear_test_loader_cache",
           "seed_worker"]

logger = logging.getLogger(__name__)

_SAMPLERS = ("TrainingSampler", "NaiveIdentitySampler", "BalancedIdentitySampler")

# dataset name -> (cache key, loader, num_query); see build_t2i_test_loader.
_TEST_LOADERS: dict[str, tuple[tuple[str, int, int], DataLoader, int]] = {}


def build_dataset(cfg: Any, name: str) -> TextImageDataset:
    """The registered dataset ``name`` constructed on cfg.DATASETS.ROOT."""
    try:
        cls = DATASET_REGISTRY.get(name)
    except KeyError as e:
        raise KeyError(f"dataset {name!r} is not registered; text-image datasets: CUHKPEDES, CUHKPEDESVal, "
                       "ICFGPEDES, RSTPReid, LUPersonT, SYNTHPEDES") from e
    if not (isinstance(cls, type) and issubclass(cls, TextImageDataset)):
        raise TypeError(f"dataset {name!r} is a fast-reid image dataset, not a text-image dataset (image ReID: "
                        "MODEL.META_ARCHITECTURE Baseline, docs/image_reid.md)")
    return cls(root=cfg.DATASETS.ROOT, cfg=cfg)


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: fast-reid's ``seed_all_rng`` (torch, numpy, ``random``) from the worker's
    torch seed (the loader's base seed + worker id)."""
    seed_all_rng(torch.initial_seed() % 2 ** 32)


def _loader_generator(cfg: Any, offset: int) -> torch.Generator | None:
    """Generator fixing the workers' base seed: cfg.SEED + rank (+ offset); None when SEED < 0."""
    if int(cfg.SEED) < 0:
        return None
    g = torch.Generator()
    g.manual_seed(int(cfg.SEED) + 1000 * comm.get_rank() + offset)
    return g


def _per_process(total: int, what: str) -> int:
    world = comm.get_world_size()
    if total < world:
        raise ValueError(f"{what} = {total} is smaller than the number of processes ({world})")
    return total // world


def build_t2i_train_loader(cfg: Any) -> DataLoader:
    """Infinite training loader over cfg.DATASETS.NAMES; ``loader.dataset.num_classes`` = C."""
    parts: list[PackedItems] = []  # packed: loader workers do not copy the items (serialize.py)
    tokenizer = build_tokenizer(cfg)
    iap = build_attribute_masking(cfg, tokenizer)
    span_parts: list[tuple[TextImageDataset, int]] = []  # (dataset, image-id offset), kept for IAP only
    num_classes = 0
    num_images = 0
    for name in cfg.DATASETS.NAMES:
        data = build_dataset(cfg, name)
        if not data.train:
            raise ValueError(f"dataset {name!r} has no training split")
        if comm.is_main_process():
            data.show_train()
        # pids (field 2) and image ids (field 3) offset so that they stay distinct across datasets
        parts.append(data.train.shifted({2: num_classes, 3: num_images}))
        if iap is not None:
            span_parts.append((data, num_images))
        num_classes += data.num_classes
        num_images += data.num_train_images
    if not parts:
        raise ValueError("DATASETS.NAMES is empty: no training data")
    spans = build_attribute_span_source(cfg, span_parts) if iap is not None else None
    del span_parts  # the datasets themselves are not kept (the span source holds their columns only)
    train_set = T2ITrainSet(PackedItems.concatenate(parts), build_image_transform(cfg, is_train=True), num_classes,
                            attribute_spans=spans)

    mini_batch = _per_process(int(cfg.SOLVER.IMS_PER_BATCH), "SOLVER.IMS_PER_BATCH")
    # SEED < 0: one random seed shared by every process (as fast-reid's samplers draw it)
    seed = int(cfg.SEED) if int(cfg.SEED) >= 0 else comm.shared_random_seed()
    name = cfg.DATALOADER.SAMPLER_TRAIN
    logger.info("Using training sampler %s", name)
    if name == "TrainingSampler":
        sampler = samplers.TrainingSampler(len(train_set), shuffle=True, seed=seed)
    elif name in ("NaiveIdentitySampler", "BalancedIdentitySampler"):
        num_instance = int(cfg.DATALOADER.NUM_INSTANCE)
        if num_instance < 1 or mini_batch % num_instance:
            raise ValueError(f"DATALOADER.NUM_INSTANCE = {num_instance} must divide the per-process batch "
                             f"{mini_batch} (SOLVER.IMS_PER_BATCH // world size)")
        cls = getattr(samplers, name)
        sampler = cls(IdentityView(train_set.img_items), mini_batch, num_instance, seed=seed)
    else:
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN = {name!r}: expected one of {list(_SAMPLERS)}")
    batch_sampler = ResumableBatchSampler(sampler, mini_batch, seed=seed, rank=comm.get_rank())

    return DataLoader(
        train_set,
        batch_sampler=batch_sampler,
        num_workers=int(cfg.DATALOADER.NUM_WORKERS),
        collate_fn=TrainCollator(tokenizer, mlm=build_mlm_masking(cfg, tokenizer), iap=iap),
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker,
        generator=_loader_generator(cfg, 0),
    )


def clear_test_loader_cache() -> None:
    """Forget the cached test loaders (their worker processes end when the loaders are freed)."""
    _TEST_LOADERS.clear()


def build_t2i_test_loader(cfg: Any, dataset_name: str) -> tuple[DataLoader, int]:
    """(loader over queries then gallery, number of queries) for the test split of ``dataset_name``.

    With DATALOADER.NUM_WORKERS > 0 the workers persist between passes over the loader. For a
    frozen ``cfg`` (what a run uses), the loader is cached per dataset name: a later call with an
    equal config (same ``cfg.dump()``, rank and world size) returns the same loader; any other
    config replaces the cached one. An unfrozen cfg is never cached (it may still change).
    """
    key = None
    if cfg.is_frozen():
        key = (cfg.dump(), comm.get_rank(), comm.get_world_size())
        hit = _TEST_LOADERS.get(dataset_name)
        if hit is not None and hit[0] == key:
            logger.info("Reusing the test loader of %s", dataset_name)
            return hit[1], hit[2]
    data = build_dataset(cfg, dataset_name)
    if not data.query or not data.gallery:
        raise ValueError(f"dataset {dataset_name!r} has no test split (query / gallery)")
    if comm.is_main_process():
        data.show_test()
    test_set = T2ITestSet(data.query, data.gallery, build_image_transform(cfg, is_train=False))
    # Queries batched shortest caption first (characters, a proxy for tokens): each batch is
    # padded to captions of about the same length. Stable, so equal lengths keep file order.
    lengths = np.fromiter((len(caption) for caption, _ in data.query), dtype=np.int64, count=len(data.query))
    batch_sampler = ModalityBatchSampler(
        len(data.query), len(data.gallery),
        batch_size=max(1, int(cfg.TEST.IMS_PER_BATCH) // comm.get_world_size()),
        rank=comm.get_rank(), world_size=comm.get_world_size(),
        query_order=np.argsort(lengths, kind="stable").tolist(),
    )
    num_workers = int(cfg.DATALOADER.NUM_WORKERS)
    loader = DataLoader(
        test_set,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=TestCollator(build_tokenizer(cfg)),
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker,
        generator=_loader_generator(cfg, 1),
        persistent_workers=num_workers > 0,
    )
    if key is not None:
        _TEST_LOADERS[dataset_name] = (key, loader, len(data.query))
    return loader, len(data.query)
