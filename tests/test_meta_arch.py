"""UniPTPretrain and UniPTT2I: loss dicts, a few Adam steps lower the loss, inference features
per TEST_SCORE with the inner-product property, the beta / gamma switches, real tiny encoders
through fast-reid's build_model."""
import pytest
import torch
import torch.nn.functional as F

from unipt_plugin.config import get_unipt_cfg
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


def _batch(b=8, l=10, h=32, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, l), generator=g)
    mask = torch.ones(b, l, dtype=torch.long)
    lengths = torch.randint(5, l + 1, (b,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n - 1] = 1, 2
        ids[i, n:], mask[i, n:] = 0, 0
    return {"images": torch.rand(b, 3, h, w, generator=g) * 255, "text_ids": ids, "text_mask": mask,
            "targets": torch.arange(b) // 2, "img_ids": torch.arange(b)}


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
    # beta scales the MLM term (same seed -> same masks)
    half = _pretrain(**{"MODEL.PRETRAIN.MLM_WEIGHT": 0.5}).train()
    assert torch.allclose(half(batch)["loss_mlm"], 0.5 * l_on["loss_mlm"], atol=1e-6)


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
        special_ids, mask_id = [0, 100, 101, 102, 103], 103

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


# ---------------------------------------------------------------- random generators, gathering
def test_generators_on_the_cpu_are_seeded_as_before_and_checkpointed():
    from unipt_plugin.engine.rng import _module_generators

    pre, t2i = _pretrain(), _t2i()
    for gen, offset in ((pre.mask_generator, 1), (t2i.rank_generator, 2)):
        assert gen.device == torch.device("cpu")
        # cfg.SEED (0) + offset + 1000 * rank (0): the state of a fresh CPU generator so seeded
        assert torch.equal(gen.get_state(), torch.Generator().manual_seed(offset).get_state())
    assert any(g is pre.mask_generator for g in _module_generators(pre).values())
    assert any(g is t2i.rank_generator for g in _module_generators(t2i).values())
    assert _pretrain(**{"SEED": -1}).mask_generator is None  # seed < 0: torch's global RNG


def test_mlm_masks_on_the_cpu_are_the_seeded_draws(monkeypatch):
    from unipt_plugin.modeling.losses import mask_tokens
    from unipt_plugin.modeling.meta_arch import unipt_pretrain

    seen = []

    def spy(*args, **kwargs):
        out = mask_tokens(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(unipt_pretrain, "mask_tokens", spy)
    model, batch = _pretrain().train(), _batch()
    model(batch)
    model(batch)
    # independent: the same masking of the loader's CPU ids with a CPU generator seeded SEED + 1,
    # whole-word starts from the tokenizer, two steps in a row
    g = torch.Generator().manual_seed(1)
    for masked, labels in seen:
        exp = mask_tokens(batch["text_ids"], batch["text_mask"], SPECIALS, VOCAB, 3, prob=0.3,
                          word_start_mask=StandInTokenizer.word_start_mask(batch["text_ids"]), generator=g)
        assert torch.equal(masked, exp[0]) and torch.equal(labels, exp[1])
    assert len(seen) == 2 and not torch.equal(seen[0][1], seen[1][1])


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
def test_generators_on_cuda_and_a_training_step_there():
    from unipt_plugin.engine.rng import _module_generators

    for build in (_pretrain, _t2i):
        model = build(**{"MODEL.DEVICE": "cuda"}).cuda().train()
        gens = list(_module_generators(model).values())
        assert len(gens) == 1 and gens[0].device == torch.device("cuda", torch.cuda.current_device())
        losses = model(_batch())
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values())


def test_t2i_gathering_in_one_process_is_the_local_loss():
    # W = 1: GATHER_NEGATIVES changes nothing, bit for bit
    batch = _batch()
    on, off = _t2i().train(), _t2i(**{"MODEL.T2I.GATHER_NEGATIVES": False}).train()
    assert on.gather_negatives and not off.gather_negatives
    l_on, l_off = on(batch), off(batch)
    assert l_on.keys() == l_off.keys()
    assert all(torch.equal(l_on[k], l_off[k]) for k in l_on)
