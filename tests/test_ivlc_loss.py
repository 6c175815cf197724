"""PLIP's IVLC (identity-based vision-language contrast): a hand computation with two identities,
the exact reduction to UniPT's contrastive loss without identity labels, the gathered loss and
gradients of two gloo processes against one process on the whole batch (IVLC, and CMPM, which
shares the gather: one spawn for both), the pre-training keys (weights, refusals, nothing changed
when off) and a 2-iteration tiny pre-training through the trainer on data with person ids."""
import importlib
import math
import os
import sys
import tempfile
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from standins import StandInText, StandInVisual, free_port

# The spawned workers re-import this module: the loss files are loaded as a package of their
# own (no unipt_plugin/__init__, which imports fast-reid's models and every plugin part).
_PKG = "_unipt_ivlc_losses"
if _PKG not in sys.modules:
    _pkg = types.ModuleType(_PKG)
    _pkg.__path__ = [os.path.join(os.path.dirname(__file__), os.pardir, "unipt_plugin", "modeling", "losses")]
    sys.modules[_PKG] = _pkg
ivlc_loss = importlib.import_module(f"{_PKG}.ivlc").ivlc_loss
contrastive_loss = importlib.import_module(f"{_PKG}.contrastive").contrastive_loss
cmpm_loss = importlib.import_module(f"{_PKG}.cmpm").cmpm_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_PRETRAIN = os.path.join(ROOT, "configs", "Tiny", "pretrain.yml")


# ----------------------------------------------------------------------------- the loss itself
def _three_pairs():
    """Images e_0, e_1, e_2 (scaled: the loss normalises) and unit texts t_j, so that
    cos(image i, text j) = t_j[i]:

        S = [[0.6, 0.8, 0.0 ],
             [0.8, 0.0, 0.28],
             [0.0, 0.6, 0.96]]
    """
    img = torch.diag(torch.tensor([2.0, 0.5, 3.0]))
    txt = torch.tensor([[0.6, 0.8, 0.0], [0.8, 0.0, 0.6], [0.0, 0.28, 0.96]]) * torch.tensor([[1.5], [0.7], [4.0]])
    return img, txt


def test_ivlc_against_a_hand_computation_with_two_identities():
    img, txt = _three_pairs()
    e = math.exp
    # identities A, A, B; logit scale 2 (temperature 0.5): logits 2 * S
    # image -> text, row i over texts j; A's targets 1/2 on texts 0 and 1, B's 1 on text 2
    i2t = [math.log(e(1.2) + e(1.6) + e(0.0)) - (1.2 + 1.6) / 2,
           math.log(e(1.6) + e(0.0) + e(0.56)) - (1.6 + 0.0) / 2,
           math.log(e(0.0) + e(1.2) + e(1.92)) - 1.92]
    # text -> image, column j over images i
    t2i = [math.log(e(1.2) + e(1.6) + e(0.0)) - (1.2 + 1.6) / 2,
           math.log(e(1.6) + e(0.0) + e(1.2)) - (1.6 + 0.0) / 2,
           math.log(e(0.0) + e(0.56) + e(1.92)) - 1.92]
    expected = (sum(i2t) / 3 + sum(t2i) / 3) / 2
    for ids in ([0, 0, 1], [7, 7, 2]):  # only equality of the labels matters
        got = ivlc_loss(img, txt, torch.tensor(ids), logit_scale=2.0)
        assert got.dtype == torch.float32 and got.dim() == 0
        assert got.item() == pytest.approx(expected, abs=1e-6)
    # every pair its own identity: InfoNCE's hard targets (the diagonal), by hand
    info_i2t = [i2t[0] + (1.2 + 1.6) / 2 - 1.2, i2t[1] + 0.8 - 0.0, i2t[2]]
    info_t2i = [t2i[0] + 1.4 - 1.2, t2i[1] + 0.8 - 0.0, t2i[2]]
    info = (sum(info_i2t) / 3 + sum(info_t2i) / 3) / 2
    assert ivlc_loss(img, txt, None, 2.0).item() == pytest.approx(info, abs=1e-6)
    assert abs(info - expected) > 0.05  # the identities change the value


def test_without_identity_labels_ivlc_is_the_contrastive_loss():
    g = torch.Generator().manual_seed(0)
    img0, txt0 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    results = {}
    for name, targets in (("none", None), ("distinct", torch.tensor([4, 0, 9, 2, 5, 1])), ("con", None)):
        img, txt = img0.clone().requires_grad_(True), txt0.clone().requires_grad_(True)
        scale = torch.tensor(1.7, requires_grad=True)
        loss = contrastive_loss(img, txt, scale) if name == "con" else ivlc_loss(img, txt, targets, scale)
        loss.backward()
        results[name] = (loss.detach(), img.grad, txt.grad, scale.grad)
    for name in ("none", "distinct"):
        for got, want in zip(results[name], results["con"]):
            assert torch.allclose(got, want, atol=1e-6, rtol=1e-6), name
    # a repeated identity makes the two pairs positives of each other: another value
    shared = ivlc_loss(img0, txt0, torch.tensor([4, 4, 9, 2, 5, 1]), 1.7)
    assert not torch.allclose(shared, results["con"][0], atol=1e-3)


def test_bad_shapes_are_refused():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"two \(N, D\) tensors"):
        ivlc_loss(x, torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"targets \(N,\) = \(4,\), got \(3,\)"):
        ivlc_loss(x, x, torch.arange(3))


# ----------------------------------------------------------------------------- two processes
N_PER_RANK, IN_DIM, OUT_DIM, WORLD = 3, 6, 5, 2
# identity 1 spans both processes' halves: its positives are partly gathered
TARGETS = torch.tensor([0, 1, 1, 1, 2, 3])
# name -> (loss of (img, txt, scale, targets, gather), the full batch's targets)
CASES = {
    "ivlc_ids": (lambda i, t, s, y, g: ivlc_loss(i, t, y, s, gather=g), TARGETS),
    "ivlc_none": (lambda i, t, s, y, g: ivlc_loss(i, t, y, s, gather=g), None),
    # CMPM has no temperature: the scale multiplies the image embeddings so that it gets a gradient
    "cmpm_l2": (lambda i, t, s, y, g: cmpm_loss(i * s, t, y, target_norm="l2", gather=g), TARGETS),
}


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * N_PER_RANK, IN_DIM, generator=g), torch.randn(WORLD * N_PER_RANK, IN_DIM, generator=g)


def _model():
    torch.manual_seed(1)
    model = nn.ModuleDict({"img": nn.Linear(IN_DIM, OUT_DIM), "txt": nn.Linear(IN_DIM, OUT_DIM)})
    model.logit_scale = nn.Parameter(torch.tensor(1.5))
    return model


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        x_img, x_txt = _data()
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        out = {}
        for name, (fn, targets) in CASES.items():
            model = _model()
            loss = fn(model["img"](x_img[rows]), model["txt"](x_txt[rows]), model.logit_scale,
                      None if targets is None else targets[rows], True)
            loss.backward()
            # what DistributedDataParallel does to the gradients: their mean over the processes
            # (done by hand: constructing DDP costs tens of seconds of imports on a small machine)
            grads = {}
            for n, p in model.named_parameters():
                dist.all_reduce(p.grad)
                grads[n] = p.grad / WORLD
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            out[name] = {"loss": mean / WORLD, "grads": grads}
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_ivlc_and_cmpm_and_gradients_equal_one_process_on_the_whole_batch():
    x_img, x_txt = _data()
    expected = {}
    for name, (fn, targets) in CASES.items():
        single = _model()
        loss = fn(single["img"](x_img), single["txt"](x_txt), single.logit_scale, targets, False)
        loss.backward()
        expected[name] = (loss.detach(), {n: p.grad.clone() for n, p in single.named_parameters()})
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(free_port(), tmp), nprocs=WORLD, join=True)
        results = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    for res in results:
        for name, (loss, grads) in expected.items():
            assert torch.allclose(res[name]["loss"], loss, atol=1e-6), name
            for p, g in grads.items():
                assert torch.allclose(res[name]["grads"][p], g, atol=1e-6), (name, p)
    # the identities matter across the processes' halves
    assert not torch.allclose(expected["ivlc_ids"][0], expected["ivlc_none"][0], atol=1e-3)


# ----------------------------------------------------------------------------- UniPTPretrain
VOCAB = 50


def _cfg(**opts):
    from unipt_plugin.config import get_unipt_cfg

    cfg = get_unipt_cfg()
    cfg.MODEL.PRETRAIN.EMBED_DIM = 16
    cfg.MODEL.PRETRAIN.MLM_WEIGHT = 0.0  # the batches below carry no MLM masks
    cfg.merge_from_list([x for pair in opts.items() for x in pair])
    return cfg


def _pretrain(**opts):
    from unipt_plugin.modeling.meta_arch import UniPTPretrain

    torch.manual_seed(0)
    return UniPTPretrain(_cfg(**opts), StandInVisual(), StandInText(VOCAB))


def _batch(targets):
    g = torch.Generator().manual_seed(3)
    b = len(targets)
    return {"images": torch.rand(b, 3, 32, 16, generator=g) * 255,
            "text_ids": torch.randint(4, VOCAB, (b, 7), generator=g),
            "text_mask": torch.ones(b, 7, dtype=torch.long), "targets": torch.tensor(targets)}


def test_pretrain_ivlc_weight_adds_the_term_and_changes_nothing_else():
    batch = _batch([0, 0, 1, 2, 2, 2])
    off, on = _pretrain().train(), _pretrain(**{"MODEL.PRETRAIN.IVLC_WEIGHT": 0.5}).train()
    # no parameter added: the same state dict, tensor for tensor
    s_off, s_on = off.state_dict(), on.state_dict()
    assert s_off.keys() == s_on.keys() and all(torch.equal(s_off[k], s_on[k]) for k in s_off)
    l_off, l_on = off(batch), on(batch)
    assert set(l_off) == {"loss_con"} and set(l_on) == {"loss_con", "loss_ivlc"}
    assert torch.equal(l_on["loss_con"], l_off["loss_con"])
    with torch.no_grad():
        img = on.encode_image(batch["images"])
        txt = on.encode_text(batch["text_ids"], batch["text_mask"])
    assert torch.allclose(l_on["loss_ivlc"], 0.5 * ivlc_loss(img, txt, batch["targets"], 1.0), atol=1e-6)
    # a batch without "targets": every pair its own identity, i.e. L_con
    plain = {k: v for k, v in batch.items() if k != "targets"}
    assert torch.allclose(on(plain)["loss_ivlc"], 0.5 * l_off["loss_con"], atol=1e-6)


def test_pretrain_contrastive_weight_and_learnable_temperature_through_ivlc():
    batch = _batch([0, 0, 1, 2])
    only = _pretrain(**{"MODEL.PRETRAIN.CONTRASTIVE_WEIGHT": 0.0, "MODEL.PRETRAIN.IVLC_WEIGHT": 1.0,
                        "MODEL.PRETRAIN.LEARNABLE_TEMPERATURE": True, "MODEL.PRETRAIN.TEMPERATURE": 0.5}).train()
    losses = only(batch)
    assert set(losses) == {"loss_ivlc"}
    sum(losses.values()).backward()
    assert only.log_logit_scale.grad is not None and only.log_logit_scale.grad.abs() > 0
    both = _pretrain(**{"MODEL.PRETRAIN.CONTRASTIVE_WEIGHT": 2.0}).train()
    assert torch.allclose(both(batch)["loss_con"], 2.0 * _pretrain().train()(batch)["loss_con"], atol=1e-6)


@pytest.mark.parametrize("opts, match", [
    ({"MODEL.PRETRAIN.IVLC_WEIGHT": -0.5}, r"MODEL.PRETRAIN.IVLC_WEIGHT must be >= 0 \(0 = off\), got -0.5"),
    ({"MODEL.PRETRAIN.CONTRASTIVE_WEIGHT": -1.0}, r"MODEL.PRETRAIN.CONTRASTIVE_WEIGHT must be >= 0"),
    ({"MODEL.PRETRAIN.CONTRASTIVE_WEIGHT": 0.0}, r"CONTRASTIVE_WEIGHT and IVLC_WEIGHT are both 0"),
    # MLM alone trains the text side only
    ({"MODEL.PRETRAIN.CONTRASTIVE_WEIGHT": 0.0, "MODEL.PRETRAIN.MLM_WEIGHT": 1.0},
     r"no image-text loss is on.*\(MLM is text only\)"),
])
def test_bad_pretrain_weights_are_refused(opts, match):
    with pytest.raises(ValueError, match=match):
        _pretrain(**opts)


# ----------------------------------------------------------------------------- through the trainer
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from raw_fixtures import make_cuhk_pedes, make_luperson_t

    root = str(tmp_path_factory.mktemp("ivlc_data"))
    make_cuhk_pedes(root, num_ids=4, images_per_id=2, captions_per_image=2)
    make_luperson_t(root, num_images=6, captions_per_image=2)
    return root


def _setup(data_root, out, *opts):
    from unipt_plugin.engine import setup_cfg

    os.makedirs(out, exist_ok=True)
    return setup_cfg(TINY_PRETRAIN, ["DATASETS.ROOT", data_root, "OUTPUT_DIR", out, "SEED", "1", *opts])


def test_pretraining_batches_carry_identities_or_image_ids(data_root, tmp_path):
    from unipt_plugin.data import build_t2i_train_loader

    luperson = next(iter(build_t2i_train_loader(_setup(data_root, str(tmp_path / "a"), "SOLVER.IMS_PER_BATCH", "12"))))
    # LUPerson-T, 6 images x 2 captions: every image its own identity, shared by its two captions
    assert sorted(luperson["targets"].tolist()) == sorted(luperson["img_ids"].tolist()) == [i for i in range(6)
                                                                                           for _ in range(2)]
    cuhk = next(iter(build_t2i_train_loader(_setup(data_root, str(tmp_path / "b"), "DATASETS.NAMES", '("CUHKPEDES",)',
                                                   "SOLVER.IMS_PER_BATCH", "16"))))
    # CUHK-PEDES, 4 persons x 2 images x 2 captions: the person, shared by the images of one person
    assert sorted(cuhk["targets"].tolist()) == [i for i in range(4) for _ in range(4)]
    assert len(set(cuhk["img_ids"].tolist())) == 8


def test_two_iteration_tiny_pretraining_with_ivlc(data_root, tmp_path):
    from fastreid.utils.events import EventStorage

    from unipt_plugin.engine import UniPTTrainer

    cfg = _setup(data_root, str(tmp_path / "run"), "DATASETS.NAMES", '("CUHKPEDES",)',
                 "MODEL.PRETRAIN.IVLC_WEIGHT", "1.0")
    trainer = UniPTTrainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with EventStorage(0) as storage:
        for it in range(2):
            storage.iter = trainer._trainer.iter = it
            trainer._trainer.run_step()
        history = {k: [v for v, _ in storage.history(k).values()] for k in ("loss_con", "loss_ivlc", "loss_mlm")}
    for name, values in history.items():
        assert len(values) == 2 and all(math.isfinite(v) for v in values), name
    # 8 of the 16 items of 4 persons per batch: some person repeats, so IVLC (weight 1, the same
    # temperature) differs from L_con at every step
    assert all(abs(i - c) > 1e-4 for i, c in zip(history["loss_ivlc"], history["loss_con"]))
    after = trainer.model.state_dict()
    assert not torch.equal(after["image_proj.weight"], before["image_proj.weight"])
