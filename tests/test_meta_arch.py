"""UniPTPretrain and UniPTT2I: loss dicts, a few Adam steps lower the loss, inference features
per TEST_SCORE with the inner-product property, the beta / gamma switches, real tiny encoders
through fast-reid's build_model, construction from plain arguments, the MLM loss on the batch's
masks, the semi-hard draws from the batch's seeds (no generator held)."""
import pytest
import torch
import torch.nn.functional as F

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.data.common import RANKING_SEED_STREAM, derive_seed, sample_seed
from unipt_plugin.data.mlm_masking import IGNORE_INDEX, MLMMasking
from unipt_plugin.modeling.meta_arch import UniPTPretrain, UniPTT2I

from standins import StandInText, StandInVisual

VOCAB = 50
SPECIALS = [0, 1, 2, 3]  # pad, cls, sep, mask


class StandInTokenizer:
    special_ids, mask_id, vocab_size = SPECIALS, 3, VOCAB

    @staticmethod
    def word_start_mask(ids):
        return ids % 3 != 0  # ids divisible by 3 continue the previous word


def _cfg(**opts):
    cfg = get_unipt_cfg()
    cfg.MODEL.PRETRAIN.EMBED_DIM = 16
    cfg.MODEL.PRETRAIN.MLM_PROB = 0.3
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.T2I.EMBED_DIM = 16
    cfg.MODEL.PGU.update(NUM_PROTOTYPES=3, DIM=16, NUM_HEADS=2, FFN_DIM=32, PART_DIM=8, DROPOUT=0.0)
    cfg.merge_from_list([x for pair in opts.items() for x in pair])
    return cfg


def _masking(prob=0.3):
    return MLMMasking(SPECIALS, VOCAB, 3, prob=prob, word_start_mask=StandInTokenizer.word_start_mask)


def _batch(b=8, l=10, h=32, w=16, seed=0):
    """A training batch as the loader's collator makes it: with the samples' seeds and the MLM
    masks drawn from them (ids of the stand-in vocabulary)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, l), generator=g)
    mask = torch.ones(b, l, dtype=torch.long)
    lengths = torch.randint(5, l + 1, (b,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n - 1] = 1, 2
        ids[i, n:], mask[i, n:] = 0, 0
    seeds = torch.tensor([sample_seed(seed, 0, p) for p in range(b)])
    mlm_ids, mlm_labels = _masking()(ids, mask, seeds)
    return {"images": torch.rand(b, 3, h, w, generator=g) * 255, "text_ids": ids, "text_mask": mask,
            "targets": torch.arange(b) // 2, "img_ids": torch.arange(b), "seeds": seeds,
            "mlm_ids": mlm_ids, "mlm_labels": mlm_labels}


def _pretrain(**opts):
    torch.manual_seed(0)
    return UniPTPretrain(_cfg(**opts), StandInVisual(), StandInText(VOCAB), StandInTokenizer())


def _t2i(**opts):
    torch.manual_seed(0)
    return UniPTT2I(_cfg(**opts), StandInVisual(), StandInText(VOCAB))


def _train(model, batch, steps=25, lr=3e-3):
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        losses = model(batch)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()} | {"total": total.item()})
    return history


def test_pretrain_loss_dict_and_steps_lower_the_loss():
    model, batch = _pretrain(), _batch()
    model.train()
    losses = model(batch)
    assert set(losses) == {"loss_con", "loss_mlm"}
    assert all(v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    hist = _train(model, batch, steps=30)
    # at temperature 1 and batch 8 the contrastive loss is bounded below by about 1.1
    assert hist[-1]["loss_con"] < 0.7 * hist[0]["loss_con"]
    assert sum(h["loss_mlm"] for h in hist[-3:]) / 3 < 0.95 * hist[0]["loss_mlm"]
    assert hist[-1]["total"] < hist[0]["total"] - 0.5


def test_pretrain_mlm_weight_zero_drops_mlm_and_keeps_contrastive():
    on, off = _pretrain(), _pretrain(**{"MODEL.PRETRAIN.MLM_WEIGHT": 0.0})
    assert off.mlm_head is None and not any(n.startswith("mlm_head") for n, _ in off.named_parameters())
    batch = _batch()
    on.train(), off.train()
    l_on, l_off = on(batch), off(batch)
    assert set(l_off) == {"loss_con"}
    assert torch.allclose(l_on["loss_con"], l_off["loss_con"])
    # beta scales the MLM term (the masks come with the batch)
    half = _pretrain(**{"MODEL.PRETRAIN.MLM_WEIGHT": 0.5}).train()
    assert torch.allclose(half(batch)["loss_mlm"], 0.5 * l_on["loss_mlm"], atol=1e-6)
    # without MLM the batch needs no masks
    plain = {k: v for k, v in batch.items() if not k.startswith("mlm_")}
    assert torch.equal(off(plain)["loss_con"], l_off["loss_con"])


def test_pretrain_eval_features_and_learnable_temperature():
    model = _pretrain(**{"MODEL.PRETRAIN.LEARNABLE_TEMPERATURE": True, "MODEL.PRETRAIN.TEMPERATURE": 0.5}).eval()
    batch = _batch()
    with torch.no_grad():
        img = model({"images": batch["images"]})
        txt = model({"text_ids": batch["text_ids"], "text_mask": batch["text_mask"]})
        # independent: normalise, encode, project, max over real tokens
        tok = model.text_proj(model.text(batch["text_ids"], batch["text_mask"]))
        tok[batch["text_mask"] == 0] = float("-inf")
        expected_txt = F.normalize(tok.max(1).values, dim=-1)
    assert img.shape == (8, 16) and txt.shape == (8, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert torch.allclose(txt, expected_txt, atol=1e-6)
    assert model.logit_scale().item() == pytest.approx(2.0)
    model.train()
    model(batch)["loss_con"].backward()
    assert model.log_logit_scale.grad is not None


def test_t2i_loss_dict_and_steps_lower_the_loss():
    model, batch = _t2i(), _batch()
    model.train()
    assert set(model(batch)) == {"loss_id", "loss_rank", "loss_pgu_id", "loss_pgu_rank"}
    hist = _train(model, batch)
    assert sum(h["total"] for h in hist[-3:]) / 3 < 0.8 * hist[0]["total"]


def test_t2i_pgu_weight_zero_and_disabled_pgu():
    batch = _batch()
    full, off = _t2i().train(), _t2i(**{"MODEL.T2I.PGU_WEIGHT": 0.0}).train()
    l_full, l_off = full(batch), off(batch)
    assert set(l_off) == {"loss_id", "loss_rank"}
    assert torch.allclose(l_full["loss_id"], l_off["loss_id"])
    no_pgu = _t2i(**{"MODEL.PGU.ENABLED": False, "MODEL.T2I.TEST_SCORE": "global"})
    assert no_pgu.pgu is None and set(no_pgu.train()(batch)) == {"loss_id", "loss_rank"}
    with pytest.raises(ValueError, match="PGU.ENABLED"):
        _t2i(**{"MODEL.PGU.ENABLED": False, "MODEL.T2I.TEST_SCORE": "sum"})
    with pytest.raises(ValueError, match="TEST_SCORE"):
        _t2i(**{"MODEL.T2I.TEST_SCORE": "mean"})


def test_t2i_eval_features_per_test_score():
    model, batch = _t2i().eval(), _batch()
    img_b = {"images": batch["images"], "targets": batch["targets"]}
    txt_b = {"text_ids": batch["text_ids"], "text_mask": batch["text_mask"], "targets": batch["targets"]}
    feats = {}
    with torch.no_grad():
        for score in ("global", "pgu", "sum"):
            model.test_score = score
            feats[score] = (model(img_b), model(txt_b))
        # independent global feature: max-pooled projected tokens, normalised
        v = model.visual((batch["images"] - 127.5) / 127.5)
        g_img = F.normalize(model.image_proj(v).max(1).values, dim=-1)
        _, p_img = model.pgu(v, "image")
    assert feats["global"][0].shape == (8, 16) and feats["pgu"][0].shape == (8, 24)
    assert feats["sum"][1].shape == (8, 40)
    assert torch.allclose(feats["global"][0], g_img, atol=1e-5)
    assert torch.allclose(feats["pgu"][0], p_img, atol=1e-6)
    for score in ("global", "pgu"):
        assert torch.allclose(feats[score][1].norm(dim=-1), torch.ones(8), atol=1e-5)
    s_sum = feats["sum"][1] @ feats["sum"][0].t()
    s_parts = feats["global"][1] @ feats["global"][0].t() + feats["pgu"][1] @ feats["pgu"][0].t()
    assert torch.allclose(s_sum, s_parts, atol=1e-5)


def test_real_tiny_encoders_through_build_model():
    from fastreid.modeling.meta_arch import build_model

    cfg = get_unipt_cfg()
    cfg.merge_from_file("configs/Tiny/t2i.yml")
    cfg.merge_from_list(["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.T2I.TEST_SCORE", "sum"])
    model = build_model(cfg)
    assert isinstance(model, UniPTT2I)
    batch = _batch(b=4, l=12, h=64, w=32)
    batch["targets"] = torch.tensor([0, 0, 1, 3])
    model.train()
    losses = model(batch)
    assert set(losses) == {"loss_id", "loss_rank", "loss_pgu_id", "loss_pgu_rank"}
    sum(losses.values()).backward()
    assert model.visual.out_dim == 64 and any(p.grad is not None for p in model.text.parameters())
    model.eval()
    with torch.no_grad():
        assert model({"images": batch["images"]}).shape == (4, 64 + 3 * 32)

    class BertIds:
        special_ids, mask_id, vocab_size = [0, 100, 101, 102, 103], 103, 30522

        @staticmethod
        def word_start_mask(ids):
            return torch.ones_like(ids, dtype=torch.bool)

    pcfg = get_unipt_cfg()
    pcfg.merge_from_file("configs/Tiny/pretrain.yml")
    pre = UniPTPretrain(pcfg, tokenizer=BertIds()).train()
    out = pre(batch)
    assert set(out) == {"loss_con", "loss_mlm"} and pre.mlm_head.decoder.out_features == 30522


@pytest.mark.parametrize("arch", ["pretrain", "t2i"])
def test_autocast_runs_and_losses_are_float32(arch):
    # bfloat16 autocast on the CPU exercises the same code path as fp16 autocast on a GPU.
    model = (_pretrain() if arch == "pretrain" else _t2i()).train()
    batch = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch)
        total = sum(losses.values())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    total.backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model({"images": batch["images"]})
    # pretrain: one normalised feature; t2i "sum": two normalised halves -> norm sqrt(2)
    expected_norm = 1.0 if arch == "pretrain" else 2 ** 0.5
    assert torch.isfinite(feats).all()
    assert torch.allclose(feats.float().norm(dim=-1), torch.full((8,), expected_norm), atol=1e-2)


def test_check_finite_losses_names_the_non_finite_terms():
    from fastreid.utils.events import EventStorage

    from unipt_plugin.modeling.meta_arch.common import NonFiniteLossError, check_finite_losses

    ok = {"loss_con": torch.tensor(1.5), "loss_mlm": torch.tensor(2.0)}
    assert check_finite_losses(ok) is ok
    bad = {"loss_id": torch.tensor(0.5), "loss_rank": torch.tensor(float("nan")),
           "loss_pgu_id": torch.tensor(float("inf"))}
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss outside a training loop: loss_rank, loss_pgu_id "
                                                 r"\(loss_id = 0\.5, loss_rank = nan, loss_pgu_id = inf\)"):
        check_finite_losses(bad)
    with EventStorage(start_iter=17):
        with pytest.raises(NonFiniteLossError, match=r"at iteration 17: loss_rank, loss_pgu_id"):
            check_finite_losses(bad)


# ---------------------------------------------------------------- construction, masks, generators
def _no_generators(model):
    return [f"{n}.{a}" for n, m in model.named_modules() for a, v in vars(m).items()
            if isinstance(v, torch.Generator)]


def test_models_hold_no_generator_and_no_tokenizer():
    pre, t2i = _pretrain(), _t2i()
    assert _no_generators(pre) == [] and _no_generators(t2i) == []
    assert not any(isinstance(v, StandInTokenizer) for m in pre.modules() for v in vars(m).values())


def test_meta_architectures_from_plain_arguments():
    torch.manual_seed(0)
    visual, text = StandInVisual(), StandInText(VOCAB)
    pre = UniPTPretrain(visual, text, 12, temperature=0.5, mlm_weight=0.5, tokenizer_vocab_size=VOCAB)
    assert pre.visual is visual and pre.text is text
    assert pre.image_proj.out_features == pre.text_proj.out_features == 12
    assert pre.logit_scale() == pytest.approx(2.0) and pre.mlm_weight == 0.5
    assert pre.mlm_head.decoder.out_features == VOCAB
    batch = _batch()
    pre.train()
    assert set(pre(batch)) == {"loss_con", "loss_mlm"}
    off = UniPTPretrain(StandInVisual(), StandInText(VOCAB), 12, mlm_weight=0.0)
    assert off.mlm_head is None

    from unipt_plugin.modeling.pgu.pgu import PGU

    pgu = PGU(16, 16, dim=16, num_prototypes=3, num_heads=2, ffn_dim=32, dropout=0.0, part_dim=8)
    t2i = UniPTT2I(StandInVisual(), StandInText(VOCAB), pgu, 16, 4, rank_margin=0.3, test_score="pgu")
    assert t2i.pgu is pgu and t2i.margin == 0.3 and t2i.classifier is not None
    assert t2i.part_classifiers is not None
    t2i.train()
    assert set(t2i(batch)) == {"loss_id", "loss_rank", "loss_pgu_id", "loss_pgu_rank"}
    t2i.eval()
    with torch.no_grad():
        assert t2i({"images": batch["images"]}).shape == (8, 24)
    with pytest.raises(ValueError, match="PGU.ENABLED"):
        UniPTT2I(StandInVisual(), StandInText(VOCAB), None, 16, 4)  # TEST_SCORE "sum" needs the PGU
    # a config and an override of one argument: from_config's arguments, then the override
    assert UniPTT2I(_cfg(), StandInVisual(), StandInText(VOCAB), rank_margin=0.7).margin == 0.7


def test_pretrain_mlm_loss_is_the_head_on_the_batch_masks():
    model, batch = _pretrain().train(), _batch()
    loss = model(batch)["loss_mlm"]
    # independent: the text encoder on the batch's masked ids, the head on the predicted
    # positions, cross-entropy against the labels
    labels = batch["mlm_labels"]
    picked = labels != IGNORE_INDEX
    assert 5 < int(picked.sum()) < int(batch["text_mask"].sum())
    tokens = model.text(batch["mlm_ids"], batch["text_mask"])
    expected = F.cross_entropy(model.mlm_head(tokens[picked]), labels[picked])
    assert torch.allclose(loss, expected, atol=1e-6)
    # the model masks nothing itself: the same batch gives the same loss, other masks another
    assert torch.equal(model(batch)["loss_mlm"], loss)
    other = dict(batch)
    other["mlm_ids"], other["mlm_labels"] = _masking()(batch["text_ids"], batch["text_mask"], batch["seeds"] + 1)
    assert not torch.allclose(model(other)["loss_mlm"], loss)


def test_pretrain_training_batch_without_masks_is_refused():
    model, batch = _pretrain().train(), _batch()
    for drop in (("mlm_ids",), ("mlm_labels",), ("mlm_ids", "mlm_labels")):
        bad = {k: v for k, v in batch.items() if k not in drop}
        with pytest.raises(KeyError, match=r"lacks \[.*'mlm_.*MODEL.PRETRAIN.MLM_WEIGHT = 1.0 > 0.*collator"):
            model(bad)
    bad = dict(batch, mlm_ids=batch["mlm_ids"][:, :-1])
    with pytest.raises(ValueError, match="'mlm_ids'.*shape of 'text_mask'"):
        model(bad)
    model.eval()
    with torch.no_grad():  # inference needs no masks
        assert model({"text_ids": batch["text_ids"], "text_mask": batch["text_mask"]}).shape == (8, 16)


def test_pretrain_refuses_a_tokenizer_of_another_vocabulary():
    class Wider(StandInTokenizer):
        vocab_size = VOCAB + 10

    with pytest.raises(ValueError, match=r"tokenizer's vocabulary \(60 ids, INPUT.TEXT.TOKENIZER\) is not the text "
                                         r"encoder's \(50 ids, MODEL.TEXT.NAME\)"):
        UniPTPretrain(_cfg(), StandInVisual(), StandInText(VOCAB), Wider())
    # without MLM the vocabularies need not match
    UniPTPretrain(_cfg(**{"MODEL.PRETRAIN.MLM_WEIGHT": 0.0}), StandInVisual(), StandInText(VOCAB), Wider())
    # from the config: the CLIP tokenizer (49408 ids) with the small BERT (30522)
    cfg = get_unipt_cfg()
    cfg.merge_from_file("configs/Tiny/pretrain.yml")
    cfg.INPUT.TEXT.TOKENIZER = "clip"
    with pytest.raises(ValueError, match=r"\(49408 ids, INPUT.TEXT.TOKENIZER\).*\(30522 ids, MODEL.TEXT.NAME\)"):
        UniPTPretrain(cfg, visual=StandInVisual())


class _DrawSpy:
    """Records the generator of every semi-hard draw of the ranking losses."""

    def __init__(self, monkeypatch):
        from unipt_plugin.modeling.losses import ranking

        self.generators = []
        real = ranking._draw_semi_hard

        def spy(semi, sim, generator):
            self.generators.append(generator)
            return real(semi, sim, generator)

        monkeypatch.setattr(ranking, "_draw_semi_hard", spy)


def test_t2i_semi_hard_draws_come_from_the_batch_seeds(monkeypatch):
    spy = _DrawSpy(monkeypatch)
    model, batch = _t2i().train(), _batch()
    torch.manual_seed(1)
    first = model(batch)
    # two ranking losses x two directions, one generator for the step, seeded from the first
    # sample's seed (its ranking stream), on the model's device
    assert len(spy.generators) == 4 and all(g is spy.generators[0] for g in spy.generators)
    g = spy.generators[0]
    assert g.initial_seed() == derive_seed(int(batch["seeds"][0]), RANKING_SEED_STREAM) and g.device.type == "cpu"
    # a function of the seeds only: the same batch again gives bit-identical losses (no state
    # carried from step to step), whatever the global RNG
    torch.manual_seed(2)
    again = model(batch)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert spy.generators[4] is not g and spy.generators[4].initial_seed() == g.initial_seed()
    # a micro-batch of gradient accumulation (rows k::K) seeds from its own first sample
    from unipt_plugin.engine.train_loop import split_batch

    part = split_batch(batch, 2)[1]
    model(part)
    assert spy.generators[-1].initial_seed() == derive_seed(int(batch["seeds"][1]), RANKING_SEED_STREAM)
    # a batch without seeds draws from torch's global RNG
    model({k: v for k, v in batch.items() if k != "seeds"})
    assert spy.generators[-1] is None


def test_model_device_names():
    from unipt_plugin.modeling.meta_arch.common import model_device

    assert model_device(None) == model_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        current = torch.device("cuda", torch.cuda.current_device())
        assert model_device("cuda") == model_device("auto") == current
        assert model_device("cuda:0") == torch.device("cuda", 0)
    else:
        assert model_device("auto") == torch.device("cpu")
        assert model_device("cuda") == torch.device("cpu")  # buildable (with a warning), e.g. to inspect


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_steps_on_cuda_draw_on_the_model_device(monkeypatch):
    spy = _DrawSpy(monkeypatch)
    for build in (_pretrain, _t2i):
        model = build(**{"MODEL.DEVICE": "cuda"}).cuda().train()
        assert _no_generators(model) == []
        losses = model(_batch())
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values())
    current = torch.device("cuda", torch.cuda.current_device())
    assert spy.generators and all(g.device == current for g in spy.generators)


def test_t2i_gathering_in_one_process_is_the_local_loss():
    # W = 1: GATHER_NEGATIVES changes nothing, bit for bit
    batch = _batch()
    on, off = _t2i().train(), _t2i(**{"MODEL.T2I.GATHER_NEGATIVES": False}).train()
    assert on.gather_negatives and not off.gather_negatives
    l_on, l_off = on(batch), off(batch)
    assert l_on.keys() == l_off.keys()
    assert all(torch.equal(l_on[k], l_off[k]) for k in l_on)
