"""Image-ReID loaders over fast-reid's own image datasets (Market1501, DukeMTMC, MSMT17, ...), for ``Baseline``.

fast-reid's ``build_reid_train_loader`` / ``build_reid_test_loader`` use its ``DataLoaderX``,
which needs CUDA, and read the datasets under the environment variable FASTREID_DATASETS. These
builders keep everything else of fast-reid (its registered dataset classes, their parsing of
the folders, its ``CommDataset`` relabelling, its samplers and its batch collator) and run on
the CPU or one GPU per process, the plugin's way:

* the datasets are read under DATASETS.ROOT (fast-reid's ``Market1501`` reads
  ``<ROOT>/Market-1501-v15.09.15/``), DATASETS.COMBINEALL as in fast-reid;
* images are read with ``unipt_plugin.data.transforms.read_image`` (8-bit RGB whatever the file
  holds, errors naming the file) and transformed by ``build_image_transform`` (fast-reid's
  INPUT augmentation keys, uint8 (3, H, W) 0-255);
* training batches come from a ``ResumableBatchSampler`` over fast-reid's TrainingSampler /
  NaiveIdentitySampler / BalancedIdentitySampler: each sample's augmentation is drawn from its
  own seed (run seed, rank, stream position), so batches do not depend on the number of workers
  and ``--resume`` continues the stream exactly (docs/determinism.md);
* batches reach the model on its device (MODEL.DEVICE) as fast-reid's ``Baseline`` expects them,
  ``{"images": float32 (B, 3, H, W) 0-255, "targets": long (B,), "camids": long (B,), ...}``
  (``Baseline`` normalises the images in place with MODEL.PIXEL_MEAN / PIXEL_STD): the uint8
  batch is moved first and converted on the device (:class:`DeviceBatches`, what fast-reid's
  ``DataLoaderX`` does with a CUDA stream).

Training items are fast-reid's ``(img_path, pid, camid)`` with pid / camid relabelled to
0..C-1 / 0..K-1 (``CommDataset``); test items keep the raw ids: query first, then gallery,
``num_query`` = the number of queries, as fast-reid's ``ReidEvaluator`` reads them.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from fastreid.data import samplers
from fastreid.data.build import fast_batch_collator
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset
from fastreid.utils import comm
from torch.utils.data import DataLoader

from .build import _loader_generator, _per_process, seed_worker
from .common import AUGMENT_SEED_STREAM, ResumableBatchSampler, derive_seed
from .datasets.base import TextImageDataset
from .transforms import build_image_transform, read_image

__all__ = ["ImageReIDSet", "DeviceBatches", "build_image_reid_dataset", "build_image_reid_train_loader",
           "build_image_reid_test_loader"]

logger = logging.getLogger(__name__)

_SAMPLERS = ("TrainingSampler", "NaiveIdentitySampler", "BalancedIdentitySampler")


def build_image_reid_dataset(cfg: Any, name: str) -> ImageDataset:
    """fast-reid's registered image dataset ``name`` read under cfg.DATASETS.ROOT.

    Raises:
        KeyError: ``name`` is not registered. TypeError: it is a text-image dataset.
        FileNotFoundError: its folders are missing (naming the dataset, DATASETS.ROOT and the folder).
    """
    try:
        cls = DATASET_REGISTRY.get(name)
    except KeyError as e:
        raise KeyError(f"dataset {name!r} is not registered; fast-reid's image-ReID datasets include Market1501, "
                       "DukeMTMC, MSMT17, CUHK03") from e
    if isinstance(cls, type) and issubclass(cls, TextImageDataset):
        raise TypeError(f"dataset {name!r} is a text-image dataset; MODEL.META_ARCHITECTURE Baseline (image ReID) "
                        "trains and tests on fast-reid's image datasets (Market1501, DukeMTMC, MSMT17, ...)")
    root = str(cfg.DATASETS.ROOT)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{name}: datasets root {root!r} (DATASETS.ROOT) does not exist")
    try:
        return cls(root=root, combineall=bool(cfg.DATASETS.COMBINEALL))
    except RuntimeError as e:  # fast-reid's check_before_run: '"<path>" is not found'
        raise FileNotFoundError(f"{name} under DATASETS.ROOT {root!r}: {e} (fast-reid's {cls.__name__} layout, e.g. "
                                "<ROOT>/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/; "
                                "docs/image_reid.md)") from e


class ImageReIDSet(CommDataset):
    """fast-reid's ``CommDataset`` (relabelling, ``num_classes``, ``img_items``) reading with the
    plugin's ``read_image`` and indexable by ``index`` or ``(index, seed)``.

    With a seed (what ``ResumableBatchSampler`` yields) the transform's random draws come from
    torch's CPU generator seeded with ``derive_seed(seed, AUGMENT_SEED_STREAM)`` inside
    ``torch.random.fork_rng`` (as ``T2ITrainSet``), and the item carries it as "seeds".
    ``__getitem__`` -> {"images": uint8 (3, H, W), "targets": pid, "camids": camid, "img_paths": str}.
    """

    def __init__(self, img_items: list[tuple], transform: Callable, relabel: bool = True) -> None:
        super().__init__(img_items, transform, relabel=relabel)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        img_path, pid, camid = self.img_items[index][:3]
        img = read_image(img_path)
        if seed is None:
            image = self.transform(img)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(derive_seed(seed, AUGMENT_SEED_STREAM))
                image = self.transform(img)
        if self.relabel:
            pid, camid = self.pid_dict[pid], self.cam_dict[camid]
        item = {"images": image, "targets": pid, "camids": camid, "img_paths": img_path}
        if seed is not None:
            item["seeds"] = int(seed)
        return item


class DeviceBatches:
    """A DataLoader whose batches come out on ``device``, "images" as float32 (0-255).

    Iterating yields fast-reid's batch dicts with every tensor moved (non-blocking; the uint8
    images are converted after the move). ``dataset``, ``batch_sampler`` and ``len()`` are the
    loader's (the trainer reads ``dataset.num_classes`` and sets ``batch_sampler.start_batch``).
    """

    def __init__(self, loader: DataLoader, device: torch.device | str) -> None:
        self.loader = loader
        self.device = torch.device(device)

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    @property
    def batch_sampler(self) -> Any:
        return self.loader.batch_sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dev = self.device
        for batch in self.loader:
            out = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            out["images"] = out["images"].to(torch.float32)
            yield out


def _device(cfg: Any) -> torch.device:
    """MODEL.DEVICE as a torch device ("cuda" = this process's current GPU, as the launcher set it)."""
    name = str(cfg.MODEL.DEVICE)
    if name == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def build_image_reid_train_loader(cfg: Any) -> DeviceBatches:
    """Infinite training batches over the training items of cfg.DATASETS.NAMES (fast-reid image
    datasets, concatenated; ids relabelled over all of them); ``loader.dataset.num_classes`` = C."""
    items: list[tuple] = []
    for name in cfg.DATASETS.NAMES:
        data = build_image_reid_dataset(cfg, name)
        if not data.train:
            raise ValueError(f"dataset {name!r} has no training images under DATASETS.ROOT {cfg.DATASETS.ROOT!r}")
        if comm.is_main_process():
            data.show_train()
        items.extend(data.train)
    if not items:
        raise ValueError("DATASETS.NAMES is empty: no training data")
    train_set = ImageReIDSet(items, build_image_transform(cfg, is_train=True), relabel=True)
    mini_batch = _per_process(int(cfg.SOLVER.IMS_PER_BATCH), "SOLVER.IMS_PER_BATCH")
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
        sampler = getattr(samplers, name)(train_set.img_items, mini_batch, num_instance, seed=seed)
    else:
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN = {name!r}: expected one of {list(_SAMPLERS)}")
    loader = DataLoader(
        train_set,
        batch_sampler=ResumableBatchSampler(sampler, mini_batch, seed=seed, rank=comm.get_rank()),
        num_workers=int(cfg.DATALOADER.NUM_WORKERS),
        collate_fn=fast_batch_collator,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker,
        generator=_loader_generator(cfg, 0),
    )
    return DeviceBatches(loader, _device(cfg))


def build_image_reid_test_loader(cfg: Any, dataset_name: str) -> tuple[DeviceBatches, int]:
    """(batches of the query images then the gallery images of ``dataset_name``, number of
    queries); raw person and camera ids. Distributed: each rank gets a contiguous share of the
    whole sequence (fast-reid's ``InferenceSampler``), which ``ReidEvaluator`` gathers in rank order."""
    data = build_image_reid_dataset(cfg, dataset_name)
    if not data.query or not data.gallery:
        raise ValueError(f"dataset {dataset_name!r} has no test split (query / gallery) under DATASETS.ROOT "
                         f"{cfg.DATASETS.ROOT!r}")
    if comm.is_main_process():
        data.show_test()
    test_set = ImageReIDSet(list(data.query) + list(data.gallery), build_image_transform(cfg, is_train=False),
                            relabel=False)
    batch_size = max(1, int(cfg.TEST.IMS_PER_BATCH) // comm.get_world_size())
    num_workers = int(cfg.DATALOADER.NUM_WORKERS)
    loader = DataLoader(
        test_set,
        batch_sampler=torch.utils.data.BatchSampler(samplers.InferenceSampler(len(test_set)), batch_size, False),
        num_workers=num_workers,
        collate_fn=fast_batch_collator,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker,
        generator=_loader_generator(cfg, 1),
    )
    return DeviceBatches(loader, _device(cfg)), len(data.query)
