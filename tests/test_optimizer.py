"""Optimiser parameter groups (lr / weight decay by module prefix and parameter kind) and the
per-iteration warm-up + linear-decay schedule against hand-computed values."""
import pytest
import torch
from torch import nn

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.solver import build_unipt_lr_scheduler, build_unipt_optimizer


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.text = nn.ModuleDict({"emb": nn.Embedding(10, 4), "norm": nn.LayerNorm(4),
                                   "attn": nn.MultiheadAttention(4, 2)})
        self.head = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _cfg(**solver):
    cfg = get_unipt_cfg()
    cfg.SOLVER.update(BASE_LR=1e-4, VISUAL_LR=2e-4, TEXT_LR=1e-5, WEIGHT_DECAY=0.01, OPT="AdamW",
                      BETAS=[0.9, 0.98], EPS=1e-6, SCHED="WarmupLinearLR", WARMUP_RATIO=0.1, MAX_EPOCH=2)
    cfg.SOLVER.update(**solver)
    return cfg


def _groups(opt, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: (g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
            for g in opt.param_groups}


def test_groups_by_prefix_and_decay():
    model = Toy()
    opt, wrapper = build_unipt_optimizer(_cfg(SCHED="MultiStepLR"), model)
    assert wrapper is None and type(opt) is torch.optim.AdamW
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    assert _groups(opt, model) == {
        "visual": (2e-4, 0.01, ["visual.0.weight"]),
        "visual_no_decay": (2e-4, 0.0, ["visual.0.bias", "visual.1.bias", "visual.1.weight"]),
        "text": (1e-5, 0.01, ["text.attn.in_proj_weight", "text.attn.out_proj.weight", "text.emb.weight"]),
        "text_no_decay": (1e-5, 0.0, ["text.attn.in_proj_bias", "text.attn.out_proj.bias",
                                      "text.norm.bias", "text.norm.weight"]),
        "head": (1e-4, 0.01, ["head.weight"]),
        "head_no_decay": (1e-4, 0.0, ["head.bias", "scale"]),
    }


def test_decay_everything_and_zero_rates_fall_back_to_base_lr():
    model = Toy()
    opt, _ = build_unipt_optimizer(_cfg(SCHED="MultiStepLR", OPT="Adam", VISUAL_LR=0.0, TEXT_LR=0.0,
                                        WEIGHT_DECAY_NORM=0.01, WEIGHT_DECAY_BIAS=0.01), model)
    assert type(opt) is torch.optim.Adam
    groups = _groups(opt, model)
    # weights keep their own group; norms, biases and scalars share one per part (same decay and lr)
    assert set(groups) == {"visual", "visual_norm+bias", "text", "text_norm+bias", "head", "head_bias+scalar"}
    assert all(lr == 1e-4 and wd == 0.01 for lr, wd, _ in groups.values())
    assert "frozen.weight" not in sum((g[2] for g in groups.values()), [])
    with pytest.raises(ValueError, match="SOLVER.OPT"):
        build_unipt_optimizer(_cfg(OPT="SGD"), model)


def test_warmup_linear_schedule_per_iteration():
    model = Toy()
    cfg = _cfg()
    opt, _ = build_unipt_optimizer(cfg, model)
    sched = build_unipt_lr_scheduler(cfg, opt, iters_per_epoch=10)  # max_iter 20, warm-up 2
    assert set(sched) == {"iter_sched"}
    seen = []
    for it in range(22):
        seen.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched["iter_sched"].step()
    # factor: 0, 0.5, 1 at it 2, then (20 - it) / 18, 0 from 20 on
    for it, factor in [(0, 0.0), (1, 0.5), (2, 1.0), (3, 17 / 18), (11, 9 / 18), (19, 1 / 18), (20, 0.0), (21, 0.0)]:
        assert seen[it]["visual"] == pytest.approx(2e-4 * factor, abs=1e-12)
        assert seen[it]["text"] == pytest.approx(1e-5 * factor, abs=1e-12)
        assert seen[it]["head_no_decay"] == pytest.approx(1e-4 * factor, abs=1e-12)


def test_other_schedules_delegate_to_fastreid():
    cfg = _cfg(SCHED="MultiStepLR", STEPS=[1], GAMMA=0.1, WARMUP_ITERS=5)
    opt, _ = build_unipt_optimizer(cfg, Toy())
    sched = build_unipt_lr_scheduler(cfg, opt, iters_per_epoch=10)
    assert set(sched) == {"lr_sched", "warmup_sched"}
    assert isinstance(sched["lr_sched"], torch.optim.lr_scheduler.MultiStepLR)
    with pytest.raises(ValueError, match="MAX_EPOCH"):
        build_unipt_lr_scheduler(_cfg(), opt, iters_per_epoch=0)


@pytest.mark.parametrize("opt_name", ["Adam", "AdamW"])
def test_cpu_parameters_keep_the_default_implementation(opt_name):
    # CPU parameters: neither fused nor an explicit for-each choice, exactly as before (torch's
    # default, the for-loop implementation on the CPU); gradient clipping's wrapper too
    for clip in (False, True):
        cfg = _cfg(SCHED="MultiStepLR", OPT=opt_name)
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = clip
        opt, _ = build_unipt_optimizer(cfg, Toy())
        assert isinstance(opt, getattr(torch.optim, opt_name))
        assert opt.defaults["fused"] in (None, False) and opt.defaults["foreach"] is None
        assert not getattr(opt, "_step_supports_amp_scaling", False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused Adam/AdamW needs CUDA parameters")
@pytest.mark.parametrize("opt_name", ["Adam", "AdamW"])
def test_cuda_parameters_get_the_fused_kernel(opt_name):
    for clip in (False, True):
        cfg = _cfg(SCHED="MultiStepLR", OPT=opt_name)
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = clip
        model = Toy().cuda()
        opt, _ = build_unipt_optimizer(cfg, model)
        assert opt.defaults["fused"] is True and all(g["fused"] for g in opt.param_groups)
        before = model.head.weight.detach().clone()
        model.head(torch.randn(2, 4, device="cuda")).sum().backward()
        opt.step()
        assert not torch.equal(model.head.weight, before)
