"""Every fast-reid key is either honoured (and changes what it should) or refused by setup_cfg.

The refusal half walks fast-reid's own ``get_cfg()``: a key fast-reid has that the plugin
neither lists in ``config/inherited.py`` nor refuses fails here. The honoured half gives each
key of ``HONOURED`` a check of its effect; a key listed as honoured without a check fails.
"""
from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.config.inherited import HONOURED, SCHEDULE_KEYS, fastreid_leaf_keys
from unipt_plugin.engine import ConfigError, setup_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_T2I = os.path.join(ROOT, "configs", "Tiny", "t2i.yml")
TINY_PRETRAIN = os.path.join(ROOT, "configs", "Tiny", "pretrain.yml")


def _other_value(value):
    """A value of the same type as ``value`` that differs from it."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return value * 2 + 1.5
    if isinstance(value, str):
        return value + "_other" if value else "other"
    if isinstance(value, (list, tuple)):
        if not value:
            return type(value)(["other"])
        return type(value)(_other_value(v) for v in value)
    raise TypeError(f"no other value for {value!r}")


UNHONOURED = [k for k, _ in fastreid_leaf_keys() if k not in HONOURED and k not in SCHEDULE_KEYS]


def test_the_walk_sees_every_fastreid_key():
    keys = dict(fastreid_leaf_keys())
    # independent spot checks against fast-reid's documented defaults
    assert keys["MODEL.LOSSES.NAME"] == ("CrossEntropyLoss",)
    assert keys["INPUT.REA.ENABLED"] is False
    assert keys["SOLVER.WEIGHT_DECAY_NORM"] == 0.0005
    assert len(keys) > 120
    assert set(HONOURED) <= set(keys), sorted(set(HONOURED) - set(keys))


@pytest.mark.parametrize("key", UNHONOURED)
def test_an_unhonoured_key_set_to_another_value_is_refused(key):
    default = dict(fastreid_leaf_keys(get_unipt_cfg()))[key]
    with pytest.raises(ConfigError) as e:
        setup_cfg(TINY_T2I, [key, repr(_other_value(default))], freeze=False)
    assert key in str(e.value)


def test_an_unhonoured_key_at_its_default_is_accepted():
    cfg = get_unipt_cfg()
    opts = []
    for key in ("MODEL.LOSSES.NAME", "INPUT.AUTOAUG.ENABLED", "TEST.RERANK.ENABLED", "MODEL.BACKBONE.PRETRAIN"):
        node = cfg
        for part in key.split("."):
            node = node[part]
        opts += [key, repr(node)]
    setup_cfg(TINY_T2I, opts)


def test_the_issue_examples_are_refused_with_what_to_use():
    with pytest.raises(ConfigError, match="MODEL.LOSSES.NAME.*MODEL.T2I.ID_WEIGHT"):
        setup_cfg(TINY_T2I, ["MODEL.LOSSES.NAME", '("TripletLoss",)'])
    with pytest.raises(ConfigError, match="MODEL.HEADS.NAME"):
        setup_cfg(TINY_T2I, ["MODEL.HEADS.NAME", "BNneckHead"])
    with pytest.raises(ConfigError, match="colours the captions describe"):
        setup_cfg(TINY_T2I, ["INPUT.CJ.ENABLED", "True"])
    setup_cfg(TINY_T2I, ["INPUT.CJ.ENABLED", "True", "INPUT.CJ.WITH_TEXT", "True"])
    # several at once: one error naming each
    with pytest.raises(ConfigError) as e:
        setup_cfg(TINY_T2I, ["KD.EMA.ENABLED", "True", "TEST.AQE.ENABLED", "True"])
    assert "2 fast-reid key(s)" in str(e.value) and "KD.EMA.ENABLED" in str(e.value)


@pytest.mark.parametrize("key", SCHEDULE_KEYS)
def test_schedule_keys_are_read_by_fastreid_schedules_and_refused_with_warmup_linear(key):
    default = dict(fastreid_leaf_keys(get_unipt_cfg()))[key]
    value = _other_value(default)
    if key == "SOLVER.WARMUP_METHOD":
        value = "constant"
    if key == "SOLVER.STEPS":
        value = [1, 2]
    setup_cfg(TINY_T2I, [key, repr(value)])  # MultiStepLR: fast-reid's scheduler reads it
    with pytest.raises(ConfigError, match=f"{key}.*WarmupLinearLR"):
        setup_cfg(TINY_PRETRAIN, [key, repr(value)])
    with pytest.raises(ConfigError, match="SOLVER.WARMUP_RATIO"):
        setup_cfg(TINY_T2I, ["SOLVER.WARMUP_RATIO", "0.3"])


# ----------------------------------------------------------------------------- honoured keys
# Each check builds what reads the key with a non-default value and compares with the default.

def _cfg(base=TINY_T2I, **over):
    opts = []
    for k, v in over.items():
        opts += [k.replace("__", "."), repr(v)]
    return setup_cfg(base, opts, freeze=False)


def _transform_out(cfg, is_train=True, seed=0):
    from unipt_plugin.data.transforms import build_image_transform

    g = torch.Generator().manual_seed(1)
    img = Image.fromarray(torch.randint(0, 256, (80, 40, 3), generator=g, dtype=torch.uint8).numpy())
    torch.manual_seed(seed)
    return build_image_transform(cfg, is_train)(img)


def _differs(a, b):
    return a.shape != b.shape or not torch.equal(a, b)


# key -> (options that switch its feature on in both runs, the non-default value)
_TRANSFORM_KEYS = {
    "INPUT.SIZE_TRAIN": ({}, [48, 24]),
    "INPUT.CROP.ENABLED": ({"INPUT.CROP.SIZE": [64, 32]}, True),
    "INPUT.CROP.SCALE": ({"INPUT.CROP.ENABLED": True, "INPUT.CROP.SIZE": [64, 32]}, [0.05, 0.1]),
    "INPUT.CROP.RATIO": ({"INPUT.CROP.ENABLED": True, "INPUT.CROP.SIZE": [64, 32]}, [0.2, 0.25]),
    "INPUT.FLIP.ENABLED": ({}, False),
    "INPUT.FLIP.PROB": ({}, 1.0),
    "INPUT.PADDING.ENABLED": ({}, True),
    "INPUT.PADDING.MODE": ({"INPUT.PADDING.ENABLED": True}, "reflect"),
    "INPUT.PADDING.SIZE": ({"INPUT.PADDING.ENABLED": True}, 20),
    "INPUT.CJ.ENABLED": ({"INPUT.CJ.WITH_TEXT": True, "INPUT.CJ.PROB": 1.0}, True),
    "INPUT.CJ.PROB": ({"INPUT.CJ.WITH_TEXT": True, "INPUT.CJ.ENABLED": True}, 1.0),
    "INPUT.CJ.BRIGHTNESS": ({"INPUT.CJ.WITH_TEXT": True, "INPUT.CJ.ENABLED": True, "INPUT.CJ.PROB": 1.0}, 0.8),
    "INPUT.CJ.CONTRAST": ({"INPUT.CJ.WITH_TEXT": True, "INPUT.CJ.ENABLED": True, "INPUT.CJ.PROB": 1.0}, 0.8),
    "INPUT.CJ.SATURATION": ({"INPUT.CJ.WITH_TEXT": True, "INPUT.CJ.ENABLED": True, "INPUT.CJ.PROB": 1.0}, 0.8),
    "INPUT.CJ.HUE": ({"INPUT.CJ.WITH_TEXT": True, "INPUT.CJ.ENABLED": True, "INPUT.CJ.PROB": 1.0}, 0.4),
    "INPUT.AFFINE.ENABLED": ({}, True),
    "INPUT.REA.ENABLED": ({"INPUT.REA.PROB": 1.0}, True),
    "INPUT.REA.PROB": ({"INPUT.REA.ENABLED": True}, 1.0),
    "INPUT.REA.VALUE": ({"INPUT.REA.ENABLED": True, "INPUT.REA.PROB": 1.0}, [0.0, 255.0, 0.0]),
}


@pytest.mark.parametrize("key", sorted(_TRANSFORM_KEYS))
def test_a_training_transform_key_changes_the_training_image(key):
    on, value = _TRANSFORM_KEYS[key]
    base = {k.replace(".", "__"): v for k, v in on.items()}
    changed = dict(base, **{key.replace(".", "__"): value})
    differs = [_differs(_transform_out(_cfg(**base), seed=s), _transform_out(_cfg(**changed), seed=s))
               for s in range(4)]
    assert any(differs), f"{key} = {value!r} did not change the training image"


def test_size_test_changes_the_test_image():
    assert _transform_out(_cfg(INPUT__SIZE_TEST=[48, 24]), is_train=False).shape == (3, 48, 24)
    assert _transform_out(_cfg(), is_train=False).shape == (3, 64, 32)


def test_crop_size_must_be_the_training_size():
    # the encoders are built for INPUT.SIZE_TRAIN: a crop of another size is refused, naming both
    with pytest.raises(ValueError, match="INPUT.CROP.SIZE"):
        _transform_out(_cfg(INPUT__CROP__ENABLED=True, INPUT__CROP__SIZE=[32, 16]))
    assert _transform_out(_cfg(INPUT__CROP__ENABLED=True, INPUT__CROP__SIZE=[64, 32])).shape == (3, 64, 32)


def test_every_honoured_key_has_a_check():
    checked = set(_TRANSFORM_KEYS) | set(_ELSEWHERE)
    assert set(HONOURED) == checked, (sorted(set(HONOURED) - checked), sorted(checked - set(HONOURED)))


# ----------------------------------------------------------------------------- trainer-level keys

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from raw_fixtures import make_cuhk_pedes, make_rstpreid

    root = str(tmp_path_factory.mktemp("inherited"))
    make_cuhk_pedes(root, num_ids=4, images_per_id=2)
    make_rstpreid(root, num_ids=3, images_per_id=2)
    return root


def _trainer(data_root, tmp_path, base=TINY_T2I, **over):
    from unipt_plugin.engine import UniPTTrainer

    over.setdefault("OUTPUT_DIR", str(tmp_path / "out"))
    os.makedirs(over["OUTPUT_DIR"], exist_ok=True)  # fast-reid writes config.yaml there
    return UniPTTrainer(_cfg(base, DATASETS__ROOT=data_root, **over))


def _hook(trainer, cls_name):
    found = [h for h in trainer._hooks if type(h).__name__ == cls_name]
    return found[0] if found else None


def test_model_keys(data_root, tmp_path):
    from unipt_plugin.modeling.backbones import CLIPVisualBackbone

    t = _trainer(data_root, tmp_path, MODEL__PIXEL_MEAN=[100.0, 110.0, 120.0], MODEL__PIXEL_STD=[50.0, 60.0, 70.0],
                 MODEL__HEADS__NUM_CLASSES=7)
    assert t.model.normalizer.pixel_mean.flatten().tolist() == [100.0, 110.0, 120.0]
    assert t.model.normalizer.pixel_std.flatten().tolist() == [50.0, 60.0, 70.0]
    assert t.model.classifier.out_features == 7  # the training set has 4 identities: 7 is the key's
    assert _trainer(data_root, tmp_path).model.classifier.out_features == 4
    assert type(_trainer(data_root, tmp_path, base=TINY_PRETRAIN,
                         DATASETS__NAMES=("CUHKPEDES",)).model).__name__ == "UniPTPretrain"
    assert type(t.model).__name__ == "UniPTT2I"
    clip = _trainer(data_root, tmp_path, MODEL__BACKBONE__NAME="build_clip_visual_backbone",
                    MODEL__VISUAL__ARCH="UniPT-CLIP-tiny")
    assert isinstance(clip.model.visual, CLIPVisualBackbone)
    assert _cfg(MODEL__DEVICE="auto").MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")


def test_model_weights_are_loaded(data_root, tmp_path):
    t = _trainer(data_root, tmp_path)
    torch.manual_seed(5)
    saved = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in t.model.state_dict().items()}
    path = str(tmp_path / "weights.pth")
    torch.save({"model": saved}, path)
    t2 = _trainer(data_root, tmp_path, MODEL__WEIGHTS=path)
    t2.resume_or_load(resume=False)
    for k, v in t2.model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_data_keys(data_root, tmp_path):
    from fastreid.data.samplers import NaiveIdentitySampler

    from unipt_plugin.data import build_t2i_test_loader

    t = _trainer(data_root, tmp_path, DATASETS__NAMES=("CUHKPEDES", "RSTPReid"),
                 DATALOADER__SAMPLER_TRAIN="NaiveIdentitySampler", DATALOADER__NUM_INSTANCE=2,
                 DATALOADER__NUM_WORKERS=1, SOLVER__IMS_PER_BATCH=4)
    assert t.data_loader.dataset.num_classes == 4 + 3
    sampler = t.data_loader.batch_sampler.sampler
    assert isinstance(sampler, NaiveIdentitySampler) and sampler.num_instances == 2
    assert t.data_loader.num_workers == 1
    assert t.data_loader.batch_sampler.batch_size == 4
    loader, _ = build_t2i_test_loader(_cfg(DATASETS__ROOT=data_root, TEST__IMS_PER_BATCH=3), "CUHKPEDES")
    assert max(len(b) for b in loader.batch_sampler) == 3


def test_several_test_sets_each_get_a_report(data_root, tmp_path):
    from unipt_plugin.engine import UniPTTrainer

    t = _trainer(data_root, tmp_path, DATASETS__TESTS=("CUHKPEDES", "RSTPReid"))
    results = UniPTTrainer.test(t.cfg, t.model)
    assert set(results) == {"CUHKPEDES", "RSTPReid"}
    assert "Rank-1" in results["RSTPReid"]


def test_solver_keys(data_root, tmp_path):
    t = _trainer(data_root, tmp_path, SOLVER__OPT="AdamW", SOLVER__BASE_LR=0.01, SOLVER__HEADS_LR_FACTOR=2.0,
                 SOLVER__WEIGHT_DECAY=0.1, SOLVER__WEIGHT_DECAY_NORM=0.2, SOLVER__WEIGHT_DECAY_BIAS=0.3,
                 SOLVER__BIAS_LR_FACTOR=0.5, SOLVER__MAX_EPOCH=3, SOLVER__CHECKPOINT_PERIOD=2,
                 TEST__EVAL_PERIOD=2, SOLVER__SCHED="CosineAnnealingLR")
    assert isinstance(t.optimizer, torch.optim.AdamW)
    by_param = {id(p): g for g in t.optimizer.param_groups for p in g["params"]}
    model = t.model
    assert by_param[id(model.image_proj.weight)]["lr"] == pytest.approx(0.02)  # head: BASE_LR x HEADS_LR_FACTOR
    assert by_param[id(model.image_proj.weight)]["weight_decay"] == pytest.approx(0.1)
    assert by_param[id(model.image_proj.bias)]["lr"] == pytest.approx(0.01)  # x BIAS_LR_FACTOR
    assert by_param[id(model.image_proj.bias)]["weight_decay"] == pytest.approx(0.3)
    norm = next(m for m in model.visual.modules() if isinstance(m, torch.nn.LayerNorm))
    assert by_param[id(norm.weight)]["weight_decay"] == pytest.approx(0.2)
    assert by_param[id(norm.weight)]["lr"] == pytest.approx(t.cfg.SOLVER.VISUAL_LR or 0.01)  # not a head
    assert t.max_iter == 3 * t.iters_per_epoch
    assert _hook(t, "PeriodicCheckpointer").period == 2
    assert _hook(t, "EvalHook")._period == 2
    assert type(t.scheduler["lr_sched"]).__name__ == "CosineAnnealingLR"
    assert type(_trainer(data_root, tmp_path).scheduler["lr_sched"]).__name__ == "MultiStepLR"
    assert _trainer(data_root, tmp_path, OUTPUT_DIR=str(tmp_path / "elsewhere")).checkpointer.save_dir == str(
        tmp_path / "elsewhere")


def test_freeze_keys(data_root, tmp_path):
    t = _trainer(data_root, tmp_path, MODEL__FREEZE_LAYERS=["visual"], SOLVER__FREEZE_ITERS=3)
    hook = _hook(t, "LayerFreeze")
    assert hook is not None and hook.freeze_layers == ["visual"] and hook.freeze_iters == 3
    assert t._trainer.freeze_iters == 3
    assert _hook(_trainer(data_root, tmp_path), "LayerFreeze") is None


@pytest.mark.parametrize("clip_type,value,norm_type", [("norm", 0.5, 2.0), ("norm", 0.5, 1.0), ("value", 0.01, 2.0)])
def test_gradient_clipping_keys(data_root, tmp_path, clip_type, value, norm_type):
    t = _trainer(data_root, tmp_path, SOLVER__CLIP_GRADIENTS__ENABLED=True, SOLVER__CLIP_GRADIENTS__CLIP_TYPE=clip_type,
                 SOLVER__CLIP_GRADIENTS__CLIP_VALUE=value, SOLVER__CLIP_GRADIENTS__NORM_TYPE=norm_type)
    assert "GradientClip" in type(t.optimizer).__name__
    w = t.model.image_proj.weight
    w.grad = torch.full_like(w, 3.0)  # every other parameter has no gradient (as frozen ones): skipped
    t.optimizer.step()
    if clip_type == "value":
        assert w.grad.abs().max().item() == pytest.approx(value)
    else:  # fast-reid clips each parameter's own norm
        assert torch.linalg.vector_norm(w.grad, ord=norm_type).item() == pytest.approx(value, rel=1e-4)


def test_amp_and_cudnn_keys(tmp_path):
    from argparse import Namespace

    from unipt_plugin.engine import default_setup

    cfg = _cfg(SOLVER__AMP__ENABLED=True)
    assert cfg.SOLVER.AMP.ENABLED == torch.cuda.is_available()  # mixed precision is CUDA's; off on the CPU
    before = torch.backends.cudnn.benchmark
    try:
        cfg = _cfg(CUDNN_BENCHMARK=True, OUTPUT_DIR=str(tmp_path / "setup"))
        default_setup(cfg, Namespace(config_file="", eval_only=False))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before


#: Honoured keys whose effect is checked in the test named here (a real test of that effect).
_ELSEWHERE = {
    "INPUT.SIZE_TEST": "test_size_test_changes_the_test_image",
    "INPUT.CROP.SIZE": "test_crop_size_must_be_the_training_size",
    "MODEL.DEVICE": "test_model_keys", "MODEL.META_ARCHITECTURE": "test_model_keys",
    "MODEL.BACKBONE.NAME": "test_model_keys", "MODEL.HEADS.NUM_CLASSES": "test_model_keys",
    "MODEL.PIXEL_MEAN": "test_model_keys", "MODEL.PIXEL_STD": "test_model_keys",
    "MODEL.WEIGHTS": "test_model_weights_are_loaded",
    "MODEL.FREEZE_LAYERS": "test_freeze_keys", "SOLVER.FREEZE_ITERS": "test_freeze_keys",
    "DATASETS.NAMES": "test_data_keys", "DATALOADER.SAMPLER_TRAIN": "test_data_keys",
    "DATALOADER.NUM_INSTANCE": "test_data_keys", "DATALOADER.NUM_WORKERS": "test_data_keys",
    "SOLVER.IMS_PER_BATCH": "test_data_keys", "TEST.IMS_PER_BATCH": "test_data_keys",
    "DATASETS.TESTS": "test_several_test_sets_each_get_a_report",
    "SOLVER.OPT": "test_solver_keys", "SOLVER.BASE_LR": "test_solver_keys", "SOLVER.HEADS_LR_FACTOR": "test_solver_keys",
    "SOLVER.WEIGHT_DECAY": "test_solver_keys", "SOLVER.WEIGHT_DECAY_NORM": "test_solver_keys",
    "SOLVER.WEIGHT_DECAY_BIAS": "test_solver_keys", "SOLVER.BIAS_LR_FACTOR": "test_solver_keys",
    "SOLVER.MAX_EPOCH": "test_solver_keys", "SOLVER.CHECKPOINT_PERIOD": "test_solver_keys",
    "TEST.EVAL_PERIOD": "test_solver_keys", "SOLVER.SCHED": "test_solver_keys", "OUTPUT_DIR": "test_solver_keys",
    "SOLVER.CLIP_GRADIENTS.ENABLED": "test_gradient_clipping_keys",
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "test_gradient_clipping_keys",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": "test_gradient_clipping_keys",
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": "test_gradient_clipping_keys",
    "SOLVER.AMP.ENABLED": "test_amp_and_cudnn_keys", "CUDNN_BENCHMARK": "test_amp_and_cudnn_keys",
}


def test_every_elsewhere_check_exists():
    assert all(callable(globals().get(name)) for name in _ELSEWHERE.values())
