"""MLM masks drawn in the training collator, per sample from the sample's own seed.

Statistics over many captions (share of selected candidates, the 80/10/10 split, whole words
masked together, special and padding tokens never selected), the mask of a caption independent
of the batch it is in and of the padded width, batches rebuilt from the same seeds identical, the
seed derivation (SplitMix64's published outputs), and the real training loader: the keys only
when pre-training with MLM, the seeds of the stream positions, a loader started at batch k.

MODEL.PRETRAIN.MLM_SELECTION "budget"/"budget_padded": the positions transformers'
DataCollatorForWholeWordMask selects when called as the authors call it (same Python seed), the
budget of a caption met exactly, the padded budget's hypergeometric count, whole words, no
special or padding token, and the per-sample / resume properties above for these modes too;
"independent" (the default) is mask_tokens on the row with the derived seed."""
from __future__ import annotations

import itertools
import math
import random
import warnings

import pytest
import torch
from transformers import DataCollatorForWholeWordMask

from raw_fixtures import make_luperson_t
from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.data import build_t2i_train_loader
from unipt_plugin.data.common import MLM_SEED_STREAM, TrainCollator, derive_seed, sample_seed
from unipt_plugin.data.mlm_masking import (IGNORE_INDEX, MLM_SELECTIONS, MLMMasking, WholeWordBudget,
                                           build_mlm_masking, mask_tokens)
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
@pytest.mark.parametrize("selection", MLM_SELECTIONS)
def test_the_mask_of_a_sample_depends_on_its_seed_only(tokenizer, selection):
    """The same (caption, seed) in two different batches, at another position and padded to
    another width (dynamic and fixed padding), gets the same mask, in every selection mode."""
    opts = {"MODEL.PRETRAIN.MLM_PROB": 0.4, "MODEL.PRETRAIN.MLM_SELECTION": selection}
    collate, fixed = _collator(_cfg(**opts), tokenizer), _collator(_cfg("max_length", **opts))
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


@pytest.mark.parametrize("selection", [None, "independent"])
def test_each_row_is_mask_tokens_on_its_own_tokens_with_the_derived_seed(tokenizer, selection):
    # "independent" (the default, or set explicitly) is mask_tokens' own draws, as before the key existed
    opts = {"MODEL.PRETRAIN.MLM_PROB": 0.3}
    if selection is not None:
        opts["MODEL.PRETRAIN.MLM_SELECTION"] = selection
    cfg = _cfg(**opts)
    assert build_mlm_masking(cfg, tokenizer).selection == "independent"
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


@pytest.mark.parametrize("selection", ["independent", "budget_padded"])
def test_training_loader_masks_per_sample_seed(root, selection):
    cfg = _loader_cfg(root, **{"MODEL.PRETRAIN.MLM_PROB": 0.5, "MODEL.PRETRAIN.MLM_SELECTION": selection})
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


@pytest.mark.parametrize("selection", ["independent", "budget"])
def test_training_loader_masks_do_not_depend_on_the_workers(root, selection):
    opts = {"MODEL.PRETRAIN.MLM_SELECTION": selection}
    base = [b for b in itertools.islice(build_t2i_train_loader(_loader_cfg(root, **opts)), 3)]
    multi = [b for b in itertools.islice(
        build_t2i_train_loader(_loader_cfg(root, **opts, **{"DATALOADER.NUM_WORKERS": 2})), 3)]
    for x, y in zip(base, multi):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ---------------------------------------------------------------------- MLM_SELECTION budget modes
def _authors_collator(tokenizer, prob):
    """transformers' DataCollatorForWholeWordMask as the authors build it (datamodule_base.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in this transformers, still present
        return DataCollatorForWholeWordMask(tokenizer=tokenizer.hf, mlm=True, mlm_probability=prob)


def _shuffle_seed(seed):
    # the documented seeding: Python's random from a sub-stream of the sample's MLM seed
    return derive_seed(derive_seed(seed, MLM_SEED_STREAM), 0)


@pytest.mark.parametrize("selection,prob", [("budget_padded", 0.15), ("budget", 0.15), ("budget", 0.3)])
def test_budget_selects_what_transformers_whole_word_collator_selects(tokenizer, selection, prob):
    """Each caption's selected positions are the ones DataCollatorForWholeWordMask gives, called
    as the authors call it (one caption tokenised by the BERT tokenizer, padded to MAX_LENGTH
    with padding="max_length" for "budget_padded", unpadded for "budget"), with Python's random
    seeded the same."""
    cfg = _cfg(**{"MODEL.PRETRAIN.MLM_PROB": prob, "MODEL.PRETRAIN.MLM_SELECTION": selection})
    collate = _collator(cfg, tokenizer)
    authors = _authors_collator(tokenizer, prob)
    captions = _captions(150, seed=11)
    seeds = [sample_seed(4, 0, p) for p in range(150)]
    random.seed(2024)
    after_seed = random.getstate()
    batch = collate(_items(captions, seeds))
    assert random.getstate() == after_seed  # the process's own random stream is left as it was
    n_sel = 0
    for i, (caption, seed) in enumerate(zip(captions, seeds)):
        pad = {"padding": "max_length"} if selection == "budget_padded" else {}
        enc = tokenizer.hf(caption.lower(), truncation=True, max_length=40, return_special_tokens_mask=True, **pad)
        n = int(batch["text_mask"][i].sum())
        assert enc["input_ids"][:n] == batch["text_ids"][i, :n].tolist()
        random.seed(_shuffle_seed(seed))
        with torch.random.fork_rng(devices=[]):
            ref = authors([enc])["labels"][0]
        expected = ref != -100
        assert not expected[n:].any()  # transformers never keeps padding either
        got = batch["mlm_labels"][i] != IGNORE_INDEX
        assert torch.equal(got[:n], expected[:n]), (caption, got[:n].tolist(), expected[:n].tolist())
        assert not got[n:].any()
        n_sel += int(got.sum())
    assert n_sel > 300  # the comparison had something to compare


def _word_sizes(tokenizer, ids):
    """Sizes (in tokens) of the candidate words of one caption's ids (n,), in order."""
    starts = tokenizer.word_start_mask(ids[None])[0].tolist()
    special = set(tokenizer.special_ids)
    sizes = []
    for tid, start in zip(ids.tolist(), starts):
        if tid in special:
            continue
        if start or not sizes:
            sizes.append(0)
        sizes[-1] += 1
    return sizes


@pytest.mark.parametrize("prob", [0.15, 0.5])
def test_budget_masks_exactly_the_budget_in_whole_words(tokenizer, prob):
    cfg = _cfg("max_length", **{"MODEL.PRETRAIN.MLM_PROB": prob, "MODEL.PRETRAIN.MLM_SELECTION": "budget"})
    collate = _collator(cfg, tokenizer)
    specials = torch.tensor(tokenizer.special_ids)
    n_exact = 0
    for b in range(6):
        captions = _captions(64, seed=100 + b)
        batch = collate(_items(captions, [sample_seed(8, 1, 64 * b + j) for j in range(64)]))
        ids, real, masked, labels = batch["text_ids"], batch["text_mask"].bool(), batch["mlm_ids"], batch["mlm_labels"]
        cand = real & ~torch.isin(ids, specials)
        sel = labels != IGNORE_INDEX
        assert not (sel & ~cand).any()  # never a special or padding token
        assert torch.equal(labels[sel], ids[sel]) and torch.equal(masked[~sel], ids[~sel])
        rnd = sel & (masked != tokenizer.mask_id) & (masked != ids)
        assert not torch.isin(masked[rnd], specials).any()  # random replacements never special
        words = _words(tokenizer, ids)
        for r in range(ids.shape[0]):
            n = int(real[r].sum())
            budget = max(1, round(n * prob))  # hand rule: round(len(tokens) * mlm_probability), CLS/SEP counted
            count = int(sel[r].sum())
            assert count <= budget
            sizes = _word_sizes(tokenizer, ids[r, :n])
            if sum(1 for z in sizes if z == 1) >= budget:  # enough one-piece words: the greedy fill always lands on it
                assert count == budget, (captions[r], count, budget)
                n_exact += 1
            for w in words[r][cand[r]].unique().tolist():
                picked = sel[r][(words[r] == w) & cand[r]]
                assert picked.all() or not picked.any(), "a word was partly masked"
    assert n_exact > 50  # the exact-budget check ran (384 captions; fewer qualify at 0.5)


def test_budget_on_hand_made_captions(tokenizer):
    masking = build_mlm_masking(_cfg(**{"MODEL.PRETRAIN.MLM_SELECTION": "budget"}), tokenizer)
    # 20 one-piece words + [CLS] + [SEP] = 22 tokens: round(22 * 0.15) = round(3.3) = 3 masked
    ones = tokenizer(["a man and a woman and the man with the red bag and the white jeans and a black backpack"])
    assert int(ones["attention_mask"].sum()) == 22
    # [UNK] inside a caption is never selected and takes no budget: 11 tokens, round(1.65) = 2
    unk = tokenizer(["a man with a \u2603 bag and red jeans"])
    assert tokenizer.hf.convert_ids_to_tokens(unk["input_ids"][0].tolist())[5] == "[UNK]"
    assert int(unk["attention_mask"].sum()) == 11
    for enc, budget in ((ones, 3), (unk, 2)):
        for seed in range(40):
            _, labels = masking(enc["input_ids"], enc["attention_mask"], torch.tensor([seed]))
            assert int((labels != IGNORE_INDEX).sum()) == budget
            assert labels[0, 0] == labels[0, -1] == IGNORE_INDEX
    for seed in range(200):
        _, labels = masking(unk["input_ids"], unk["attention_mask"], torch.tensor([seed]))
        assert labels[0, 5] == IGNORE_INDEX
    # MLM_PROB 1: the budget (n) covers every candidate
    full = build_mlm_masking(_cfg(**{"MODEL.PRETRAIN.MLM_SELECTION": "budget", "MODEL.PRETRAIN.MLM_PROB": 1.0}), tokenizer)
    _, labels = full(unk["input_ids"], unk["attention_mask"], torch.tensor([3]))
    picked = (labels != IGNORE_INDEX)[0]
    assert picked[:11].tolist() == [False, True, True, True, True, False, True, True, True, True, False]
    assert not picked[11:].any()  # padding


def test_budget_padded_count_is_hypergeometric(tokenizer):
    """Padded to 40 at MLM_PROB 0.15, 6 positions are drawn from the 38 non-CLS/SEP positions;
    for a caption of one-piece words every candidate is one token, so the number of real tokens
    masked is hypergeometric(38 positions, K real, 6 draws)."""
    masking = build_mlm_masking(_cfg(**{"MODEL.PRETRAIN.MLM_SELECTION": "budget_padded"}), tokenizer)
    enc = tokenizer(["a man and a woman with the red bag"])  # 9 one-piece words, 11 tokens
    assert int(enc["attention_mask"].sum()) == 11 and all(z == 1 for z in _word_sizes(tokenizer, enc["input_ids"][0]))
    k, pos, draws, trials = 9, 38, 6, 4000
    counts = [0] * (draws + 1)
    ids = enc["input_ids"].expand(trials, -1)
    _, labels = masking(ids, enc["attention_mask"].expand(trials, -1), torch.tensor([sample_seed(1, 0, t) for t in range(trials)]))
    for c in (labels != IGNORE_INDEX).sum(dim=1).tolist():
        counts[c] += 1
    pmf = [math.comb(k, j) * math.comb(pos - k, draws - j) / math.comb(pos, draws) for j in range(draws + 1)]
    for j in range(draws + 1):
        sd = math.sqrt(trials * pmf[j] * (1 - pmf[j]))
        assert abs(counts[j] - trials * pmf[j]) <= 4 * sd + 2, (j, counts, [round(trials * q) for q in pmf])
    assert counts[0] > 0.15 * trials  # about a fifth of these captions get no masked token, as the authors'


def test_budget_80_10_10_split(tokenizer):
    collate = _collator(_cfg(**{"MODEL.PRETRAIN.MLM_SELECTION": "budget"}), tokenizer)
    n_sel = n_mask = n_same = 0
    for b in range(12):
        batch = collate(_items(_captions(64, seed=300 + b), [sample_seed(6, 0, 64 * b + j) for j in range(64)]))
        sel = batch["mlm_labels"] != IGNORE_INDEX
        n_sel += int(sel.sum())
        n_mask += int((batch["mlm_ids"][sel] == tokenizer.mask_id).sum())
        n_same += int((batch["mlm_ids"][sel] == batch["text_ids"][sel]).sum())
    assert n_sel > 2500
    assert n_mask / n_sel == pytest.approx(0.8, abs=0.025)
    assert n_same / n_sel == pytest.approx(0.1, abs=0.02)


def test_mlm_selection_errors(tokenizer):
    with pytest.raises(ValueError, match=r"MODEL.PRETRAIN.MLM_SELECTION = 'budgets'.*'independent', 'budget'"):
        build_mlm_masking(_cfg(**{"MODEL.PRETRAIN.MLM_SELECTION": "budgets"}), tokenizer)
    clip_cfg = _cfg(**{"MODEL.PRETRAIN.MLM_SELECTION": "budget", "INPUT.TEXT.TOKENIZER": "clip"})
    with pytest.raises(ValueError, match=r"MODEL.PRETRAIN.MLM_SELECTION = 'budget'.*INPUT.TEXT.TOKENIZER = 'clip'"):
        build_mlm_masking(clip_cfg, build_tokenizer(clip_cfg))
    # CLIP keeps the independent selection
    assert build_mlm_masking(_cfg(**{"INPUT.TEXT.TOKENIZER": "clip"}), build_tokenizer(clip_cfg)).selection == "independent"
    with pytest.raises(ValueError, match=r"MLM_SELECTION = 'budget_padded'.*WHOLE_WORD_MASK is False"):
        build_mlm_masking(_cfg(**{"MODEL.PRETRAIN.MLM_SELECTION": "budget_padded",
                                  "MODEL.PRETRAIN.WHOLE_WORD_MASK": False}), tokenizer)
    with pytest.raises(ValueError, match="pad_to = INPUT.TEXT.MAX_LENGTH = 4"):
        WholeWordBudget(tokenizer.hf, 0.15, tokenizer.special_ids, pad_to=4)(list(range(1000, 1006)), 0)
    with pytest.raises(ValueError, match="selected must be bool"):
        mask_tokens(torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4), [0], 10, 3, selected=torch.ones(1, 3).bool())


def test_paper_configs_use_the_authors_selection_and_the_demo_keeps_independent():
    import os

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")
    expected = {"Base-UniPT-Pretrain.yml": "budget_padded", "LUPerson-T/vit_base.yml": "budget_padded",
                "Synthetic/pretrain.yml": "independent", "Tiny/pretrain.yml": "independent"}
    for name, selection in expected.items():
        cfg = get_unipt_cfg()
        cfg.merge_from_file(os.path.join(here, name))
        assert cfg.MODEL.PRETRAIN.MLM_SELECTION == selection, name
    assert get_unipt_cfg().MODEL.PRETRAIN.MLM_SELECTION == "independent"
