"""Linear probing (MODEL.T2I.LINEAR_PROBE): after optimiser steps the frozen encoders' parameters
and buffers (BatchNorm statistics of a ModifiedResNet included) are bit-identical to their initial
values while the projections move; without the key the encoders move; the optimiser holds exactly
the parameters outside ``visual.`` / ``text.`` (counted by name here); the encoders stay in eval
mode through ``train()`` and through DistributedDataParallel (a one-process gloo group, static
graph and not); settings the key cannot honour are refused."""
import copy

import pytest
import torch
import torch.distributed as dist
from fastreid.modeling.meta_arch import build_model

from unipt_plugin.engine.defaults import setup_cfg
from unipt_plugin.engine.trainer import UniPTTrainer
from unipt_plugin.modeling.meta_arch import UniPTPretrain
from unipt_plugin.solver import build_unipt_optimizer

from standins import free_port

# configs/Tiny/t2i.yml with the tiny ModifiedResNet (BatchNorm layers: running statistics that
# train mode would update) and a text encoder with dropout 0.1 (train mode would draw masks).
TINY = ["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.BACKBONE.NAME", "build_modified_resnet_backbone",
        "MODEL.VISUAL.ARCH", "UniPT-RN-tiny", "MODEL.VISUAL.DEPTH", "0", "MODEL.VISUAL.EMBED_DIM", "0",
        "MODEL.VISUAL.NUM_HEADS", "0", "MODEL.TEXT.DROPOUT", "0.1", "SOLVER.BASE_LR", "1e-2",
        "SOLVER.VISUAL_LR", "1e-2", "SOLVER.TEXT_LR", "1e-2"]


def _model(*opts):
    cfg = setup_cfg("configs/Tiny/t2i.yml", TINY + list(opts))
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def _batch(b=4, length=12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (b, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"images": torch.rand(b, 3, 64, 32, generator=g) * 255, "text_ids": ids,
            "text_mask": torch.ones(b, length, dtype=torch.long), "targets": torch.tensor([0, 0, 1, 3])}


def _encoder_state(model):
    """Every parameter and buffer of the two encoders, copied."""
    return {f"{name}.{k}": v.detach().clone() for name in ("visual", "text")
            for k, v in getattr(model, name).state_dict().items()}


def _steps(model, optimizer, steps=2):
    model.train()
    batch = _batch()
    for _ in range(steps):
        loss = sum(model(batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _bn_buffers(state):
    return [k for k in state if k.endswith(("running_mean", "num_batches_tracked"))]


def test_linear_probe_keeps_every_encoder_tensor_and_trains_the_rest():
    cfg, model = _model("MODEL.T2I.LINEAR_PROBE", "True")
    assert _bn_buffers(_encoder_state(model))  # the check below covers BatchNorm statistics
    before = _encoder_state(model)
    proj_before = model.image_proj.weight.detach().clone(), model.text_proj.weight.detach().clone()
    pgu_before = [p.detach().clone() for p in model.pgu.parameters()]
    optimizer, _ = build_unipt_optimizer(cfg, model)
    _steps(model, optimizer)
    after = _encoder_state(model)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert all(p.grad is None for p in list(model.visual.parameters()) + list(model.text.parameters()))
    assert not torch.equal(model.image_proj.weight, proj_before[0])
    assert not torch.equal(model.text_proj.weight, proj_before[1])
    assert any(not torch.equal(p, q) for p, q in zip(model.pgu.parameters(), pgu_before))


def test_without_the_key_the_encoders_train():
    cfg, model = _model()
    before = _encoder_state(model)
    optimizer, _ = build_unipt_optimizer(cfg, model)
    _steps(model, optimizer)
    after = _encoder_state(model)
    visual_params = [f"visual.{k}" for k, _ in model.visual.named_parameters()]
    text_params = [f"text.{k}" for k, _ in model.text.named_parameters()]
    assert any(not torch.equal(before[k], after[k]) for k in visual_params)
    assert any(not torch.equal(before[k], after[k]) for k in text_params)
    # train mode updated the BatchNorm statistics
    assert any(not torch.equal(before[k], after[k]) for k in _bn_buffers(before))


def test_optimiser_holds_exactly_the_parameters_outside_the_encoders():
    cfg, model = _model("MODEL.T2I.LINEAR_PROBE", "True", "MODEL.T2I.CMPC_WEIGHT", "1.0")
    optimizer, _ = build_unipt_optimizer(cfg, model)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {n for n, _ in model.named_parameters() if not n.startswith(("visual.", "text."))}
    assert {names[i] for i in in_optimizer} == expected
    # the count, from the module tree: every tensor minus the encoders'
    total = len(list(model.parameters()))
    encoders = len(list(model.visual.parameters())) + len(list(model.text.parameters()))
    assert len(in_optimizer) == total - encoders
    assert {"image_proj.weight", "text_proj.weight", "classifier.weight", "cmpc_classifier.weight"} <= expected
    assert any(n.startswith("pgu.") for n in expected) and any(n.startswith("part_classifiers.") for n in expected)
    assert not any(g["name"].startswith(("visual", "text")) for g in optimizer.param_groups)


def test_encoders_stay_in_eval_mode_and_give_the_same_tokens_in_training():
    _, model = _model("MODEL.T2I.LINEAR_PROBE", "True")
    model.train()
    assert model.training and model.image_proj.training and model.pgu.training
    assert not any(m.training for m in list(model.visual.modules()) + list(model.text.modules()))
    batch = _batch()
    with torch.no_grad():
        t1 = model.text(batch["text_ids"], batch["text_mask"])
        t2 = model.text(batch["text_ids"], batch["text_mask"])
    assert torch.equal(t1, t2)  # dropout off
    _, control = _model()
    control.train()
    with torch.no_grad():
        c1 = control.text(batch["text_ids"], batch["text_mask"])
        c2 = control.text(batch["text_ids"], batch["text_mask"])
    assert not torch.equal(c1, c2)  # the same encoder in train mode draws dropout masks


@pytest.mark.parametrize("accum", [1, 2])  # DDP with static_graph (1) and without (2)
def test_ddp_with_frozen_encoders(accum):
    cfg, model = _model("MODEL.T2I.LINEAR_PROBE", "True", "SOLVER.ACCUM_STEPS", str(accum))
    before = _encoder_state(model)
    proj_before = model.image_proj.weight.detach().clone()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        ddp = UniPTTrainer.build_ddp_model(cfg, model)
        assert ddp.static_graph == (accum == 1)
        optimizer, _ = build_unipt_optimizer(cfg, ddp)
        _steps(ddp, optimizer, steps=3)  # a trainable parameter without gradient fails at the 2nd
        assert not model.visual.training and not model.text.training and model.training
    finally:
        dist.destroy_process_group()
    after = _encoder_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(model.image_proj.weight, proj_before)


def test_settings_linear_probing_cannot_honour_are_refused():
    with pytest.raises(ValueError, match="MODEL.VISUAL.GRAD_CHECKPOINTING True with MODEL.T2I.LINEAR_PROBE"):
        _model("MODEL.T2I.LINEAR_PROBE", "True", "MODEL.VISUAL.GRAD_CHECKPOINTING", "True")
    with pytest.raises(ValueError, match="MODEL.TEXT.GRAD_CHECKPOINTING True with MODEL.T2I.LINEAR_PROBE"):
        _model("MODEL.T2I.LINEAR_PROBE", "True", "MODEL.TEXT.GRAD_CHECKPOINTING", "True")
    with pytest.raises(ValueError, match=r"remove \['text'\] from MODEL.FREEZE_LAYERS"):
        _model("MODEL.T2I.LINEAR_PROBE", "True", "MODEL.FREEZE_LAYERS", "['text']", "SOLVER.FREEZE_ITERS", "2")
    pcfg = copy.deepcopy(setup_cfg("configs/Tiny/pretrain.yml", ["MODEL.T2I.LINEAR_PROBE", "True"]))
    with pytest.raises(ValueError, match="MODEL.T2I.LINEAR_PROBE True is a fine-tuning mode"):
        UniPTPretrain(pcfg)
