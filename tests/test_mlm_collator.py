"""MLM masks drawn in the training collator, per sample from the sample's own seed.

Statistics over many captions (share of selected candidates, the 80/10/10 split, whole words
masked together, special and padding tokens never selected), the mask of a caption independent
of the batch it is in and of the padded width, batches rebuilt from the same seeds identical, the
seed derivation (SplitMix64's published outputs), and the real training loader: the keys only
when pre-training with MLM, the seeds of the stream positions, a loader started at batch k."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from raw_fixtures import make_luperson_t
from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.data import build_t2i_train_loader
from unipt_plugin.data.common import MLM_SEED_STREAM, TrainCollator, derive_seed, sample_seed
from unipt_plugin.data.mlm_masking import IGNORE_INDEX, MLMMasking, build_mlm_masking, mask_tokens
from unipt_plugin.data.tokenizer import build_tokenizer

# Words of one to three WordPieces in bert-base-uncased ("hand ##bag", "leg ##ging ##s", ...).
WORDS = ("a man woman wearing black white red jeans backpack sneakers with and the handbag checkered "
         "cardigan leggings flipflops headphones turtleneck overalls").split()


def _cfg(padding: str = "longest", **opts):
    cfg = get_unipt_cfg()
    cfg.MODEL.META_ARCHITECTURE = "UniPTPretrain"
    cfg.INPUT.TEXT.MAX_LENGTH = 40
    cfg.INPUT.TEXT.PADDING = padding
    cfg.merge_from_list([x for pair in opts.items() for x in pair])
    return cfg


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(_cfg())


def _captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))) + "." for _ in range(n)]


def _items(captions, seeds):
    return [{"image": torch.zeros(3, 2, 2, dtype=torch.uint8), "caption": c, "target": 0, "img_id": i, "seed": s}
            for i, (c, s) in enumerate(zip(captions, seeds))]


def _collator(cfg, tokenizer=None):
    tok = tokenizer if tokenizer is not None else build_tokenizer(cfg)
    return TrainCollator(tok, mlm=build_mlm_masking(cfg, tok))


def _words(tokenizer, ids):
    """Word index of every token (B, L): pieces share the index of the word start before them."""
    return torch.cumsum(tokenizer.word_start_mask(ids).long(), dim=1)


# ---------------------------------------------------------------------- statistics
@pytest.mark.parametrize("whole_word", [False, True])
def test_masking_statistics_over_many_captions(tokenizer, whole_word):
    cfg = _cfg(**{"MODEL.PRETRAIN.WHOLE_WORD_MASK": whole_word})
    collate = _collator(cfg, tokenizer)
    specials = torch.tensor(tokenizer.special_ids)
    n_cand = n_sel = n_mask = n_rand = n_same = 0
    n_words = n_words_sel = 0
    for b in range(25):
        captions = _captions(64, seed=b)
        batch = collate(_items(captions, [sample_seed(3, 0, 64 * b + j) for j in range(64)]))
        ids, real, masked, labels = batch["text_ids"], batch["text_mask"].bool(), batch["mlm_ids"], batch["mlm_labels"]
        assert masked.dtype == labels.dtype == torch.long and masked.shape == labels.shape == ids.shape
        cand = real & ~torch.isin(ids, specials)
        sel = labels != IGNORE_INDEX
        # never a special or padding token; labels are the original ids; unselected tokens untouched
        assert not (sel & ~cand).any()
        assert torch.equal(labels[sel], ids[sel]) and torch.equal(masked[~sel], ids[~sel])
        n_cand += int(cand.sum())
        n_sel += int(sel.sum())
        n_mask += int((masked[sel] == tokenizer.mask_id).sum())
        rnd = sel & (masked != tokenizer.mask_id) & (masked != ids)
        n_rand += int(rnd.sum())
        n_same += int((sel & (masked == ids)).sum())
        # random replacements: non-special ids of the vocabulary
        assert not torch.isin(masked[rnd], specials).any() and int(masked.max()) < tokenizer.vocab_size
        words = _words(tokenizer, ids)
        for r in range(ids.shape[0]):
            for w in words[r][cand[r]].unique().tolist():
                in_word = (words[r] == w) & cand[r]
                picked = sel[r][in_word]
                n_words += 1
                n_words_sel += int(picked.any())
                if whole_word:
                    assert picked.all() or not picked.any(), "a word was partly masked"
    assert n_cand > 20000
    # ~15% selected (per token; per word with whole-word masking, which keeps ~15% of tokens)
    assert n_sel / n_cand == pytest.approx(0.15, abs=0.01)
    if whole_word:
        assert n_words_sel / n_words == pytest.approx(0.15, abs=0.01)
        # multi-piece words exist and were masked whole, so the test can tell
        assert n_words < n_cand * 0.8
    else:
        # token by token, a multi-piece word is selected when any of its pieces is: above 15%
        assert n_words_sel / n_words > 0.17
    assert n_mask / n_sel == pytest.approx(0.8, abs=0.02)
    assert n_rand / n_sel == pytest.approx(0.1, abs=0.015)
    assert n_same / n_sel == pytest.approx(0.1, abs=0.015)


def test_padding_and_special_tokens_never_selected_even_at_prob_1(tokenizer):
    cfg = _cfg("max_length", **{"MODEL.PRETRAIN.MLM_PROB": 1.0})
    batch = _collator(cfg, tokenizer)(_items(_captions(16), range(16)))
    ids, real, labels = batch["text_ids"], batch["text_mask"].bool(), batch["mlm_labels"]
    never = ~real | torch.isin(ids, torch.tensor(tokenizer.special_ids))
    assert ids.shape[1] == 40 and (~real).any()
    assert (labels[never] == IGNORE_INDEX).all() and torch.equal(batch["mlm_ids"][never], ids[never])
    assert (labels[~never] != IGNORE_INDEX).all()  # prob 1: every candidate selected


# ---------------------------------------------------------------------- per-sample masks
def test_the_mask_of_a_sample_depends_on_its_seed_only(tokenizer):
    """The same (caption, seed) in two different batches, at another position and padded to
    another width (dynamic and fixed padding), gets the same mask."""
    cfg = _cfg(**{"MODEL.PRETRAIN.MLM_PROB": 0.4})
    collate, fixed = _collator(cfg, tokenizer), _collator(_cfg("max_length", **{"MODEL.PRETRAIN.MLM_PROB": 0.4}))
    caps = _captions(40, seed=7)
    short = [c for c in caps if len(c.split()) < 8][:3]
    assert len(short) == 3
    long = "a man wearing " + " ".join(["checkered leggings"] * 4) + "."  # 25 tokens: width 32
    a = collate(_items(short, [11, 12, 13]))  # narrow batch
    b = collate(_items([long, short[1], "a man.", short[0]], [99, 12, 98, 11]))  # wide, other positions
    c = fixed(_items(short, [11, 12, 13]))  # padded to MAX_LENGTH
    assert a["text_ids"].shape[1] < b["text_ids"].shape[1] < c["text_ids"].shape[1]
    for ra, rb in ((0, 3), (1, 1)):
        n = int(a["text_mask"][ra].sum())
        for key in ("mlm_ids", "mlm_labels"):
            assert torch.equal(a[key][ra, :n], b[key][rb, :n]), key
            assert torch.equal(a[key][ra, :n], c[key][ra, :n]), key
        assert (b["mlm_labels"][rb, n:] == IGNORE_INDEX).all() and (c["mlm_labels"][ra, n:] == IGNORE_INDEX).all()
        assert torch.equal(b["mlm_ids"][rb, n:], b["text_ids"][rb, n:])
    assert (a["mlm_labels"] != IGNORE_INDEX).sum() > 3  # something was masked: the comparison can tell
    # another seed, another mask (for at least one of the three captions)
    d = collate(_items(short, [21, 22, 23]))
    assert not torch.equal(d["mlm_labels"], a["mlm_labels"])


def test_each_row_is_mask_tokens_on_its_own_tokens_with_the_derived_seed(tokenizer):
    cfg = _cfg(**{"MODEL.PRETRAIN.MLM_PROB": 0.3})
    captions, seeds = _captions(6, seed=2), [sample_seed(5, 1, p) for p in range(40, 46)]
    batch = _collator(cfg, tokenizer)(_items(captions, seeds))
    for i, (caption, seed) in enumerate(zip(captions, seeds)):
        one = tokenizer([caption])  # alone: its own width
        n = int(one["attention_mask"].sum())
        g = torch.Generator().manual_seed(derive_seed(seed, MLM_SEED_STREAM))
        exp_ids, exp_labels = mask_tokens(one["input_ids"][:, :n], one["attention_mask"][:, :n], tokenizer.special_ids,
                                          tokenizer.vocab_size, tokenizer.mask_id, prob=0.3,
                                          word_start_mask=tokenizer.word_start_mask(one["input_ids"][:, :n]),
                                          generator=g)
        assert torch.equal(batch["mlm_ids"][i, :n], exp_ids[0]) and torch.equal(batch["mlm_labels"][i, :n], exp_labels[0])


def test_a_batch_built_twice_from_the_same_seeds_is_identical(tokenizer):
    collate = _collator(_cfg(), tokenizer)
    items = _items(_captions(32, seed=4), [sample_seed(0, 0, p) for p in range(32)])
    x, y = collate(items), collate(list(items))
    assert x.keys() == y.keys() == {"images", "text_ids", "text_mask", "targets", "img_ids", "seeds", "mlm_ids",
                                    "mlm_labels"}
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert x["seeds"].dtype == torch.long and x["seeds"].tolist() == [sample_seed(0, 0, p) for p in range(32)]
    # the run seed matters (torch's CPU generator keeps only 32 bits of a seed: derive_seed mixes
    # the run seed, packed above bit 43 by sample_seed, into them)
    z = collate(_items(_captions(32, seed=4), [sample_seed(1, 0, p) for p in range(32)]))
    assert not torch.equal(z["mlm_labels"], x["mlm_labels"])


def test_gradient_accumulation_micro_batches_keep_their_samples_masks(tokenizer):
    # UniPTStepTrainer splits a batch into rows k::K: micro-batch k holds exactly what the
    # collator gives for its own samples alone (their seeds and masks), whatever their width
    from unipt_plugin.engine.train_loop import split_batch

    collate = _collator(_cfg(**{"MODEL.PRETRAIN.MLM_PROB": 0.4}), tokenizer)
    items = _items(_captions(8, seed=9), [sample_seed(2, 0, p) for p in range(8)])
    parts = split_batch(collate(items), 2)
    for k, part in enumerate(parts):
        alone = collate(items[k::2])
        assert torch.equal(part["seeds"], alone["seeds"])
        for i in range(4):
            n = int(alone["text_mask"][i].sum())
            for key in ("mlm_ids", "mlm_labels"):
                assert torch.equal(part[key][i, :n], alone[key][i, :n]), key


def test_derive_seed_is_splitmix64():
    # SplitMix64 (Vigna's reference splitmix64.c) seeded with 1234567: its first five outputs are
    # the sub-seeds of streams 0..4 (stream k = the generator's (k + 1)-th output)
    assert [derive_seed(1234567, k) for k in range(5)] == [
        6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431, 16408922859458223821]
    low = {derive_seed(sample_seed(run, rank, 7), MLM_SEED_STREAM) % 2 ** 32 for run in range(4) for rank in range(3)}
    assert len(low) == 12


def test_collator_errors_and_keys_without_mlm(tokenizer):
    caps = _captions(4)
    plain = TrainCollator(tokenizer)(_items(caps, range(4)))
    assert set(plain) == {"images", "text_ids", "text_mask", "targets", "img_ids", "seeds"}
    unseeded = [{k: v for k, v in it.items() if k != "seed"} for it in _items(caps, range(4))]
    assert "seeds" not in TrainCollator(tokenizer)(unseeded)
    with pytest.raises(ValueError, match="mixes items with and without a 'seed'"):
        TrainCollator(tokenizer)(unseeded[:2] + _items(caps, range(4))[2:])
    with pytest.raises(ValueError, match=r"MLM masking \(MODEL.PRETRAIN.MLM_WEIGHT > 0\).*no 'seed'"):
        _collator(_cfg(), tokenizer)(unseeded)
    assert build_mlm_masking(_cfg(**{"MODEL.PRETRAIN.MLM_WEIGHT": 0.0}), tokenizer) is None
    assert build_mlm_masking(_cfg(**{"MODEL.META_ARCHITECTURE": "UniPTT2I"}), tokenizer) is None
    with pytest.raises(ValueError, match="MODEL.PRETRAIN.MLM_PROB = 1.5"):
        build_mlm_masking(_cfg(**{"MODEL.PRETRAIN.MLM_PROB": 1.5}), tokenizer)
    with pytest.raises(ValueError, match="MLM_MASK_TOKEN_PROB \\+ MLM_RANDOM_TOKEN_PROB <= 1"):
        build_mlm_masking(_cfg(**{"MODEL.PRETRAIN.MLM_RANDOM_TOKEN_PROB": 0.3}), tokenizer)
    with pytest.raises(ValueError, match="one seed per caption"):
        MLMMasking([0], 10, 3)(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4), torch.tensor([1]))


# ---------------------------------------------------------------------- the training loader
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = str(tmp_path_factory.mktemp("mlm_loader_data"))
    make_luperson_t(r, num_images=8, captions_per_image=2, size=(40, 20))
    return r


def _loader_cfg(root, arch="UniPTPretrain", **opts):
    cfg = _cfg(**{"MODEL.META_ARCHITECTURE": arch})
    cfg.DATASETS.ROOT = root
    cfg.DATASETS.NAMES = ("LUPersonT",)
    cfg.INPUT.SIZE_TRAIN = [32, 16]
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 9
    cfg.merge_from_list([x for pair in opts.items() for x in pair])
    return cfg


def test_training_loader_masks_per_sample_seed(root):
    cfg = _loader_cfg(root, **{"MODEL.PRETRAIN.MLM_PROB": 0.5})
    loader = build_t2i_train_loader(cfg)
    tok = build_tokenizer(cfg)
    masking = build_mlm_masking(cfg, tok)
    batches = [{k: v.clone() for k, v in b.items()} for b in itertools.islice(loader, 5)]
    for k, batch in enumerate(batches):
        assert batch["seeds"].tolist() == [sample_seed(9, 0, 4 * k + j) for j in range(4)]
        # each row is the masking of that sample alone
        for i in range(4):
            n = int(batch["text_mask"][i].sum())
            ids, labels = masking(batch["text_ids"][i:i + 1, :n], batch["text_mask"][i:i + 1, :n], batch["seeds"][i:i + 1])
            assert torch.equal(batch["mlm_ids"][i, :n], ids[0]) and torch.equal(batch["mlm_labels"][i, :n], labels[0])
    assert sum(int((b["mlm_labels"] != IGNORE_INDEX).sum()) for b in batches) > 10
    # started at batch 2 (what --resume does), the stream and its masks continue exactly
    resumed = build_t2i_train_loader(cfg)
    resumed.batch_sampler.start_batch = 2
    for full, again in zip(batches[2:], itertools.islice(resumed, 3)):
        assert full.keys() == again.keys() and all(torch.equal(full[k], again[k]) for k in full)
    # the keys only when pre-training with MLM
    for other in (_loader_cfg(root, "UniPTT2I"), _loader_cfg(root, **{"MODEL.PRETRAIN.MLM_WEIGHT": 0.0})):
        batch = next(iter(build_t2i_train_loader(other)))
        assert set(batch) == {"images", "text_ids", "text_mask", "targets", "img_ids", "seeds"}


def test_training_loader_masks_do_not_depend_on_the_workers(root):
    base = [b for b in itertools.islice(build_t2i_train_loader(_loader_cfg(root)), 3)]
    multi = [b for b in itertools.islice(build_t2i_train_loader(_loader_cfg(root, **{"DATALOADER.NUM_WORKERS": 2})), 3)]
    for x, y in zip(base, multi):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
