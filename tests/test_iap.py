"""PLIP's IAP (image-guided attribute prediction) in pre-training: recorded spans -> exactly their
tokens (positions by hand), the vocabulary fallback and SYNTH-PEDES's attributes, the loss against
F.cross_entropy over the gathered positions, weights 0 change nothing, the relaxed refusal, and a
2-iteration tiny pre-training through the trainer with every task on (contrastive, MLM, IVLC,
IAP, TIC) on a LUPerson-T file with and without recorded spans."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from raw_fixtures import write_image
from standins import StandInText, StandInVisual
from unipt_plugin.data.attribute_masking import AttributeMasking
from unipt_plugin.data.attribute_spans import (NOT_RECORDED, PhraseMatcher, decode_spans, encode_spans,
                                               match_attribute_phrases, vocabulary_phrases)
from unipt_plugin.data.mlm_masking import IGNORE_INDEX
from unipt_plugin.data.tokenizer import BertTextTokenizer, default_vocab_dir
from unipt_plugin.pseudo_text.vocabulary import load_vocabulary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_PRETRAIN = os.path.join(ROOT, "configs", "Tiny", "pretrain.yml")

# "A young man wears a red t-shirt." by hand: A0 _1 young2-6 _7 man8-10 _11 wears12-16 _17 a18 _19
# red20-22 _23 t-shirt24-30 .31; WordPiece: [CLS] a young man wears a red t - shirt . [SEP]
CAPTION = "A young man wears a red t-shirt."
SPANS = [(2, 7), (20, 31)]  # "young", "red t-shirt"
TOKENS = ["[CLS]", "a", "young", "man", "wears", "a", "red", "t", "-", "shirt", ".", "[SEP]"]
MASKED = [2, 6, 7, 8, 9]  # young, red, t, -, shirt


@pytest.fixture(scope="module")
def bert():
    return BertTextTokenizer(default_vocab_dir(), max_length=32, padding="longest")


def _row(tok, caption, spans, seed=0, prob=1.0):
    enc = tok([caption])
    masking = AttributeMasking(tok, prob)
    ids, labels = masking([caption], [spans], enc["input_ids"], enc["attention_mask"], torch.tensor([seed]))
    return enc["input_ids"][0], ids[0], labels[0]


# ----------------------------------------------------------------------------- spans -> tokens
def test_recorded_spans_mask_exactly_their_tokens(bert):
    assert [CAPTION[s:e] for s, e in SPANS] == ["young", "red t-shirt"]
    original, ids, labels = _row(bert, CAPTION, SPANS)
    assert bert.hf.convert_ids_to_tokens(original[:len(TOKENS)].tolist()) == TOKENS
    masked = [p for p in range(len(labels)) if labels[p] != IGNORE_INDEX]
    assert masked == MASKED
    assert torch.equal(labels[MASKED], original[MASKED])
    assert (ids[MASKED] == bert.mask_id).all()
    others = [p for p in range(len(ids)) if p not in MASKED]
    assert torch.equal(ids[others], original[others])
    # upper case in the caption does not move the spans (the tokenizer lower-cases)
    _, _, upper = _row(bert, CAPTION.upper(), SPANS)
    assert torch.equal(upper, labels)


def test_truncation_drops_the_phrase_tokens_it_cuts(bert):
    short = BertTextTokenizer(default_vocab_dir(), max_length=9, padding="longest")  # [CLS] + 7 tokens + [SEP]
    original, _, labels = _row(short, CAPTION, SPANS)
    # tokens 0..7 kept ("... red t"), position 8 is the end token
    assert [p for p in range(len(labels)) if labels[p] != IGNORE_INDEX] == [2, 6, 7]
    assert original[8] == short.sep_id


def test_phrase_prob_draws_whole_phrases_from_the_seed(bert):
    kept = set()
    for seed in range(12):
        _, _, labels = _row(bert, CAPTION, SPANS, seed=seed, prob=0.5)
        got = tuple(p for p in range(len(labels)) if labels[p] != IGNORE_INDEX)
        assert got in {(), (2,), (6, 7, 8, 9), tuple(MASKED)}  # a phrase is masked whole or not at all
        assert torch.equal(_row(bert, CAPTION, SPANS, seed=seed, prob=0.5)[2], labels)  # a function of the seed
        kept.add(got)
    assert len(kept) >= 3


def test_clip_tokens_by_pieces():
    from unipt_plugin.data.tokenizer import ClipTextTokenizer

    clip = ClipTextTokenizer(max_length=32, padding="longest")
    full = clip._encode([CAPTION.lower()])[0]
    masking = AttributeMasking(clip)
    _, picked = masking.token_positions(CAPTION, SPANS)
    pieces = [clip.bpe.encode(t) for t in ("a", "young", "man wears a", "red t-shirt", ".")]
    assert sum(pieces, []) == full[1:-1]
    young = 1 + len(pieces[0])
    red = young + len(pieces[1]) + len(pieces[2])
    assert picked == [young] + list(range(red, red + len(pieces[3])))
    # a span that cuts a word gives no IAP token (and is counted)
    assert masking.token_positions(CAPTION, [(3, 7)])[1] == [] and masking.num_unaligned == 1


# ----------------------------------------------------------------------------- where the phrases come from
def test_vocabulary_fallback_matches_whole_phrases_longest_first():
    matcher = PhraseMatcher(vocabulary_phrases(load_vocabulary()))
    caption = "The young woman in a blue striped shirt and black jeans is walking. She has long hair."
    got = [caption[s:e] for s, e in matcher(caption)]
    assert got == ["young", "woman", "blue striped shirt", "black jeans", "walking", "long hair"]
    # whole words only, case-insensitive
    assert matcher("A Mannequin walks.") == []
    assert [("x MAN.")[s:e] for s, e in matcher("x MAN.")] == ["MAN"]


def test_synth_pedes_attributes_whole_then_word_by_word():
    caption = ("A man in his mid-twenties with short black hair is wearing a black t-shirt over light pink "
               "trousers. He is also wearing black shoes.")
    attributes = ["man", "black hair", "black shirt", "pink shorts", "black shoes", "unknown"]
    spans = match_attribute_phrases(caption, attributes)
    t_shirt_black = caption.index("black t-shirt")
    expected = [(2, 5), (caption.index("black hair"), caption.index("black hair") + 10),
                (t_shirt_black, t_shirt_black + 5),  # "black shirt" absent as a whole: its "black"
                (caption.index("pink"), caption.index("pink") + 4),  # "pink shorts": its "pink"
                (caption.index("black shoes"), caption.index("black shoes") + 11)]
    assert spans == expected
    assert match_attribute_phrases(caption, ["unknown"]) == []


def test_span_encoding_round_trips():
    for spans in ([], [(0, 3)], [(2, 7), (20, 31)]):
        assert decode_spans(encode_spans(spans)) == spans
    assert encode_spans(None) == NOT_RECORDED and decode_spans(NOT_RECORDED) is None


# ----------------------------------------------------------------------------- the model
VOCAB = 60


def _cfg(**opts):
    from unipt_plugin.config import get_unipt_cfg

    cfg = get_unipt_cfg()
    cfg.MODEL.PRETRAIN.EMBED_DIM = 16
    cfg.MODEL.PRETRAIN.MLM_WEIGHT = 0.0
    cfg.MODEL.PRETRAIN.IAP.HEADS = 2
    cfg.merge_from_list([x for pair in opts.items() for x in pair])
    return cfg


def _model(**opts):
    from unipt_plugin.modeling.meta_arch import UniPTPretrain

    torch.manual_seed(0)
    return UniPTPretrain(_cfg(**opts), StandInVisual(), StandInText(VOCAB), tokenizer=type("T", (), {"vocab_size": VOCAB}))


def _batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(4, VOCAB, (3, 8), generator=g)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 6:] = 0
    labels = torch.full_like(ids, IGNORE_INDEX)
    picked = [(0, 2), (0, 3), (1, 1), (2, 5)]
    for r, c in picked:
        labels[r, c] = ids[r, c]
    iap_ids = torch.where(labels != IGNORE_INDEX, torch.full_like(ids, 3), ids)
    return {"images": torch.rand(3, 3, 32, 16, generator=g) * 255, "text_ids": ids, "text_mask": mask,
            "iap_ids": iap_ids, "iap_labels": labels}, picked


def test_iap_loss_is_the_cross_entropy_of_the_masked_tokens():
    model = _model(**{"MODEL.PRETRAIN.IAP_WEIGHT": 0.5}).train()
    batch, picked = _batch()
    losses = model(batch)
    assert set(losses) == {"loss_con", "loss_iap"}
    with torch.no_grad():
        text = model.text(batch["iap_ids"], batch["text_mask"])
        fused = model.iap_fusion(text, model.visual(model.normalizer(batch["images"])),
                                 query_padding=batch["text_mask"] == 0)
        logits = model.iap_head(fused)
        rows, cols = torch.tensor([r for r, _ in picked]), torch.tensor([c for _, c in picked])
        expected = F.cross_entropy(logits[rows, cols], batch["text_ids"][rows, cols])
    assert torch.allclose(losses["loss_iap"], 0.5 * expected, atol=1e-6)
    # the image matters: other images, another loss
    other = dict(batch, images=batch["images"].flip(0))
    assert not torch.allclose(model(other)["loss_iap"], losses["loss_iap"], atol=1e-5)


def test_iap_alone_trains_the_visual_encoder_and_freezes_the_projections():
    model = _model(**{"MODEL.PRETRAIN.CONTRASTIVE_WEIGHT": 0.0, "MODEL.PRETRAIN.IAP_WEIGHT": 1.0}).train()
    assert not model.image_proj.weight.requires_grad and not model.text_proj.weight.requires_grad
    batch, _ = _batch()
    losses = model(batch)
    assert set(losses) == {"loss_iap"}
    losses["loss_iap"].backward()
    assert model.visual.patch.weight.grad.abs().sum() > 0 and model.text.emb.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_weights_zero_build_nothing_and_change_nothing():
    plain = _model().train()
    # every IAP / TIC sub-key set, both weights 0: the same model, losses and outputs
    off = _model(**{"MODEL.PRETRAIN.IAP.LAYERS": 5, "MODEL.PRETRAIN.TIC.WIDTH": 8,
                    "MODEL.PRETRAIN.IAP_WEIGHT": 0.0, "MODEL.PRETRAIN.TIC_WEIGHT": 0.0}).train()
    assert off.iap_fusion is None and off.iap_head is None and off.tic_decoder is None
    s_plain, s_off = plain.state_dict(), off.state_dict()
    assert s_plain.keys() == s_off.keys() and all(torch.equal(s_plain[k], s_off[k]) for k in s_plain)
    assert not any(k.startswith(("iap_", "tic_")) for k in s_off)
    batch, _ = _batch()
    l_plain, l_off = plain(batch), off(batch)
    assert set(l_off) == {"loss_con"} and torch.equal(l_plain["loss_con"], l_off["loss_con"])
    with torch.no_grad():
        img = off.encode_image(batch["images"])
        txt = off.encode_text(batch["text_ids"], batch["text_mask"])
        # Eq. 1 by hand: the mean of both directions' cross-entropy over the cosine matrix
        s = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
        target = torch.arange(3)
        eq1 = (F.cross_entropy(s, target) + F.cross_entropy(s.t(), target)) / 2
    assert torch.allclose(l_off["loss_con"], eq1, atol=1e-6)
    plain.eval()
    off.eval()
    assert torch.equal(plain({"images": batch["images"]}), off({"images": batch["images"]}))
    # with IAP on, the other parameters start as they do without it (built last)
    on = _model(**{"MODEL.PRETRAIN.IAP_WEIGHT": 1.0}).state_dict()
    assert all(torch.equal(on[k], s_plain[k]) for k in s_plain)


@pytest.mark.parametrize("opts, match", [
    ({"MODEL.PRETRAIN.IAP_WEIGHT": -1.0}, r"MODEL.PRETRAIN.IAP_WEIGHT must be >= 0"),
    ({"MODEL.PRETRAIN.IAP_WEIGHT": 1.0, "MODEL.PRETRAIN.IAP.HEADS": 3}, r"MODEL.PRETRAIN.IAP.HEADS = 3 attention heads"),
    ({"MODEL.PRETRAIN.CONTRASTIVE_WEIGHT": 0.0}, r"and so are IAP_WEIGHT and TIC_WEIGHT"),
])
def test_bad_iap_options_are_refused(opts, match):
    with pytest.raises(ValueError, match=match):
        _model(**opts)


def test_missing_iap_masks_are_named():
    model = _model(**{"MODEL.PRETRAIN.IAP_WEIGHT": 1.0}).train()
    batch, _ = _batch()
    with pytest.raises(KeyError, match=r"'iap_ids'.*AttributeMasking"):
        model({k: v for k, v in batch.items() if not k.startswith("iap_")})


# ----------------------------------------------------------------------------- through the loader and the trainer
LUP_CAPTIONS = [
    ("A young man wears a red t-shirt.", [[2, 7], [20, 31]]),
    ("The elderly woman is walking in black jeans.", None),  # no recorded spans: the vocabulary
]


@pytest.fixture(scope="module")
def lup_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("iap_data"))
    folder = os.path.join(root, "LUPerson-T")
    entries = []
    for i in range(8):
        caption, spans = LUP_CAPTIONS[i % 2]
        write_image(os.path.join(folder, "imgs", f"{i}.png"), (64, 32), i)
        entry = {"file_path": f"{i}.png", "captions": [caption]}
        if spans is not None:
            entry["attribute_spans"] = [spans]
        entries.append(entry)
    with open(os.path.join(folder, "luperson_t.json"), "w") as f:
        json.dump(entries, f)
    return root


def _setup(root, out, *opts):
    from unipt_plugin.engine import setup_cfg

    os.makedirs(out, exist_ok=True)
    return setup_cfg(TINY_PRETRAIN, ["DATASETS.ROOT", root, "OUTPUT_DIR", out, "SEED", "1",
                                     "MODEL.PRETRAIN.IAP_WEIGHT", "1.0", *opts])


def test_loader_batches_carry_recorded_and_fallback_masks(lup_root, tmp_path, bert):
    from unipt_plugin.data import build_t2i_train_loader

    batch = next(iter(build_t2i_train_loader(_setup(lup_root, str(tmp_path)))))
    vocab_caption = LUP_CAPTIONS[1][0]
    assert [vocab_caption[s:e] for s, e in PhraseMatcher(vocabulary_phrases(load_vocabulary()))(vocab_caption)] == \
        ["elderly", "woman", "walking", "black jeans"]
    # image i has caption i % 2: its recorded phrases' tokens, or the vocabulary phrases' tokens
    hand = [["young", "red", "t", "-", "shirt"], ["elderly", "woman", "walking", "black", "jeans"]]
    assert sorted(batch["img_ids"].tolist()) == list(range(8))
    for row in range(batch["text_ids"].shape[0]):
        ids = batch["text_ids"][row]
        picked = batch["iap_labels"][row] != IGNORE_INDEX
        assert bert.hf.convert_ids_to_tokens(ids[picked].tolist()) == hand[int(batch["img_ids"][row]) % 2]
        assert (batch["iap_ids"][row][picked] == bert.mask_id).all()
        assert torch.equal(batch["iap_ids"][row][~picked], ids[~picked])


SYNTH = [  # (id, attributes, caption, the tokens IAP masks by hand)
    (7, "man,black hair,black shirt,pink shorts,black shoes,unknown",
     "The man with short black hair is wearing a black t-shirt.", ["man", "black", "hair", "black"]),
    (8, "woman,long hair,red coat,blue jeans,white shoes,backpack",
     "A woman in a red coat and blue jeans carries a backpack.", ["woman", "red", "coat", "blue", "jeans", "backpack"]),
]


def test_synth_pedes_attributes_after_another_dataset(lup_root, tmp_path, bert):
    from unipt_plugin.data import build_t2i_train_loader

    folder = os.path.join(lup_root, "SYNTH-PEDES")
    entries = []
    for pid, attributes, caption, _ in SYNTH:
        write_image(os.path.join(folder, "Part1", str(pid), "1.jpg"), (64, 32), pid)
        entries.append({"id": pid, "file_path": f"Part1/{pid}/1.jpg", "attributes": [attributes],
                        "captions": [caption], "prompt_caption": []})
    with open(os.path.join(folder, "synthpedes_dataset.json"), "w") as f:
        json.dump(entries, f)
    cfg = _setup(lup_root, str(tmp_path), "DATASETS.NAMES", '("LUPersonT", "SYNTHPEDES")', "SOLVER.IMS_PER_BATCH", "10")
    batch = next(iter(build_t2i_train_loader(cfg)))
    # SYNTH-PEDES's images follow LUPerson-T's 8: image ids 8 and 9 (its attributes by its own ids)
    rows = {int(i): r for r, i in enumerate(batch["img_ids"].tolist()) if i >= 8}
    assert sorted(rows) == [8, 9]
    for image_id, (_, _, _, tokens) in zip((8, 9), SYNTH):
        r = rows[image_id]
        picked = batch["iap_labels"][r] != IGNORE_INDEX
        assert bert.hf.convert_ids_to_tokens(batch["text_ids"][r][picked].tolist()) == tokens


def test_two_iteration_tiny_pretraining_with_every_task(lup_root, tmp_path):
    from fastreid.utils.events import EventStorage

    from unipt_plugin.engine import UniPTTrainer

    cfg = _setup(lup_root, str(tmp_path / "run"), "MODEL.PRETRAIN.IVLC_WEIGHT", "0.5", "MODEL.PRETRAIN.TIC_WEIGHT",
                 "1.0", "MODEL.PRETRAIN.TIC.WIDTH", "32", "MODEL.PRETRAIN.TIC.LAYERS", "1", "MODEL.PRETRAIN.IAP.LAYERS",
                 "1")
    trainer = UniPTTrainer(cfg)
    names = ("loss_con", "loss_ivlc", "loss_mlm", "loss_iap", "loss_tic")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with EventStorage(0) as storage:
        for it in range(2):
            storage.iter = trainer._trainer.iter = it
            trainer._trainer.run_step()
        history = {k: [v for v, _ in storage.history(k).values()] for k in names}
    for name, values in history.items():
        assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values), (name, values)
    after = trainer.model.state_dict()
    for key in ("iap_fusion.memory_in.weight", "iap_head.decoder.weight", "tic_decoder.head.2.weight",
                "visual.vit.patch_embed.proj.weight"):
        assert not torch.equal(after[key], before[key]), key
