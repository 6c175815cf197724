"""CMPM / CMPC (Zhang & Lu, ECCV 2018; PLIP's fine-tuning) against brute-force loops over the
definition, the fine-tuning keys (IVLC, CMPM, CMPC: terms added, nothing else changed when on,
the model and the loss dict of before when off, bad values refused) and a 2-iteration tiny
fine-tuning through the trainer with the three terms on. (The gathered CMPM of two processes is
checked in tests/test_ivlc_loss.py, in the spawn it shares with IVLC.)"""
import math
import os

import pytest
import torch

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.modeling.losses import NormSoftmaxClassifier, cmpc_loss, cmpm_loss, ivlc_loss
from unipt_plugin.modeling.meta_arch import UniPTT2I

from standins import StandInText, StandInVisual

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_T2I = os.path.join(ROOT, "configs", "Tiny", "t2i.yml")


# ----------------------------------------------------------------------------- brute force
def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _norm(a):
    return math.sqrt(_dot(a, a))


def _brute_cmpm(X, Z, ids, eps, target_norm):
    """The definition, one anchor and one candidate at a time (plain Python floats)."""
    def direction(A, B):
        total = 0.0
        for i in range(len(A)):
            logits = [_dot(A[i], B[j]) / _norm(B[j]) for j in range(len(B))]
            top = max(logits)
            z = sum(math.exp(v - top) for v in logits)
            p = [math.exp(v - top) / z for v in logits]
            y = [1.0 if ids[j] == ids[i] else 0.0 for j in range(len(B))]
            denom = sum(y) if target_norm == "l1" else math.sqrt(sum(v * v for v in y))
            total += sum(p[j] * (math.log(p[j]) - math.log(y[j] / denom + eps)) for j in range(len(B)))
        return total / len(A)
    return direction(X, Z) + direction(Z, X)


def _brute_cmpc(X, Z, ids, W):
    def direction(A, B):
        total = 0.0
        for i in range(len(A)):
            nb = _norm(B[i])
            unit = [v / nb for v in B[i]]
            along = _dot(A[i], unit)
            proj = [along * v for v in unit]
            logits = [_dot(proj, w) / _norm(w) for w in W]
            top = max(logits)
            total += -(logits[ids[i]] - top) + math.log(sum(math.exp(v - top) for v in logits))
        return total / len(A)
    return direction(X, Z) + direction(Z, X)


def _embeddings(n=6, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 2, torch.randn(n, d, generator=g) * 2


IDS = [2, 0, 2, 1, 0, 2]  # identity 2 has three pairs, 0 two, 1 one


@pytest.mark.parametrize("target_norm", ["l1", "l2"])
@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_cmpm_equals_the_brute_force_definition(target_norm, eps):
    x, z = _embeddings()
    got = cmpm_loss(x, z, torch.tensor(IDS), eps=eps, target_norm=target_norm)
    want = _brute_cmpm(x.tolist(), z.tolist(), IDS, eps, target_norm)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_cmpm_target_norms_differ_only_with_repeated_identities():
    x, z = _embeddings()
    l1 = cmpm_loss(x, z, torch.tensor(IDS), target_norm="l1")
    l2 = cmpm_loss(x, z, torch.tensor(IDS), target_norm="l2")
    assert abs(l1.item() - l2.item()) > 1e-2
    distinct = torch.arange(6)  # one positive each: L1 and L2 norms of y are both 1
    assert torch.allclose(cmpm_loss(x, z, distinct, target_norm="l1"), cmpm_loss(x, z, distinct, target_norm="l2"))


def test_cmpc_equals_the_brute_force_definition_and_the_classifier_is_norm_softmax():
    x, z = _embeddings()
    torch.manual_seed(4)
    clf = NormSoftmaxClassifier(4, 3)
    # Xavier-uniform init: |w| <= sqrt(6 / (fan_in + fan_out))
    assert clf.weight.shape == (3, 4) and clf.weight.abs().max() <= math.sqrt(6 / 7)
    with torch.no_grad():
        clf.weight.mul_(torch.tensor([[0.5], [3.0], [1.0]]))  # unequal norms: the loss normalises them
    got = cmpc_loss(x, z, torch.tensor(IDS), clf.weight)
    assert got.item() == pytest.approx(_brute_cmpc(x.tolist(), z.tolist(), IDS, clf.weight.tolist()), rel=1e-5)
    # the classifier's own forward is the same norm-softmax logits
    w = clf.weight.detach()
    assert torch.allclose(clf(x), x @ (w / w.norm(dim=1, keepdim=True)).t(), atol=1e-6)
    with pytest.raises(ValueError, match=r"class_weight \(C, 4\)"):
        cmpc_loss(x, z, torch.tensor(IDS), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="NUM_CLASSES=0"):
        NormSoftmaxClassifier(4, 0)


def test_cmpm_and_cmpc_are_float32_under_autocast():
    x, z = _embeddings()
    clf = NormSoftmaxClassifier(4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = cmpm_loss(x.bfloat16(), z.bfloat16(), torch.tensor(IDS))
        c = cmpc_loss(x.bfloat16(), z.bfloat16(), torch.tensor(IDS), clf.weight)
    assert m.dtype == c.dtype == torch.float32 and torch.isfinite(m) and torch.isfinite(c)


# ----------------------------------------------------------------------------- UniPTT2I
VOCAB = 50


def _cfg(**opts):
    cfg = get_unipt_cfg()
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.T2I.EMBED_DIM = 16
    cfg.MODEL.PGU.update(NUM_PROTOTYPES=3, DIM=16, NUM_HEADS=2, FFN_DIM=32, PART_DIM=8, DROPOUT=0.0)
    cfg.merge_from_list([x for pair in opts.items() for x in pair])
    return cfg


def _t2i(**opts):
    torch.manual_seed(0)
    return UniPTT2I(_cfg(**opts), StandInVisual(), StandInText(VOCAB))


def _batch():
    g = torch.Generator().manual_seed(5)
    return {"images": torch.rand(8, 3, 32, 16, generator=g) * 255,
            "text_ids": torch.randint(4, VOCAB, (8, 9), generator=g),
            "text_mask": torch.ones(8, 9, dtype=torch.long), "targets": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
            "seeds": torch.arange(8) + 100}


ON = {"MODEL.T2I.IVLC_WEIGHT": 0.5, "MODEL.T2I.IVLC_TEMPERATURE": 0.25, "MODEL.T2I.CMPM_WEIGHT": 2.0,
      "MODEL.T2I.CMPC_WEIGHT": 3.0, "MODEL.T2I.CMPM_TARGET_NORM": "l2", "MODEL.T2I.CMPM_EPS": 1e-6}
BEFORE = {"loss_id", "loss_rank", "loss_pgu_id", "loss_pgu_rank"}


def test_t2i_plip_terms_are_added_and_nothing_else_changes():
    off, on = _t2i().train(), _t2i(**ON).train()
    assert off.cmpc_classifier is None and not any("cmpc" in k for k in off.state_dict())
    s_off, s_on = off.state_dict(), on.state_dict()
    # one tensor more, the CMPC classifier; every other tensor as without it (built last)
    assert set(s_on) - set(s_off) == {"cmpc_classifier.weight"} and set(s_off) <= set(s_on)
    assert all(torch.equal(s_off[k], s_on[k]) for k in s_off)
    assert s_on["cmpc_classifier.weight"].shape == (4, 16)
    batch = _batch()
    l_off, l_on = off(batch), on(batch)
    assert set(l_off) == BEFORE and set(l_on) == BEFORE | {"loss_ivlc", "loss_cmpm", "loss_cmpc"}
    for k in BEFORE:
        assert torch.equal(l_on[k], l_off[k]), k
    # the new terms: the losses on the global embeddings (un-normalised), with the keys' values
    with torch.no_grad():
        g_img = on._global(on.image_tokens(batch["images"]), on.image_proj, None)
        g_txt = on._global(on.text(batch["text_ids"], batch["text_mask"]), on.text_proj, batch["text_mask"])
    y = batch["targets"]
    assert torch.allclose(l_on["loss_ivlc"], 0.5 * ivlc_loss(g_img, g_txt, y, 4.0), atol=1e-6)
    assert torch.allclose(l_on["loss_cmpm"], 2.0 * cmpm_loss(g_img, g_txt, y, 1e-6, "l2"), atol=1e-5)
    assert torch.allclose(l_on["loss_cmpc"], 3.0 * cmpc_loss(g_img, g_txt, y, on.cmpc_classifier.weight), atol=1e-6)
    sum(l_on.values()).backward()
    assert on.cmpc_classifier.weight.grad is not None and on.cmpc_classifier.weight.grad.abs().sum() > 0


def test_t2i_plip_losses_alone():
    only = _t2i(**{"MODEL.T2I.ID_WEIGHT": 0.0, "MODEL.T2I.RANK_WEIGHT": 0.0, "MODEL.T2I.PGU_WEIGHT": 0.0,
                   "MODEL.T2I.CMPM_WEIGHT": 1.0, "MODEL.T2I.CMPC_WEIGHT": 1.0}).train()
    losses = only(_batch())
    assert set(losses) == {"loss_cmpm", "loss_cmpc"}
    sum(losses.values()).backward()
    # every trainable parameter gets a gradient (DDP's static graph); the unused ones are frozen
    missing = [n for n, p in only.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize("opts, match", [
    ({"MODEL.T2I.CMPM_WEIGHT": -1.0}, r"MODEL.T2I.CMPM_WEIGHT must be >= 0 \(0 = off\), got -1.0"),
    ({"MODEL.T2I.CMPC_WEIGHT": -0.1}, r"MODEL.T2I.CMPC_WEIGHT must be >= 0"),
    ({"MODEL.T2I.IVLC_WEIGHT": -2.0}, r"MODEL.T2I.IVLC_WEIGHT must be >= 0"),
    ({"MODEL.T2I.IVLC_TEMPERATURE": 0.0}, r"MODEL.T2I.IVLC_TEMPERATURE must be > 0"),
    ({"MODEL.T2I.CMPM_EPS": 0.0}, r"MODEL.T2I.CMPM_EPS must be > 0"),
    ({"MODEL.T2I.CMPM_TARGET_NORM": "l3"}, r"MODEL.T2I.CMPM_TARGET_NORM must be one of \('l1', 'l2'\), got 'l3'"),
])
def test_bad_t2i_plip_values_are_refused(opts, match):
    with pytest.raises(ValueError, match=match):
        _t2i(**opts)


def test_cmpc_without_classes_builds_no_classifier_and_cannot_train():
    model = _t2i(**{"MODEL.HEADS.NUM_CLASSES": 0, "MODEL.T2I.CMPC_WEIGHT": 1.0})
    assert model.cmpc_classifier is None  # inference-only model (evaluation, search, export)
    with pytest.raises(ValueError, match=r"NUM_CLASSES = 0 \(inference only\).*CMPC classifiers"):
        model.train()(_batch())
    nothing = _t2i(**{"MODEL.T2I.ID_WEIGHT": 0.0, "MODEL.T2I.RANK_WEIGHT": 0.0, "MODEL.T2I.PGU_WEIGHT": 0.0})
    with pytest.raises(ValueError, match="no loss to train"):
        nothing.train()(_batch())


# ----------------------------------------------------------------------------- through the trainer
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from raw_fixtures import make_cuhk_pedes

    root = str(tmp_path_factory.mktemp("cmpm_data"))
    make_cuhk_pedes(root, num_ids=4, images_per_id=2, captions_per_image=2)
    return root


def test_two_iteration_tiny_finetuning_with_ivlc_cmpm_cmpc(data_root, tmp_path):
    from fastreid.utils.events import EventStorage

    from unipt_plugin.engine import UniPTTrainer, setup_cfg

    out = str(tmp_path / "run")
    os.makedirs(out)
    cfg = setup_cfg(TINY_T2I, ["DATASETS.ROOT", data_root, "OUTPUT_DIR", out, "SEED", "1",
                               "MODEL.T2I.IVLC_WEIGHT", "1.0", "MODEL.T2I.CMPM_WEIGHT", "1.0",
                               "MODEL.T2I.CMPC_WEIGHT", "1.0"])
    trainer = UniPTTrainer(cfg)
    clf = trainer.model.cmpc_classifier
    assert clf is not None and clf.weight.shape == (4, 64)  # 4 training persons, T2I.EMBED_DIM 64
    assert any(p is clf.weight for g in trainer.optimizer.param_groups for p in g["params"])
    before = clf.weight.detach().clone()
    names = sorted(BEFORE | {"loss_ivlc", "loss_cmpm", "loss_cmpc"})
    with EventStorage(0) as storage:
        for it in range(2):
            storage.iter = trainer._trainer.iter = it
            trainer._trainer.run_step()
        history = {k: [v for v, _ in storage.history(k).values()] for k in names}
        assert not any(k.startswith("loss_") and k not in names for k in storage.histories())
    for name, values in history.items():
        assert len(values) == 2 and all(math.isfinite(v) for v in values), name
    assert not torch.equal(clf.weight.detach(), before)  # the classifier is trained
