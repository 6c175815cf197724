"""Image reading / transforms and the train / test loaders on raw-format fixture files."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from raw_fixtures import make_cuhk_pedes, make_luperson_t, make_rstpreid
from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.data import build_t2i_test_loader, build_t2i_train_loader
from unipt_plugin.data.common import ModalityBatchSampler, ResumableBatchSampler, sample_seed
from unipt_plugin.data.transforms import ImageReadError, build_image_transform, read_image

H, W = 32, 16


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = str(tmp_path_factory.mktemp("loader_data"))
    written = {"CUHKPEDES": make_cuhk_pedes(r, num_ids=4, images_per_id=2, captions_per_image=2, size=(40, 20)),
               "RSTPReid": make_rstpreid(r, num_ids=3, images_per_id=2, size=(40, 20)),
               "LUPersonT": make_luperson_t(r, num_images=6, captions_per_image=2, size=(40, 20))}
    return r, written


def _cfg(root, names=("CUHKPEDES",), batch=4, flip_prob=0.5, sampler="TrainingSampler", workers=0):
    cfg = get_unipt_cfg()
    cfg.DATASETS.ROOT = root
    cfg.DATASETS.NAMES = tuple(names)
    cfg.INPUT.SIZE_TRAIN = [H, W]
    cfg.INPUT.SIZE_TEST = [H, W]
    cfg.INPUT.FLIP.PROB = flip_prob
    cfg.INPUT.TEXT.MAX_LENGTH = 16
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.TEST.IMS_PER_BATCH = 5
    cfg.DATALOADER.SAMPLER_TRAIN = sampler
    cfg.DATALOADER.NUM_INSTANCE = 2
    cfg.DATALOADER.NUM_WORKERS = workers
    return cfg


# ---------------------------------------------------------------------- images
def _save(path, arr, mode=None, **kw):
    Image.fromarray(arr, mode).save(path, **kw) if mode else Image.fromarray(arr).save(path, **kw)
    return str(path)


def test_read_image_modes(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 4), dtype=np.uint8)
    img = read_image(_save(tmp_path / "g.png", gray))
    assert img.mode == "RGB" and np.array_equal(np.asarray(img)[..., 1], gray)

    rgba = rng.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    img = read_image(_save(tmp_path / "a.png", rgba))
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), rgba[..., :3])

    g16 = (gray.astype(np.uint16) * 257)  # 16-bit with the same 8-bit content
    p16 = tmp_path / "g16.png"
    Image.fromarray(g16).save(p16)
    assert Image.open(p16).mode.startswith("I")
    assert np.array_equal(np.asarray(read_image(str(p16)))[..., 0], gray)

    rgb = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(np.asarray(read_image(str(tmp_path / "p.png"))), np.asarray(pal.convert("RGB")))


def test_read_image_bad_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.jpg"):
        read_image(str(tmp_path / "empty.jpg"))
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_image(str(tmp_path / "junk.png"))
    good = _save(tmp_path / "full.jpg", np.random.default_rng(1).integers(0, 256, (64, 32, 3), dtype=np.uint8))
    data = open(good, "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(str(tmp_path / "cut.jpg"))
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_image(str(tmp_path / "absent.png"))


def test_transform_resize_scale_and_flip(tmp_path, root):
    cfg = _cfg(root[0])
    arr = np.random.default_rng(2).integers(0, 256, (40, 20, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    test_t = build_image_transform(cfg, is_train=False)
    plain = test_t(img)
    # uint8 0-255, not normalised: exactly PIL's own bicubic resize of the 8-bit image
    ref = np.asarray(img.resize((W, H), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    assert plain.dtype == torch.uint8 and plain.shape == (3, H, W)
    assert torch.equal(plain, torch.from_numpy(ref.copy()))
    cfg.INPUT.FLIP.PROB = 1.0
    assert torch.equal(build_image_transform(cfg, is_train=True)(img), plain.flip(-1))
    cfg.INPUT.FLIP.PROB = 0.0
    assert torch.equal(build_image_transform(cfg, is_train=True)(img), plain)
    cfg.INPUT.FLIP.PROB = 1.0
    cfg.INPUT.FLIP.ENABLED = False
    assert torch.equal(build_image_transform(cfg, is_train=True)(img), plain)


# ---------------------------------------------------------------------- train loader
def _width(mask, max_length=16, multiple=8):
    """Expected padded width under the default INPUT.TEXT.PADDING "longest": the longest caption
    (real tokens of the mask) rounded up to a multiple of 8, at most MAX_LENGTH."""
    longest = int(mask.sum(1).max())
    return min(max_length, -(-longest // multiple) * multiple)


def _unflipped(cfg, path):
    return build_image_transform(cfg, is_train=False)(read_image(path))


@pytest.mark.parametrize("prob", [1.0, 0.0])
def test_train_batches(root, prob):
    r, written = root
    cfg = _cfg(r, flip_prob=prob)
    loader = build_t2i_train_loader(cfg)
    w = written["CUHKPEDES"]
    assert loader.dataset.num_classes == w["train"]["ids"]
    assert len(loader.dataset) == w["train"]["captions"]
    items = loader.dataset.img_items
    path_of_img = {img_id: p for p, _, _, img_id in items}
    pid_of_img = {img_id: pid for _, _, pid, img_id in items}
    batch = next(iter(loader))
    # no MLM keys: the default MODEL.META_ARCHITECTURE is not UniPTPretrain (tests/test_mlm_collator.py)
    assert set(batch) == {"images", "text_ids", "text_mask", "targets", "img_ids", "seeds"}
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (4, 3, H, W)
    for key in ("text_ids", "text_mask", "targets", "img_ids", "seeds"):
        assert batch[key].dtype == torch.long
    # the samples' own seeds: positions 0..3 of rank 0's stream of a run seeded cfg.SEED
    assert batch["seeds"].tolist() == [sample_seed(int(cfg.SEED), 0, p) for p in range(4)]
    assert batch["text_ids"].shape == batch["text_mask"].shape == (4, _width(batch["text_mask"]))
    assert batch["images"].max() > 1 and batch["images"].min() >= 0  # 0-255 scale
    for i in range(4):
        img_id = int(batch["img_ids"][i])
        assert int(batch["targets"][i]) == pid_of_img[img_id]
        ref = _unflipped(cfg, path_of_img[img_id])
        assert torch.equal(batch["images"][i], ref.flip(-1) if prob == 1.0 else ref)
        assert not torch.equal(ref, ref.flip(-1))  # the check can tell


def test_train_captions_match_items(root):
    r, _ = root
    cfg = _cfg(r, batch=4)
    loader = build_t2i_train_loader(cfg)
    from unipt_plugin.data import build_tokenizer
    tok = build_tokenizer(cfg)
    captions_of_img = {}
    for _, c, _, img_id in loader.dataset.img_items:
        one = tok([c])  # alone: padded to its own length
        captions_of_img.setdefault(img_id, []).append(one["input_ids"][0][one["attention_mask"][0].bool()])
    for batch in itertools.islice(loader, 3):
        for ids, mask, img_id in zip(batch["text_ids"], batch["text_mask"], batch["img_ids"].tolist()):
            assert any(torch.equal(ids[mask.bool()], ref) for ref in captions_of_img[img_id])
            assert (ids[~mask.bool()] == tok.pad_id).all()


def test_training_sampler_covers_an_epoch_and_is_seeded(root):
    r, written = root
    n = written["CUHKPEDES"]["train"]["captions"]  # 16
    cfg = _cfg(r, batch=4)
    seen = [tuple(b["img_ids"].tolist()) for b in itertools.islice(build_t2i_train_loader(cfg), n // 4)]
    again = [tuple(b["img_ids"].tolist()) for b in itertools.islice(build_t2i_train_loader(cfg), n // 4)]
    assert seen == again
    counts = Counter(i for b in seen for i in b)  # one epoch = every caption once = 2 per image
    assert set(counts.values()) == {2} and len(counts) == written["CUHKPEDES"]["train"]["images"]


@pytest.mark.parametrize("sampler", ["NaiveIdentitySampler", "BalancedIdentitySampler"])
def test_identity_samplers(root, sampler):
    r, _ = root
    loader = build_t2i_train_loader(_cfg(r, batch=4, sampler=sampler))
    for batch in itertools.islice(loader, 4):
        counts = Counter(batch["targets"].tolist())
        assert sorted(counts.values()) == [2, 2]  # 2 identities x NUM_INSTANCE 2


def test_several_datasets_and_luperson(root):
    r, written = root
    loader = build_t2i_train_loader(_cfg(r, names=("CUHKPEDES", "RSTPReid", "LUPersonT"), batch=6))
    c, s, lp = (written[k]["train"] for k in ("CUHKPEDES", "RSTPReid", "LUPersonT"))
    assert loader.dataset.num_classes == c["ids"] + s["ids"] + lp["images"]
    items = loader.dataset.img_items
    assert len(items) == c["captions"] + s["captions"] + lp["captions"]
    assert sorted({pid for _, _, pid, _ in items}) == list(range(loader.dataset.num_classes))
    assert len({img for _, _, _, img in items}) == c["images"] + s["images"] + lp["images"]
    batch = next(iter(loader))
    assert batch["images"].shape == (6, 3, H, W)


def test_worker_processes(root):
    r, _ = root
    cfg = _cfg(r, batch=4, workers=1)
    a = next(iter(build_t2i_train_loader(cfg)))
    b = next(iter(build_t2i_train_loader(cfg)))
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["text_ids"], b["text_ids"])


def _batches(loader, n):
    return [{k: v.clone() for k, v in b.items()} for b in itertools.islice(loader, n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("sampler", ["TrainingSampler", "NaiveIdentitySampler"])
def test_loader_started_at_batch_k_continues_the_uninterrupted_stream(root, sampler):
    # What --resume relies on: a loader told to start at batch k yields exactly batches k, k+1, ...
    # of an uninterrupted loader: same indices, same captions, same random flips.
    r, _ = root
    cfg = _cfg(r, batch=4, flip_prob=0.5, sampler=sampler)
    full = _batches(build_t2i_train_loader(cfg), 7)
    resumed = build_t2i_train_loader(cfg)
    resumed.batch_sampler.start_batch = 3
    _assert_same_batches(_batches(resumed, 4), full[3:])


def test_flips_follow_the_sample_position_not_the_worker(root):
    # Augmentation draws come from each sample's own seed: 0 and 2 worker processes give the
    # same batches, and the flips are a real mix (both flipped and unflipped samples).
    r, _ = root
    base = _batches(build_t2i_train_loader(_cfg(r, batch=4, flip_prob=0.5, workers=0)), 6)
    multi = _batches(build_t2i_train_loader(_cfg(r, batch=4, flip_prob=0.5, workers=2)), 6)
    _assert_same_batches(base, multi)
    cfg = _cfg(r, batch=4, flip_prob=0.5)
    items = build_t2i_train_loader(cfg).dataset.img_items
    path_of_img = {img_id: p for p, _, _, img_id in items}
    flipped = []
    for b in base:
        for img, img_id in zip(b["images"], b["img_ids"].tolist()):
            ref = _unflipped(cfg, path_of_img[img_id])
            assert torch.equal(img, ref) or torch.equal(img, ref.flip(-1))
            flipped.append(not torch.equal(img, ref))
    assert 0 < sum(flipped) < len(flipped)


def test_resumable_batch_sampler_positions_and_seeds():
    s = ResumableBatchSampler(range(10), batch_size=3, seed=7, rank=1)
    batches = list(s)
    assert [[i for i, _ in b] for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # last partial dropped
    assert batches[1][2][1] == sample_seed(7, 1, 5)
    assert sample_seed(7, 1, 5) == (7 << 43) | (1 << 31) | 5  # bit layout, by hand
    s.start_batch = 2
    assert list(s) == batches[2:]
    seeds = {sample_seed(seed, rank, pos) for seed in (0, 1) for rank in (0, 3) for pos in (0, 1, 2 ** 20)}
    assert len(seeds) == 12
    with pytest.raises(ValueError, match="batch size"):
        ResumableBatchSampler(range(4), batch_size=0, seed=0)


def test_bad_loader_config(root):
    r, _ = root
    with pytest.raises(ValueError, match="SAMPLER_TRAIN"):
        build_t2i_train_loader(_cfg(r, sampler="RandomSampler"))
    with pytest.raises(ValueError, match="NUM_INSTANCE"):
        build_t2i_train_loader(_cfg(r, batch=5, sampler="NaiveIdentitySampler"))
    with pytest.raises(ValueError, match="no test split"):
        build_t2i_test_loader(_cfg(r), "LUPersonT")
    with pytest.raises(KeyError, match="Market"):
        build_t2i_test_loader(_cfg(r), "Market")


# ---------------------------------------------------------------------- test loader
@pytest.mark.parametrize("name", ["CUHKPEDES", "CUHKPEDESVal", "RSTPReid"])
def test_test_loader_covers_everything_once(root, name):
    r, written = root
    split = "val" if name.endswith("Val") else "test"
    w = written["CUHKPEDES" if name.startswith("CUHK") else name]
    loader, num_query = build_t2i_test_loader(_cfg(r), name)
    assert num_query == w[split]["captions"]
    text_pids, img_ids, img_pids, seen_images = [], [], [], False
    for batch in loader:
        if "images" in batch:
            seen_images = True
            assert set(batch) == {"images", "targets", "img_ids"}
            assert batch["images"].shape[1:] == (3, H, W) and batch["images"].dtype == torch.uint8
            img_ids += batch["img_ids"].tolist()
            img_pids += batch["targets"].tolist()
        else:
            assert not seen_images  # queries first
            assert set(batch) == {"text_ids", "text_mask", "targets"}
            assert batch["text_ids"].dtype == torch.long and batch["text_ids"].shape[1] == _width(batch["text_mask"])
            text_pids += batch["targets"].tolist()
    recs = [x for x in w["records"] if x["split"] == split]
    assert Counter(text_pids) == Counter(x["pid"] for x in recs for _ in x["captions"])  # raw ids
    assert sorted(img_ids) == list(range(w[split]["images"]))
    assert Counter(img_pids) == Counter(x["pid"] for x in recs)


def test_modality_batch_sampler_distributed():
    num_query, num_gallery, world = 11, 7, 3
    per_rank = [list(ModalityBatchSampler(num_query, num_gallery, 2, rank, world)) for rank in range(world)]
    for batches in per_rank:
        for b in batches:
            assert all(i < num_query for i in b) or all(i >= num_query for i in b)
    # gathering in rank order restores queries 0..Q-1, then gallery Q..Q+G-1
    queries = [i for batches in per_rank for b in batches for i in b if i < num_query]
    gallery = [i for batches in per_rank for b in batches for i in b if i >= num_query]
    assert queries == list(range(num_query)) and gallery == list(range(num_query, num_query + num_gallery))
    sizes = [sum(len(b) for b in batches if b[0] < num_query) for batches in per_rank]
    assert sizes == [3, 4, 4]  # floor(11 * r / 3) boundaries
    for rank in range(world):
        s = ModalityBatchSampler(num_query, num_gallery, 2, rank, world)
        assert len(s) == len(list(s))


def test_modality_batch_sampler_query_order_is_split_in_rank_order():
    num_query, num_gallery, world = 11, 5, 3
    order = [4, 9, 0, 10, 2, 7, 1, 8, 3, 6, 5]
    single = [i for b in ModalityBatchSampler(num_query, num_gallery, 4, query_order=order) for i in b]
    assert single == order + list(range(num_query, num_query + num_gallery))
    gathered = [i for rank in range(world) for b in ModalityBatchSampler(num_query, num_gallery, 2, rank, world,
                                                                         query_order=order) for i in b if i < num_query]
    assert gathered == order  # rank shares of the order, concatenated in rank order
    with pytest.raises(ValueError, match="query_order has 3 entries for 11 queries"):
        ModalityBatchSampler(num_query, num_gallery, 2, query_order=[0, 1, 2])


def test_test_loader_batches_queries_by_caption_length(root):
    # Each query once, shortest caption first, so a batch is padded to similar lengths.
    r, _ = root
    cfg = _cfg(r)
    loader, num_query = build_t2i_test_loader(cfg, "CUHKPEDES")
    order = [i for b in loader.batch_sampler for i in b if i < num_query]
    assert sorted(order) == list(range(num_query))
    lengths = [len(loader.dataset.query[i][0]) for i in order]
    assert lengths == sorted(lengths) and len(set(lengths)) > 1


# ---------------------------------------------------------------------- test loader: persistent, cached
@pytest.fixture()
def no_cached_loaders():
    from unipt_plugin.data.build import clear_test_loader_cache

    clear_test_loader_cache()
    yield
    clear_test_loader_cache()  # the cached loaders' worker processes end with them


def test_test_loader_workers_persist_between_passes(root, no_cached_loaders):
    r, _ = root
    assert build_t2i_test_loader(_cfg(r, workers=0), "CUHKPEDES")[0].persistent_workers is False
    loader, _ = build_t2i_test_loader(_cfg(r, workers=1), "CUHKPEDES")
    assert loader.persistent_workers is True
    first = _batches(loader, len(loader))
    pids = [w.pid for w in loader._iterator._workers]
    second = _batches(loader, len(loader))
    assert [w.pid for w in loader._iterator._workers] == pids  # the same worker processes
    _assert_same_batches(first, second)
    _assert_same_batches(first, _batches(build_t2i_test_loader(_cfg(r, workers=0), "CUHKPEDES")[0], len(loader)))


def test_test_loader_is_cached_for_a_frozen_config(root, no_cached_loaders):
    r, _ = root
    cfg = _cfg(r)
    cfg.freeze()
    loader, num_query = build_t2i_test_loader(cfg, "CUHKPEDES")
    again, n_again = build_t2i_test_loader(cfg.clone(), "CUHKPEDES")  # an equal config: the same loader
    assert again is loader and n_again == num_query
    assert build_t2i_test_loader(cfg, "RSTPReid")[0] is not loader  # per dataset name
    assert build_t2i_test_loader(cfg, "CUHKPEDES")[0] is loader
    other = _cfg(r)
    other.TEST.IMS_PER_BATCH = 3
    other.freeze()
    replaced, _ = build_t2i_test_loader(other, "CUHKPEDES")  # another config: rebuilt
    assert replaced is not loader and replaced.batch_sampler.batch_size == 3
    unfrozen = _cfg(r)  # never cached: it may still change
    assert build_t2i_test_loader(unfrozen, "CUHKPEDES")[0] is not build_t2i_test_loader(unfrozen, "CUHKPEDES")[0]


# ---------------------------------------------------------------------- per-sample seeding
def _seeded_items(cfg):
    loader = build_t2i_train_loader(cfg)
    return loader, loader.dataset


def test_seeded_items_never_touch_cuda_generators(root, monkeypatch):
    r, _ = root
    cfg = _cfg(r, batch=4, flip_prob=0.5, workers=0)
    loader, dataset = _seeded_items(cfg)
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(("manual_seed_all", seed)))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(("manual_seed", seed)))
    torch.manual_seed(123)  # the spy can tell: torch.manual_seed reseeds the CUDA generators
    assert calls == [("manual_seed_all", 123)]
    calls.clear()
    cpu_state = torch.get_rng_state()
    seeds = [sample_seed(0, 0, p) for p in range(12)]
    items = [dataset[(i % len(dataset), s)] for i, s in enumerate(seeds)]
    for _ in itertools.islice(loader, 2):  # and through the loader (NUM_WORKERS 0: this process)
        pass
    assert calls == []
    assert torch.equal(torch.get_rng_state(), cpu_state)  # the process's CPU RNG is left as it was
    # the flips are those of the CPU generator seeded with each sample's augmentation sub-seed,
    # drawn by hand
    from unipt_plugin.data.common import AUGMENT_SEED_STREAM, derive_seed

    flipped = []
    for i, (seed, item) in enumerate(zip(seeds, items)):
        path = dataset.img_items[i % len(dataset)][0]
        ref = _unflipped(cfg, path)
        aug_seed = derive_seed(seed, AUGMENT_SEED_STREAM)
        flip = bool(torch.rand(1, generator=torch.Generator().manual_seed(aug_seed)) < 0.5)
        assert torch.equal(item["image"], ref.flip(-1) if flip else ref), i
        flipped.append(flip)
    assert 0 < sum(flipped) < len(flipped)  # both outcomes occur: the comparison can tell


def test_augmentation_depends_on_the_run_seed_and_rank(root):
    """The flips at the same stream positions differ between run seeds and between ranks (torch
    keeps only the low 32 bits of a seed: the raw sample seed would give every run the same flips)."""
    r, _ = root
    cfg = _cfg(r, batch=4, flip_prob=0.5, workers=0)
    _, dataset = _seeded_items(cfg)
    ref = _unflipped(cfg, dataset.img_items[0][0])

    def flips(seed, rank):
        return [not torch.equal(dataset[(0, sample_seed(seed, rank, p))]["image"], ref) for p in range(24)]

    base = flips(0, 0)
    assert 0 < sum(base) < len(base)
    assert flips(1, 0) != base and flips(0, 1) != base and flips(0, 2) != base


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_seeded_items_leave_the_cuda_rng_state_unchanged(root):
    r, _ = root
    _, dataset = _seeded_items(_cfg(r, batch=4, flip_prob=0.5, workers=0))
    torch.cuda.manual_seed_all(7)
    before = torch.cuda.get_rng_state()
    for p in range(8):
        dataset[(p % len(dataset), sample_seed(0, 0, p))]
    assert torch.equal(torch.cuda.get_rng_state(), before)
