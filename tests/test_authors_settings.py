"""The authors' settings as config keys (docs/choices.md, columns "authors" and "from"): each key
changes the built model as documented, the paper configs select the authors' values, and the
tiny / synthetic configs keep the plugin's earlier ones.

Expectations are computed independently of the code under test: parameter counts by hand from
the layer sizes (LGUR's PGU: 6 heads x 512, bias-free q/k/v, feed-forward 512), the attention
against torch's ``nn.MultiheadAttention`` and a hand-written multi-head attention, init
statistics against the distributions' closed-form standard deviations, learning rates against
the first Adam step (which moves each entry by the group's lr for a constant-sign gradient).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.engine import setup_cfg
from unipt_plugin.modeling.backbones.vit import ViTBackbone
from unipt_plugin.modeling.meta_arch import UniPTPretrain, UniPTT2I
from unipt_plugin.modeling.pgu import PGU, PGUCrossAttention
from unipt_plugin.solver import build_unipt_optimizer, param_group_specs

from standins import StandInText, StandInVisual

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER_T2I = [f"{d}/{b}.yml" for d in ("CUHK-PEDES", "ICFG-PEDES", "RSTPReid") for b in ("deit_small", "vit_base")]
PAPER_PRETRAIN = [f"LUPerson-T/{b}.yml" for b in ("deit_small", "vit_base")]
VISUAL_WIDTH = {"deit_small": 384, "vit_base": 768}
BERT_BASE_WIDTH = 768

# The authors' PGU (LGUR model/DETR_model.py, vit_pytorch/vit_pytorch.py) at the paper configs' DIM.
AUTHORS_PGU = dict(dim=384, num_prototypes=6, num_layers=2, num_heads=6, head_dim=512, qkv_bias=False,
                   ffn_dim=512, dropout=0.0, part_dim=512, image_tokens="patches", part_init="kaiming_normal")


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _pgu_count_by_hand(image_dim: int, text_dim: int, dim: int, prototypes: int, layers: int, heads: int,
                       head_dim: int, qkv_bias: bool, ffn: int, part: int) -> int:
    """Prototypes + the two input projections + per layer (shared LayerNorm, q/k/v, output
    projection, feed-forward LayerNorm, Linear-ReLU-Linear) + the bias-free part projections."""
    inner = heads * head_dim
    per_layer = (2 * dim + 3 * _linear(dim, inner, qkv_bias) + _linear(inner, dim)
                 + 2 * dim + _linear(dim, ffn) + _linear(ffn, dim))
    return (prototypes * dim + _linear(image_dim, dim) + _linear(text_dim, dim) + layers * per_layer
            + prototypes * part * dim)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------ PGU sizes


def test_authors_pgu_for_deit_small_has_the_hand_counted_parameters():
    pgu = PGU(image_dim=384, text_dim=BERT_BASE_WIDTH, **AUTHORS_PGU)
    expected = _pgu_count_by_hand(384, 768, 384, 6, 2, 6, 512, False, 512, 512)
    assert _count(pgu) == expected == 11_854_336
    attn = pgu.layers[0].attn
    assert isinstance(attn, PGUCrossAttention)
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert tuple(proj.weight.shape) == (3072, 384) and proj.bias is None
    assert tuple(attn.out_proj.weight.shape) == (384, 3072) and attn.out_proj.bias is not None
    assert tuple(pgu.layers[0].ffn[0].weight.shape) == (512, 384)
    assert tuple(pgu.layers[0].ffn[3].weight.shape) == (384, 512)
    assert all(m.p == 0.0 for m in pgu.modules() if isinstance(m, nn.Dropout))
    # today's defaults (8 heads of 48, q/k/v with bias, feed-forward 1,536) for comparison
    today = PGU(image_dim=384, text_dim=BERT_BASE_WIDTH, dim=384)
    assert isinstance(today.layers[0].attn, nn.MultiheadAttention)
    assert _count(today) == _pgu_count_by_hand(384, 768, 384, 6, 2, 8, 48, True, 1536, 512)


@pytest.mark.parametrize("head_dim,qkv_bias,torch_mha", [(0, True, True), (4, True, True), (0, False, False),
                                                         (8, True, False)])
def test_head_dim_and_qkv_bias_select_the_attention(head_dim, qkv_bias, torch_mha):
    pgu = PGU(12, 20, dim=16, num_prototypes=3, num_heads=4, ffn_dim=24, part_dim=8, head_dim=head_dim,
              qkv_bias=qkv_bias)
    attn = pgu.layers[0].attn
    assert isinstance(attn, nn.MultiheadAttention) == torch_mha
    width = 4 * (head_dim or 4)
    expected = _pgu_count_by_hand(12, 20, 16, 3, 2, 4, head_dim or 4, qkv_bias, 24, 8)
    assert _count(pgu) == expected
    if not torch_mha:
        assert attn.q_proj.out_features == width and (attn.q_proj.bias is not None) == qkv_bias


def test_cross_attention_equals_torch_multihead_attention_with_the_same_weights():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = PGUCrossAttention(16, 4, 4, qkv_bias=True).eval()
    w, b = ref.in_proj_weight.detach(), ref.in_proj_bias.detach()
    with torch.no_grad():
        for i, proj in enumerate((ours.q_proj, ours.k_proj, ours.v_proj)):
            proj.weight.copy_(w[16 * i:16 * (i + 1)])
            proj.bias.copy_(b[16 * i:16 * (i + 1)])
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        ours.out_proj.bias.copy_(ref.out_proj.bias)
    q, kv = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 4:] = True
    expected, _ = ref(q, kv, kv, key_padding_mask=pad, need_weights=False)
    got, _ = ours(q, kv, kv, key_padding_mask=pad)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_wide_bias_free_heads_against_a_hand_written_attention():
    torch.manual_seed(0)
    attn = PGUCrossAttention(8, 3, 5, qkv_bias=False).eval()
    q, kv = torch.randn(2, 4, 8), torch.randn(2, 6, 8)
    pad = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    out, _ = attn(q, kv, kv, key_padding_mask=pad)
    # per sample, per head: softmax(q_h k_h^T / sqrt(5)) v_h over the real tokens, heads concatenated
    expected = torch.empty(2, 4, 8)
    for b in range(2):
        keep = ~pad[b]
        heads = []
        for h in range(3):
            rows = slice(5 * h, 5 * (h + 1))
            qh = q[b] @ attn.q_proj.weight[rows].t()
            kh = kv[b, keep] @ attn.k_proj.weight[rows].t()
            vh = kv[b, keep] @ attn.v_proj.weight[rows].t()
            heads.append(torch.softmax(qh @ kh.t() / math.sqrt(5), dim=-1) @ vh)
        expected[b] = torch.cat(heads, dim=1) @ attn.out_proj.weight.t() + attn.out_proj.bias
    torch.testing.assert_close(out, expected.detach(), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ class token


def _small_pgu(image_tokens: str) -> PGU:
    torch.manual_seed(0)
    return PGU(12, 20, dim=16, num_prototypes=3, num_heads=4, ffn_dim=24, dropout=0.0, part_dim=8,
               image_tokens=image_tokens).eval()


def test_patches_drop_the_class_token_and_all_keep_it():
    img = torch.randn(2, 7, 12)
    moved = img.clone()
    moved[:, 0] += 5.0  # the class token only
    patches, everything = _small_pgu("patches"), _small_pgu("all")
    with torch.no_grad():
        assert torch.equal(patches(img, "image")[1], patches(moved, "image")[1])
        assert not torch.allclose(everything(img, "image")[1], everything(moved, "image")[1], atol=1e-3)
        # "patches" is "all" over tokens[:, 1:] (same weights: same seed)
        torch.testing.assert_close(patches(img, "image")[0], everything(img[:, 1:], "image")[0])
        # a patch token still counts
        other = img.clone()
        other[:, 3] += 5.0
        assert not torch.allclose(patches(img, "image")[1], patches(other, "image")[1], atol=1e-3)
        # text keeps its first token ([CLS]) either way
        txt = torch.randn(2, 5, 20)
        moved_txt = txt.clone()
        moved_txt[:, 0] += 5.0
        assert not torch.allclose(patches(txt, "text")[1], patches(moved_txt, "text")[1], atol=1e-3)
    with pytest.raises(ValueError, match="IMAGE_TOKENS"):
        patches(torch.randn(2, 1, 12), "image")


@pytest.mark.parametrize("image_tokens,unchanged", [("patches", True), ("all", False)])
def test_t2i_pgu_feature_sees_the_class_token_per_the_key(image_tokens, unchanged):
    cfg = get_unipt_cfg()
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.T2I.EMBED_DIM = 16
    cfg.MODEL.T2I.TEST_SCORE = "pgu"
    cfg.MODEL.PGU.update(NUM_PROTOTYPES=3, DIM=16, NUM_HEADS=2, FFN_DIM=32, PART_DIM=8, DROPOUT=0.0,
                         IMAGE_TOKENS=image_tokens)
    torch.manual_seed(0)
    model = UniPTT2I(cfg, StandInVisual(), StandInText(50)).eval()
    images = torch.rand(2, 3, 32, 16) * 255
    with torch.no_grad():
        before = model({"images": images})
        handle = model.visual.register_forward_hook(
            lambda m, args, out: torch.cat([out[:, :1] + 3.0, out[:, 1:]], dim=1))
        after = model({"images": images})
        handle.remove()
    assert torch.equal(before, after) == unchanged


# ------------------------------------------------------------------ part projections init


def test_kaiming_normal_part_init_has_the_fan_out_std_and_default_is_uniform():
    """LGUR initialises its 1x1 part convolutions (512 out, 384 in) with torch's
    ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``: std sqrt(2 / 512) = 0.0625, not the
    fan-in sqrt(2 / 384) = 0.0722; PyTorch's default Linear init is uniform in +-1/sqrt(384)."""
    torch.manual_seed(0)
    kaiming = PGU(image_dim=384, text_dim=768, **AUTHORS_PGU).part_proj.detach()
    fan_out_std, fan_in_std = math.sqrt(2 / 512), math.sqrt(2 / 384)
    assert kaiming.std().item() == pytest.approx(fan_out_std, rel=0.01)
    assert abs(kaiming.std().item() - fan_in_std) > 0.1 * fan_in_std
    assert abs(kaiming.mean().item()) < 1e-3
    for part in kaiming:  # each prototype's projection on its own
        assert part.std().item() == pytest.approx(fan_out_std, rel=0.02)
    bound = 1 / math.sqrt(384)
    assert kaiming.abs().max().item() > 2 * bound  # normal tails (about 5 sigma here)
    torch.manual_seed(0)
    default = PGU(image_dim=384, text_dim=768, **{**AUTHORS_PGU, "part_init": "default"}).part_proj.detach()
    assert default.abs().max().item() <= bound
    assert default.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.01)


# ------------------------------------------------------------------ part learning rate


def _t2i_for_solver(**solver):
    cfg = get_unipt_cfg()
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.T2I.EMBED_DIM = 16
    cfg.MODEL.PGU.update(NUM_PROTOTYPES=3, DIM=16, NUM_HEADS=2, FFN_DIM=32, PART_DIM=8)
    cfg.SOLVER.update(OPT="Adam", BASE_LR=1e-4, VISUAL_LR=1e-4, TEXT_LR=1e-5, WEIGHT_DECAY=0.0)
    cfg.SOLVER.update(**solver)
    torch.manual_seed(0)
    return cfg, UniPTT2I(cfg, StandInVisual(), StandInText(50))


PART_NAMES = {"pgu.part_proj", "part_classifiers.weight", "part_classifiers.bias"}


def _group_names(cfg, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: (g["lr"], {names[id(p)] for p in g["params"]}) for g in param_group_specs(cfg, model)}


def test_part_lr_puts_part_projections_and_classifiers_in_their_own_groups():
    cfg, model = _t2i_for_solver(PART_LR=1e-3, HEADS_LR_FACTOR=2.0, BIAS_LR_FACTOR=0.5)
    groups = _group_names(cfg, model)
    assert groups["parts"] == (pytest.approx(1e-3), {"pgu.part_proj", "part_classifiers.weight"})
    assert groups["parts_no_decay"] == (pytest.approx(0.5e-3), {"part_classifiers.bias"})
    # the rest of the head: BASE_LR x HEADS_LR_FACTOR, its biases x BIAS_LR_FACTOR (norm weights and
    # biases then differ in lr, hence two groups besides the weights)
    assert [n for n in groups if n.startswith("head")] == ["head", "head_norm", "head_bias"]
    assert [groups[n][0] for n in ("head", "head_norm", "head_bias")] == pytest.approx([2e-4, 2e-4, 1e-4])
    head_params = groups["head"][1] | groups["head_norm"][1] | groups["head_bias"][1]
    assert not head_params & PART_NAMES and "pgu.prototypes" in head_params and "classifier.bias" in head_params
    # every trainable parameter in exactly one group
    every = [n for _, names in groups.values() for n in names]
    assert sorted(every) == sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_part_lr_zero_keeps_the_head_groups_of_before():
    cfg, model = _t2i_for_solver(PART_LR=0.0, HEADS_LR_FACTOR=2.0, BIAS_LR_FACTOR=0.5)
    groups = _group_names(cfg, model)
    assert list(groups) == ["visual", "visual_no_decay", "text", "text_no_decay", "head", "head_norm", "head_bias"]
    assert {"pgu.part_proj", "part_classifiers.weight"} <= groups["head"][1]
    assert "part_classifiers.bias" in groups["head_bias"][1]
    assert groups["head"][0] == pytest.approx(2e-4) and groups["head_bias"][0] == pytest.approx(1e-4)


def test_the_first_adam_step_moves_the_parts_by_part_lr():
    """Adam's first step moves an entry by lr * g / (|g| + eps), i.e. by the lr for g = 1."""
    cfg, model = _t2i_for_solver(PART_LR=1e-3)
    opt, _ = build_unipt_optimizer(cfg, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    after = dict(model.named_parameters())
    for name, lr in (("pgu.part_proj", 1e-3), ("part_classifiers.weight", 1e-3), ("part_classifiers.bias", 1e-3),
                     ("pgu.prototypes", 1e-4), ("classifier.weight", 1e-4), ("text.emb.weight", 1e-5)):
        # float32 rounding of the subtraction: a few ulps of entries up to ~4 in size (randn prototypes)
        torch.testing.assert_close(before[name] - after[name].detach(), torch.full_like(before[name], lr),
                                   atol=5e-7, rtol=0)


def test_negative_part_lr_is_refused():
    cfg, model = _t2i_for_solver(PART_LR=-1e-3)
    with pytest.raises(ValueError, match="SOLVER.PART_LR"):
        param_group_specs(cfg, model)


# ------------------------------------------------------------------ ViT dropout


def _tiny_vit(dropout: float, drop_path: float = 0.0) -> ViTBackbone:
    torch.manual_seed(0)
    return ViTBackbone(arch="vit_tiny_patch16_224", image_size=(64, 32), depth=2, embed_dim=64, num_heads=2,
                       dropout=dropout, drop_path=drop_path)


def _dropouts(vit: ViTBackbone) -> dict[str, float]:
    return {n: m.p for n, m in vit.vit.named_modules() if isinstance(m, nn.Dropout)}


def test_visual_dropout_sets_timm_block_dropouts_only():
    on, off = _dropouts(_tiny_vit(0.1)), _dropouts(_tiny_vit(0.0))
    assert set(on) == set(off)  # the same modules, only their rates differ
    expected = {f"blocks.{i}.{name}" for i in range(2) for name in ("attn.proj_drop", "mlp.drop1", "mlp.drop2")}
    assert {n for n, p in on.items() if p == 0.1} == expected
    assert all(p == 0.0 for n, p in on.items() if n not in expected)  # pos_drop, attn_drop, head_drop
    assert all(p == 0.0 for p in off.values())


def test_visual_dropout_changes_training_forwards_only():
    x = torch.randn(2, 3, 64, 32)
    vit = _tiny_vit(0.1).train()
    torch.manual_seed(1)
    a = vit(x)
    assert not torch.allclose(a, vit(x))  # a new dropout mask per call
    vit.eval()
    assert torch.equal(vit(x), vit(x))
    plain = _tiny_vit(0.0).train()
    assert torch.equal(plain(x), plain(x))
    with pytest.raises(ValueError, match="MODEL.VISUAL.DROPOUT"):
        _tiny_vit(1.0)


# ------------------------------------------------------------------ pre-training projection init


@pytest.mark.parametrize("proj_init", ["normal", "default"])
def test_pretrain_projection_init(proj_init):
    torch.manual_seed(0)
    model = UniPTPretrain(StandInVisual(), StandInText(50), 4096, mlm_weight=0.0, proj_init=proj_init)
    for proj in (model.image_proj, model.text_proj):
        w, b = proj.weight.detach(), proj.bias.detach()
        bound = 1 / math.sqrt(proj.in_features)  # PyTorch's default: uniform in +-1/sqrt(fan_in)
        if proj_init == "normal":
            assert w.std().item() == pytest.approx(0.02, rel=0.01) and abs(w.mean().item()) < 1e-3
            assert torch.equal(b, torch.zeros_like(b))
        else:
            assert w.abs().max().item() <= bound and w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
            assert b.abs().max().item() > 0
    with pytest.raises(ValueError, match="MODEL.PRETRAIN.PROJ_INIT"):
        UniPTPretrain(StandInVisual(), StandInText(50), 16, mlm_weight=0.0, proj_init="xavier")


# ------------------------------------------------------------------ bad values


@pytest.mark.parametrize("kwargs,match", [({"image_tokens": "cls"}, "MODEL.PGU.IMAGE_TOKENS"),
                                          ({"part_init": "xavier"}, "MODEL.PGU.PART_INIT"),
                                          ({"head_dim": -1}, "MODEL.PGU.HEAD_DIM"),
                                          ({"num_heads": 0}, "MODEL.PGU.NUM_HEADS")])
def test_bad_pgu_values_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PGU(12, 20, dim=16, num_heads=kwargs.pop("num_heads", 4), **kwargs)


def test_head_dim_lifts_the_divisibility_rule():
    with pytest.raises(ValueError, match="divisible"):
        PGU(12, 20, dim=18, num_heads=4)
    pgu = PGU(12, 20, dim=18, num_heads=4, head_dim=8, ffn_dim=24, part_dim=8)
    assert pgu(torch.randn(2, 5, 12), "image")[1].shape == (2, 6 * 8)


# ------------------------------------------------------------------ configs


def _paper_cfg(name: str):
    return setup_cfg(str(CONFIGS / name), ["MODEL.DEVICE", "cpu"])


@pytest.mark.parametrize("name", PAPER_T2I)
def test_paper_t2i_configs_build_the_authors_pgu(name):
    cfg = _paper_cfg(name)
    image_dim = VISUAL_WIDTH[Path(name).stem]
    torch.manual_seed(0)
    pgu = PGU(cfg, image_dim=image_dim, text_dim=BERT_BASE_WIDTH)
    assert _count(pgu) == _pgu_count_by_hand(image_dim, 768, 384, 6, 2, 6, 512, False, 512, 512)
    assert all(isinstance(layer.attn, PGUCrossAttention) and layer.attn.q_proj.bias is None for layer in pgu.layers)
    assert all(m.p == 0.0 for m in pgu.modules() if isinstance(m, nn.Dropout))
    assert pgu.image_tokens == "patches"
    assert pgu.part_proj.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.01)
    assert cfg.SOLVER.PART_LR == pytest.approx(1e-3) and cfg.SOLVER.BASE_LR == pytest.approx(1e-4)
    assert cfg.SOLVER.HEADS_LR_FACTOR == 1.0 and cfg.SOLVER.BIAS_LR_FACTOR == 1.0
    # LGUR's fine-tuning ViT: drop-path 0.1, no dropout
    assert cfg.MODEL.VISUAL.DROP_PATH == pytest.approx(0.1) and cfg.MODEL.VISUAL.DROPOUT == 0.0


@pytest.mark.parametrize("name", PAPER_PRETRAIN)
def test_paper_pretrain_configs_use_the_authors_vit_regularisation_and_init(name):
    cfg = _paper_cfg(name)
    assert cfg.MODEL.VISUAL.DROPOUT == pytest.approx(0.1) and cfg.MODEL.VISUAL.DROP_PATH == 0.0
    assert cfg.MODEL.PRETRAIN.PROJ_INIT == "normal"
    # the config's backbone at one block (full width) carries the dropout, and no drop-path
    cfg.defrost()
    cfg.MODEL.VISUAL.WEIGHTS, cfg.MODEL.VISUAL.DEPTH = "", 1
    vit = ViTBackbone(cfg)
    rates = _dropouts(vit)
    assert {n for n, p in rates.items() if p > 0} == {"blocks.0.attn.proj_drop", "blocks.0.mlp.drop1",
                                                      "blocks.0.mlp.drop2"}
    assert all(p == pytest.approx(0.1) for p in rates.values() if p > 0)
    assert isinstance(vit.vit.blocks[0].drop_path1, nn.Identity)


# The plugin's earlier values, which configs/Tiny and configs/Synthetic keep (the demo's figures).
EARLIER = {"MODEL.PGU.HEAD_DIM": 0, "MODEL.PGU.QKV_BIAS": True, "MODEL.PGU.DROPOUT": 0.1,
           "MODEL.PGU.IMAGE_TOKENS": "all", "MODEL.PGU.PART_INIT": "default", "SOLVER.PART_LR": 0.0,
           "MODEL.VISUAL.DROPOUT": 0.0, "MODEL.VISUAL.DROP_PATH": 0.0, "MODEL.PRETRAIN.PROJ_INIT": "default"}
EARLIER_SIZES = {"Tiny/t2i.yml": (2, 64), "Synthetic/finetune.yml": (4, 128)}  # PGU NUM_HEADS, FFN_DIM


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("name", ["Tiny/t2i.yml", "Tiny/pretrain.yml", "Synthetic/finetune.yml",
                                  "Synthetic/pretrain.yml"])
def test_tiny_and_synthetic_configs_keep_the_earlier_values(name):
    cfg = _paper_cfg(name)
    assert {k: _get(cfg, k) for k in EARLIER} == EARLIER
    if name in EARLIER_SIZES:
        assert (cfg.MODEL.PGU.NUM_HEADS, cfg.MODEL.PGU.FFN_DIM) == EARLIER_SIZES[name]
    # and those are the plugin's defaults (apart from DROP_PATH, which these small models set to 0)
    defaults = get_unipt_cfg()
    assert all(_get(defaults, k) == v for k, v in EARLIER.items() if k != "MODEL.VISUAL.DROP_PATH")


def test_default_cfg_pgu_equals_plain_arguments_with_the_new_keys():
    cfg = get_unipt_cfg()
    p = cfg.MODEL.PGU
    p.DIM, p.NUM_PROTOTYPES, p.NUM_HEADS, p.HEAD_DIM, p.QKV_BIAS, p.FFN_DIM = 16, 3, 2, 12, False, 24
    p.DROPOUT, p.PART_DIM, p.IMAGE_TOKENS, p.PART_INIT = 0.0, 8, "patches", "kaiming_normal"
    torch.manual_seed(0)
    from_cfg = PGU(cfg, image_dim=12, text_dim=20)
    torch.manual_seed(0)
    plain = PGU(12, 20, dim=16, num_prototypes=3, num_heads=2, head_dim=12, qkv_bias=False, ffn_dim=24,
                dropout=0.0, part_dim=8, image_tokens="patches", part_init="kaiming_normal")
    sa, sb = from_cfg.state_dict(), plain.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert from_cfg.image_tokens == "patches" and from_cfg.layers[0].attn.head_dim == 12


def test_authors_pgu_forward_against_a_hand_written_reference():
    """The whole PGU with the authors' structure (wide bias-free heads, class token dropped)
    against a direct re-implementation from its parameters."""
    torch.manual_seed(0)
    pgu = PGU(12, 20, dim=16, num_prototypes=3, num_layers=2, num_heads=2, head_dim=12, qkv_bias=False,
              ffn_dim=24, dropout=0.0, part_dim=8, image_tokens="patches", part_init="kaiming_normal").eval()
    img = torch.randn(2, 7, 12)
    proj = pgu.input_proj["image"]
    x = img[:, 1:] @ proj.weight.t() + proj.bias
    q = pgu.prototypes.unsqueeze(0).expand(2, -1, -1)
    for layer in pgu.layers:
        ln, a = layer.norm, layer.attn
        nq, nk = (F.layer_norm(t, (16,), ln.weight, ln.bias, ln.eps) for t in (q, x))
        split = lambda t: t.reshape(2, -1, 2, 12).transpose(1, 2)  # noqa: E731
        qq, kk, vv = split(nq @ a.q_proj.weight.t()), split(nk @ a.k_proj.weight.t()), split(nk @ a.v_proj.weight.t())
        heads = (qq @ kk.transpose(-1, -2) / math.sqrt(12)).softmax(-1) @ vv
        q = q + heads.transpose(1, 2).reshape(2, -1, 24) @ a.out_proj.weight.t() + a.out_proj.bias
        n2, f1, f2 = layer.norm_ffn, layer.ffn[0], layer.ffn[3]
        hidden = torch.relu(F.layer_norm(q, (16,), n2.weight, n2.bias, n2.eps) @ f1.weight.t() + f1.bias)
        q = q + hidden @ f2.weight.t() + f2.bias
    parts = torch.stack([q[:, p] @ pgu.part_proj[p].t() for p in range(3)], dim=1)
    with torch.no_grad():
        got_parts, got_feat = pgu(img, "image")
    torch.testing.assert_close(got_parts, parts.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_feat, F.normalize(parts.detach().flatten(1), dim=-1), atol=1e-6, rtol=1e-5)
