"""fast-reid's image-augmentation and solver keys, honoured with fast-reid's meaning.

Transforms are compared with fast-reid's own ``build_transforms`` (float 0-255 tensors) on the
same torch seed; parameter groups with hand-computed learning rates / weight decays and with
fast-reid's ``get_default_optimizer_params``; the freeze window with fast-reid's own freeze
wrapper (``maybe_add_freeze_layer``); the warm-up + linear schedule with the hand-written
LambdaLR it replaced. With every key at its default, the results are the earlier ones.
"""
import logging
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from fastreid.data.transforms import build as fastreid_tf_build
from fastreid.solver.build import get_default_optimizer_params, maybe_add_freeze_layer
from PIL import Image
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torchvision.transforms import InterpolationMode

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.data.transforms import ToTensor255, build_image_transform
from unipt_plugin.engine.train_loop import UniPTStepTrainer
from unipt_plugin.solver import build_unipt_lr_scheduler, build_unipt_optimizer, param_group_specs

H, W = 48, 24
# fast-reid's ToTensor (the reference) uses torch's deprecated ByteStorage.from_buffer
pytestmark = pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")


def _cfg(**inp):
    cfg = get_unipt_cfg()
    cfg.INPUT.SIZE_TRAIN = [H, W]
    cfg.INPUT.SIZE_TEST = [H, W]
    for key, value in inp.items():
        node = cfg.INPUT
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (60 + 7 * k, 30 + 3 * k, 3), dtype=np.uint8)) for k in range(n)]


def _run(transform, images, seeds):
    """One output per (image, seed), each drawn from torch's CPU generator seeded as the
    training set seeds it per sample."""
    out = []
    for img in images:
        for seed in seeds:
            torch.default_generator.manual_seed(seed)
            out.append(transform(img))
    return out


def _fastreid_reference(cfg):
    """fast-reid's own training transform for ``cfg`` (its RandomAffine call uses the
    torchvision-0.8 arguments resample / fillcolor: translated to today's names)."""
    real_affine = T.RandomAffine

    def affine_0_8(*args, resample=False, fillcolor=0, **kwargs):
        assert resample is False  # torchvision 0.8: resample False = nearest neighbour
        return real_affine(*args, interpolation=InterpolationMode.NEAREST, fill=fillcolor, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(fastreid_tf_build.T, "RandomAffine", affine_0_8)
    try:
        return fastreid_tf_build.build_transforms(cfg, is_train=True)
    finally:
        mp.undo()


# ---------------------------------------------------------------------- transforms: defaults
def test_defaults_give_exactly_the_earlier_resize_and_flip():
    cfg = _cfg()
    earlier = T.Compose([T.Resize((H, W), interpolation=InterpolationMode.BICUBIC), T.RandomHorizontalFlip(0.5),
                         ToTensor255()])
    seeds = range(8)
    new = _run(build_image_transform(cfg, is_train=True), _images(), seeds)
    old = _run(earlier, _images(), seeds)
    assert all(a.dtype == torch.uint8 and torch.equal(a, b) for a, b in zip(new, old))
    flipped = sum(not torch.equal(a, new[8 * (k // 8)]) for k, a in enumerate(new))
    assert flipped > 0  # some seeds flip: the comparison could tell a missing flip
    steps = build_image_transform(cfg, is_train=True).transforms
    assert [type(t) for t in steps] == [T.Resize, T.RandomHorizontalFlip, ToTensor255]


def test_test_transform_is_resize_only_whatever_the_augmentation_keys():
    cfg = _cfg(**{"CROP.ENABLED": True, "CROP.SIZE": [H, W], "PADDING.ENABLED": True, "CJ.ENABLED": True,
                  "AFFINE.ENABLED": True, "REA.ENABLED": True, "AUTOAUG.ENABLED": True})
    img = _images(1)[0]
    ref = np.asarray(img.resize((W, H), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    assert torch.equal(build_image_transform(cfg, is_train=False)(img), torch.from_numpy(ref.copy()))


# ---------------------------------------------------------------------- transforms: each key
_CASES = {
    "crop": {"CROP.ENABLED": True, "CROP.SIZE": [H, W], "CROP.SCALE": [0.3, 0.9], "CROP.RATIO": [0.4, 0.7]},
    "pad_constant": {"PADDING.ENABLED": True, "PADDING.SIZE": 6},
    "pad_reflect": {"PADDING.ENABLED": True, "PADDING.SIZE": 6, "PADDING.MODE": "reflect"},
    "colour_jitter": {"CJ.ENABLED": True, "CJ.WITH_TEXT": True, "CJ.PROB": 0.7},
    "affine": {"AFFINE.ENABLED": True},
    "erasing": {"REA.ENABLED": True, "REA.PROB": 0.8},
    "all": {"CROP.ENABLED": True, "CROP.SIZE": [H, W], "PADDING.ENABLED": True, "PADDING.SIZE": 4,
            "CJ.ENABLED": True, "CJ.WITH_TEXT": True, "AFFINE.ENABLED": True, "REA.ENABLED": True,
            "REA.VALUE": [10.4, 200.6, 99.5]},
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_each_key_matches_fastreids_own_transform(case):
    cfg = _cfg(**_CASES[case])
    seeds = range(6)
    ours = _run(build_image_transform(cfg, is_train=True), _images(), seeds)
    ref = _run(_fastreid_reference(cfg), _images(), seeds)  # float 0-255, the fill not rounded
    default = _run(build_image_transform(_cfg(), is_train=True), _images(), seeds)
    for a, b in zip(ours, ref):
        assert a.dtype == torch.uint8 and a.shape == (3, H, W) and b.dtype == torch.float32
        # on the 8-bit pipeline, fast-reid's values rounded: every value but REA's fill is an integer already
        assert torch.equal(a, b.round().to(torch.uint8))
    assert any(not torch.equal(a, d) for a, d in zip(ours, default))  # the key changed the output


def test_random_erasing_rounds_the_fill_where_torchvision_would_truncate():
    cfg = _cfg(**{"REA.ENABLED": True, "REA.PROB": 1.0})  # fast-reid's VALUE: 123.675, 116.28, 103.53
    img = _images(1)[0]
    torch.manual_seed(3)
    out = build_image_transform(cfg, is_train=True)(img)
    torch.manual_seed(3)
    ref = _fastreid_reference(cfg)(img)
    erased = ref != ref.round()  # the fill's positions (non-integer values)
    assert erased.any()
    torch.testing.assert_close(out[erased].float(), ref[erased].round(), rtol=0, atol=0)
    assert set(out[0][erased[0]].tolist()) == {124} and set(out[2][erased[2]].tolist()) == {104}
    # what torchvision itself does with a float fill on a uint8 tensor: truncation (123, not 124)
    plain = torch.full((3, H, W), 7, dtype=torch.uint8)
    torch.manual_seed(0)
    truncated = T.RandomErasing(p=1.0, value=[123.675, 116.28, 103.53])(plain)
    assert 123 in truncated[0].unique().tolist() and 124 not in truncated[0].unique().tolist()


def test_all_draws_come_from_torchs_generator_not_pythons_random():
    cfg = _cfg(**_CASES["all"])
    img = _images(1)[0]
    transform = build_image_transform(cfg, is_train=True)
    outs = []
    for py_seed in (1, 2, 3):
        random.seed(py_seed)
        np.random.seed(py_seed)
        torch.default_generator.manual_seed(11)
        outs.append(transform(img))
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    torch.default_generator.manual_seed(12)
    assert not torch.equal(transform(img), outs[0])


def test_colour_jitter_needs_with_text_and_warns(caplog):
    with pytest.raises(ValueError, match=r"INPUT\.CJ\.ENABLED.*captions describe.*INPUT\.CJ\.WITH_TEXT"):
        build_image_transform(_cfg(**{"CJ.ENABLED": True}), is_train=True)
    with caplog.at_level(logging.WARNING, logger="unipt_plugin.data.transforms"):
        build_image_transform(_cfg(**{"CJ.ENABLED": True, "CJ.WITH_TEXT": True}), is_train=True)
    assert any("INPUT.CJ" in r.getMessage() and "captions describe" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("key", ["AUTOAUG", "AUGMIX", "RPT"])
def test_refused_augmentations_name_the_key(key):
    with pytest.raises(ValueError, match=rf"INPUT\.{key}\.ENABLED.*(captions describe|not implemented)"):
        build_image_transform(_cfg(**{f"{key}.ENABLED": True}), is_train=True)


@pytest.mark.parametrize("keys, match", [
    ({"CROP.ENABLED": True}, r"INPUT\.CROP\.SIZE = \[224, 224\].*INPUT\.SIZE_TRAIN = \[48, 24\]"),
    ({"CROP.ENABLED": True, "CROP.SIZE": [H, W], "CROP.SCALE": [0.5, 1.5]}, r"INPUT\.CROP\.SCALE"),
    ({"CROP.ENABLED": True, "CROP.SIZE": [H, W], "CROP.RATIO": [2.0, 1.0]}, r"INPUT\.CROP\.RATIO"),
    ({"PADDING.ENABLED": True, "PADDING.MODE": "wrap"}, r"INPUT\.PADDING\.MODE = 'wrap'"),
    ({"PADDING.ENABLED": True, "PADDING.SIZE": -2}, r"INPUT\.PADDING\.SIZE = -2"),
    ({"REA.ENABLED": True, "REA.VALUE": [300.0, 0.0, 0.0]}, r"INPUT\.REA\.VALUE"),
    ({"REA.ENABLED": True, "REA.PROB": 1.5}, r"INPUT\.REA\.PROB = 1\.5"),
    ({"CJ.ENABLED": True, "CJ.WITH_TEXT": True, "CJ.HUE": 0.8}, r"INPUT\.CJ\.HUE = 0\.8"),
])
def test_bad_augmentation_values_name_the_key(keys, match):
    with pytest.raises(ValueError, match=match):
        build_image_transform(_cfg(**keys), is_train=True)


# ---------------------------------------------------------------------- solver keys
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.text = nn.ModuleDict({"attn": nn.MultiheadAttention(4, 2), "bn": nn.BatchNorm1d(4)})
        self.proj = nn.Linear(4, 2, bias=False)
        self.norm = nn.LayerNorm(2)
        self.temperature = nn.Parameter(torch.tensor(0.5))

    def forward(self, batch):
        x = batch["x"]
        v = self.norm(self.proj(self.visual(x)))
        t, _ = self.text["attn"](x[None], x[None], x[None])
        t = self.norm(self.proj(self.text["bn"](t[0])))
        return {"loss": ((v - t) ** 2).mean() * self.temperature + 0.1 * (v ** 2).mean()}


def _solver_cfg(**solver):
    cfg = get_unipt_cfg()
    cfg.SOLVER.update(OPT="Adam", BASE_LR=1e-3, VISUAL_LR=2e-3, TEXT_LR=5e-4, WEIGHT_DECAY=0.01, SCHED="MultiStepLR")
    cfg.SOLVER.update(**solver)
    return cfg


def _named_groups(groups, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g["name"], g["lr"], g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in groups]


def test_default_keys_give_the_earlier_groups():
    model = Small()
    # written by hand from the earlier rule: per part a decayed group and one without decay
    # (biases incl. "*_bias", norm-layer parameters, scalars), in this order, named_parameters order inside
    expected = [
        ("visual", 2e-3, 0.01, ["visual.0.weight"]),
        ("visual_no_decay", 2e-3, 0.0, ["visual.0.bias", "visual.1.weight", "visual.1.bias"]),
        ("text", 5e-4, 0.01, ["text.attn.in_proj_weight", "text.attn.out_proj.weight"]),
        ("text_no_decay", 5e-4, 0.0, ["text.attn.in_proj_bias", "text.attn.out_proj.bias", "text.bn.weight",
                                      "text.bn.bias"]),
        ("head", 1e-3, 0.01, ["proj.weight"]),
        ("head_no_decay", 1e-3, 0.0, ["temperature", "norm.weight", "norm.bias"]),
    ]
    assert _named_groups(param_group_specs(_solver_cfg(), model), model) == expected
    assert all(set(g) == {"name", "params", "lr", "weight_decay"} for g in param_group_specs(_solver_cfg(), model))
    # WEIGHT_DECAY 0 (the fine-tuning configs): still two groups per part, as before
    zero = [(n, lr, 0.0, p) for n, lr, _, p in expected]
    assert _named_groups(param_group_specs(_solver_cfg(WEIGHT_DECAY=0.0), model), model) == zero


def test_norm_bias_and_heads_keys_give_hand_computed_hyperparameters():
    model = Small()
    cfg = _solver_cfg(WEIGHT_DECAY_NORM=0.5, WEIGHT_DECAY_BIAS=0.25, BIAS_LR_FACTOR=2.0, HEADS_LR_FACTOR=10.0)
    opt, _ = build_unipt_optimizer(cfg, model)
    got = {n: (lr, wd) for name, lr, wd, params in _named_groups(opt.param_groups, model) for n in params}
    assert got == {
        "visual.0.weight": (2e-3, 0.01), "visual.0.bias": (4e-3, 0.25),
        "visual.1.weight": (2e-3, 0.5), "visual.1.bias": (4e-3, 0.25),  # a norm's bias is a bias (fast-reid)
        "text.attn.in_proj_weight": (5e-4, 0.01), "text.attn.out_proj.weight": (5e-4, 0.01),
        "text.attn.in_proj_bias": (1e-3, 0.25), "text.attn.out_proj.bias": (1e-3, 0.25),
        "text.bn.weight": (5e-4, 0.5), "text.bn.bias": (1e-3, 0.25),
        "proj.weight": (1e-2, 0.01), "norm.weight": (1e-2, 0.5), "norm.bias": (2e-2, 0.25),
        "temperature": (1e-2, 0.25),  # a scalar: WEIGHT_DECAY_BIAS, no bias lr factor
    }
    assert [g["name"] for g in opt.param_groups] == ["visual", "visual_norm", "visual_bias", "text", "text_norm",
                                                     "text_bias", "head", "head_norm", "head_bias", "head_scalar"]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_hyperparameters_equal_fastreids_where_the_rules_coincide():
    # fast-reid's "heads" are the child named heads; its bias rule knows "bias" only and it has
    # no scalar rule: a model without "*_bias" names or scalars, whose head is that child.
    model = nn.Module()
    model.visual = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.GroupNorm(1, 3))
    model.heads = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    keys = dict(WEIGHT_DECAY=0.02, WEIGHT_DECAY_NORM=0.3, WEIGHT_DECAY_BIAS=0.07, BIAS_LR_FACTOR=3.0,
                HEADS_LR_FACTOR=4.0)
    cfg = _solver_cfg(VISUAL_LR=0.0, **keys)
    ours = {id(p): (g["lr"], g["weight_decay"]) for g in param_group_specs(cfg, model) for p in g["params"]}
    theirs = get_default_optimizer_params(model, base_lr=1e-3, weight_decay=0.02, weight_decay_norm=0.3,
                                          bias_lr_factor=3.0, heads_lr_factor=4.0, weight_decay_bias=0.07)
    theirs = {id(g["params"][0]): (g["lr"], g["weight_decay"]) for g in theirs}
    assert set(ours) == set(theirs) and len(ours) == 10
    for key, (lr, wd) in theirs.items():
        assert ours[key] == (pytest.approx(lr, rel=1e-12), pytest.approx(wd, rel=1e-12))


# ---------------------------------------------------------------------- freeze
def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(6, 4, generator=g)} for _ in range(n)]


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _freeze_cfg(iters=3, layers=("visual",)):
    cfg = _solver_cfg(OPT="AdamW")
    cfg.MODEL.FREEZE_LAYERS = list(layers)
    cfg.SOLVER.FREEZE_ITERS = iters
    return cfg


def test_frozen_groups_are_flagged_and_named():
    model = Small()
    specs = param_group_specs(_freeze_cfg(layers=("visual", "proj")), model)
    assert [(g["name"], g["freeze_status"]) for g in specs] == [
        ("visual_frozen", "freeze"), ("visual_no_decay_frozen", "freeze"), ("text", "normal"),
        ("text_no_decay", "normal"), ("head_no_decay", "normal"), ("head_frozen", "freeze")]
    assert _named_groups(specs, model)[-1][3] == ["proj.weight"]
    # FREEZE_ITERS 0: fast-reid freezes nothing, the groups are the default ones
    assert all("freeze_status" not in g for g in param_group_specs(_freeze_cfg(iters=0), model))


def test_unknown_freeze_layer_names_it_and_the_children():
    with pytest.raises(ValueError, match=r"MODEL\.FREEZE_LAYERS: 'backbone'.*\['visual', 'text', 'proj', 'norm'\]"):
        param_group_specs(_freeze_cfg(layers=("visual", "backbone")), Small())


def _trainer(cfg, model, data, start_iter=0):
    opt, _ = build_unipt_optimizer(cfg, model)
    trainer = UniPTStepTrainer(model, data, opt, device_type="cpu", freeze_iters=int(cfg.SOLVER.FREEZE_ITERS))
    trainer.iter = start_iter
    return trainer, opt


def _step(trainer, batch):
    trainer.forward_backward(batch)
    trainer.optimizer_step()
    trainer.iter += 1


def test_frozen_child_is_untouched_inside_the_window_and_trained_after():
    torch.manual_seed(0)
    model = Small()
    cfg = _freeze_cfg(iters=3)
    data = _batches(5)
    trainer, opt = _trainer(cfg, model, data)
    start = _params(model)
    visual = [p for n, p in model.named_parameters() if n.startswith("visual.")]
    for k in range(3):  # iterations 0, 1, 2: inside the window
        _step(trainer, data[k])
        now = _params(model)
        assert all(torch.equal(now[n], start[n]) for n in now if n.startswith("visual."))
        assert all(not torch.equal(now[n], start[n]) for n in now if not n.startswith("visual."))
        assert all(p not in opt.state for p in visual)  # Adam's moments never created
    _step(trainer, data[3])  # iteration 3 = FREEZE_ITERS: trained
    now = _params(model)
    assert all(not torch.equal(now[n], start[n]) for n in now)
    assert all(opt.state[p]["step"].item() == 1 for p in visual)


def test_freeze_matches_fastreids_wrapper_and_resumes_inside_the_window():
    cfg = _freeze_cfg(iters=3, layers=("visual", "norm"))
    data = _batches(6, seed=1)
    torch.manual_seed(0)
    init = Small().state_dict()

    # fast-reid: its freeze wrapper (a step counter in a closure) over the same groups
    ref = Small()
    ref.load_state_dict(init)
    ref_opt = maybe_add_freeze_layer(cfg, torch.optim.AdamW)(param_group_specs(cfg, ref), lr=1e-3,
                                                             betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ref_states = []
    for batch in data:
        ref(batch)["loss"].backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        ref_states.append(_params(ref))

    ours = Small()
    ours.load_state_dict(init)
    trainer, opt = _trainer(cfg, ours, data)
    for k in range(2):
        _step(trainer, data[k])
        assert all(torch.equal(v, ref_states[k][n]) for n, v in _params(ours).items())
    # "resume" at iteration 2 into a fresh model, optimiser and trainer (fast-reid's counter would restart at 0)
    saved_model, saved_opt = ours.state_dict(), opt.state_dict()
    resumed = Small()
    trainer, opt = _trainer(cfg, resumed, data, start_iter=2)
    resumed.load_state_dict(saved_model)
    opt.load_state_dict(saved_opt)
    for k in range(2, 6):
        _step(trainer, data[k])
        assert all(torch.equal(v, ref_states[k][n]) for n, v in _params(resumed).items()), k


# ---------------------------------------------------------------------- schedule
def _earlier_factor(it, warmup_iters, max_iter):
    """The hand-written factor that transformers' schedule replaced."""
    if it < warmup_iters:
        return it / warmup_iters
    return max(0.0, (max_iter - it) / max(1, max_iter - warmup_iters))


def _lrs(opt, sched, n):
    seen = []
    for _ in range(n):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return seen


@pytest.mark.parametrize("ratio, ipe, epochs", [(0.0, 5, 2), (0.9, 5, 2), (0.1, 10, 2), (0.5, 1, 1), (0.25, 7, 3)])
def test_transformers_schedule_equals_the_earlier_one_at_every_iteration(ratio, ipe, epochs):
    cfg = _solver_cfg(SCHED="WarmupLinearLR", WARMUP_RATIO=ratio, MAX_EPOCH=epochs)
    max_iter = ipe * epochs
    warmup = int(round(ratio * max_iter))
    model_a, model_b = Small(), Small()
    opt_a, _ = build_unipt_optimizer(cfg, model_a)
    opt_b, _ = build_unipt_optimizer(cfg, model_b)
    new = _lrs(opt_a, build_unipt_lr_scheduler(cfg, opt_a, ipe)["iter_sched"], max_iter + 4)
    old = _lrs(opt_b, LambdaLR(opt_b, lambda it: _earlier_factor(it, warmup, max_iter)), max_iter + 4)
    assert new == old  # bit-identical, past max_iter too
    assert new[0][0] == (0.0 if warmup else 2e-3) and new[-1] == [0.0] * len(new[-1])


def test_a_scheduler_saved_by_the_earlier_lambdalr_resumes():
    cfg = _solver_cfg(SCHED="WarmupLinearLR", WARMUP_RATIO=0.2, MAX_EPOCH=2)  # 20 iterations, warm-up 4
    old_opt, _ = build_unipt_optimizer(cfg, Small())
    old = LambdaLR(old_opt, lambda it: _earlier_factor(it, 4, 20))
    _lrs(old_opt, old, 7)
    saved_opt, saved_sched = old_opt.state_dict(), old.state_dict()
    assert saved_sched["lr_lambdas"] == [None] * 6  # plain functions are not saved: rebuilt from the config
    expected = _lrs(old_opt, old, 16)

    new_opt, _ = build_unipt_optimizer(cfg, Small())
    new = build_unipt_lr_scheduler(cfg, new_opt, 10)["iter_sched"]
    new_opt.load_state_dict(saved_opt)
    new.load_state_dict(saved_sched)
    assert _lrs(new_opt, new, 16) == expected
