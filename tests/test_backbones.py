"""Visual backbones: token shapes, position-embedding resizing, weight loading (timm, CLIP, UniPT)."""
from __future__ import annotations

import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F
from fastreid.modeling.backbones import build_backbone

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.modeling.backbones import (CLIPVisualBackbone, ViTBackbone, infer_grid, patch_grid,
                                             resize_pos_embed)
from unipt_plugin.modeling.clip_models import create_clip
from unipt_plugin.modeling.weight_loading import WeightShapeError
from unipt_plugin.utils.io import UnsafeCheckpointError

TINY = dict(depth=2, embed_dim=64, num_heads=2)


def tiny_vit_cfg(size=(384, 128), weights="", stride=16, embed_dim=64):
    cfg = get_unipt_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_timm_vit_backbone"
    cfg.MODEL.VISUAL.ARCH = "vit_tiny_patch16_224"
    cfg.MODEL.VISUAL.DEPTH, cfg.MODEL.VISUAL.EMBED_DIM, cfg.MODEL.VISUAL.NUM_HEADS = 2, embed_dim, 2
    cfg.MODEL.VISUAL.STRIDE = stride
    cfg.MODEL.VISUAL.DROP_PATH = 0.0
    cfg.MODEL.VISUAL.WEIGHTS = weights
    cfg.INPUT.SIZE_TRAIN = list(size)
    return cfg


def clip_cfg(size=(384, 128), weights="", arch="UniPT-CLIP-tiny"):
    cfg = get_unipt_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_clip_visual_backbone"
    cfg.MODEL.VISUAL.ARCH = arch
    cfg.MODEL.VISUAL.WEIGHTS = weights
    cfg.INPUT.SIZE_TRAIN = list(size)
    return cfg


class NotATensor:
    """A pickled Python object: the safe loader must refuse files that carry one."""

    def __init__(self):
        self.payload = "code"


# ------------------------------------------------------------------ shapes
def test_tiny_vit_tokens_at_384x128():
    model = build_backbone(tiny_vit_cfg()).eval()
    assert isinstance(model, ViTBackbone) and model.out_dim == 64
    out = model(torch.randn(2, 3, 384, 128))
    assert out.shape == (2, 1 + 24 * 8, 64)
    # Output is after the final LayerNorm (default affine = identity): zero mean, unit variance per token.
    assert torch.allclose(out.mean(-1), torch.zeros(2, 193), atol=1e-4)
    assert torch.allclose(out.var(-1, unbiased=False), torch.ones(2, 193), atol=1e-2)


def test_overlapping_stride_gives_more_tokens():
    model = build_backbone(tiny_vit_cfg(size=(64, 32), stride=12)).eval()
    # (64 - 16) // 12 + 1 = 5 rows, (32 - 16) // 12 + 1 = 2 columns
    assert model.grid_size == (5, 2)
    assert model(torch.randn(1, 3, 64, 32)).shape == (1, 1 + 10, 64)
    assert model.vit.pos_embed.shape == (1, 11, 64)
    with pytest.raises(ValueError, match="STRIDE"):
        build_backbone(tiny_vit_cfg(size=(64, 32), stride=20))


def test_paper_vit_base_builds_at_384x128():
    cfg = tiny_vit_cfg()
    cfg.MODEL.VISUAL.ARCH = "vit_base_patch16_384"
    cfg.MODEL.VISUAL.DEPTH = cfg.MODEL.VISUAL.EMBED_DIM = cfg.MODEL.VISUAL.NUM_HEADS = 0
    model = build_backbone(cfg)
    assert model.out_dim == 768 and len(model.vit.blocks) == 12
    assert model.grid_size == (24, 8)
    assert model.vit.pos_embed.shape == (1, 1 + 24 * 8, 768)
    assert model.vit.patch_embed.proj.weight.shape == (768, 3, 16, 16)


def test_paper_deit_small_forward_at_384x128():
    cfg = tiny_vit_cfg()
    cfg.MODEL.VISUAL.ARCH = "deit_small_patch16_224"
    cfg.MODEL.VISUAL.DEPTH = cfg.MODEL.VISUAL.EMBED_DIM = cfg.MODEL.VISUAL.NUM_HEADS = 0
    model = build_backbone(cfg).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 128)).shape == (1, 193, 384)


def test_paper_clip_vit_b16_builds_at_384x128():
    model = build_backbone(clip_cfg(arch="ViT-B-16"))
    assert model.out_dim == 512 and model.grid_size == (24, 8)
    assert model.tower.positional_embedding.shape == (193, 768)


def test_distilled_deit_drops_the_distillation_token():
    model = ViTBackbone("deit_tiny_distilled_patch16_224", (64, 32), **TINY).eval()
    assert model.num_prefix_tokens == 2
    x = torch.randn(1, 3, 64, 32)
    out = model(x)
    full = model.vit.forward_features(x)  # (1, 2 + 8, C): class, distillation, patches
    assert out.shape == (1, 1 + 8, 64)
    assert torch.equal(out[:, 0], full[:, 0]) and torch.equal(out[:, 1:], full[:, 2:])


def test_clip_tiny_tokens_and_class_token_equals_clip_embedding():
    model = build_backbone(clip_cfg()).eval()
    assert isinstance(model, CLIPVisualBackbone) and model.out_dim == 32
    x = torch.randn(2, 3, 384, 128)
    with torch.no_grad():
        out = model(x)
        pooled = model.tower(x)  # open_clip's own forward: ln_post(class token) @ proj
    assert out.shape == (2, 193, 32)
    assert torch.allclose(out[:, 0], pooled, atol=1e-5)


# ------------------------------------------------------------------ position embeddings
def test_resize_pos_embed_keeps_linear_grids_linear_and_the_class_token():
    c, (h0, w0), (h1, w1) = 3, (14, 14), (24, 8)
    a, b, d = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 0.25, -1.0]), torch.tensor([0.1, 0.2, 0.3])
    i = torch.arange(h0).view(h0, 1, 1) / (h0 - 1)
    j = torch.arange(w0).view(1, w0, 1) / (w0 - 1)
    grid = a * i + b * j + d  # (h0, w0, c): a linear function of the normalised position
    cls = torch.tensor([[7.0, 8.0, 9.0]])
    pe = torch.cat([cls, grid.reshape(-1, c)]).unsqueeze(0)  # (1, 1 + 196, 3), row-major

    out = resize_pos_embed(pe, 1, (h1, w1))
    assert out.shape == (1, 1 + h1 * w1, c)
    assert torch.equal(out[0, 0], cls[0])
    r = torch.arange(h1).view(h1, 1, 1) / (h1 - 1)
    s = torch.arange(w1).view(1, w1, 1) / (w1 - 1)
    expected = (a * r + b * s + d).reshape(-1, c)  # align_corners=True maps corner to corner
    assert torch.allclose(out[0, 1:], expected, atol=1e-5)
    # open_clip layout (L, C) gives the same rows
    assert torch.allclose(resize_pos_embed(pe[0], 1, (h1, w1)), out[0])
    # equal grids: unchanged; a non-square grid is read with the target's aspect: 24x8 -> 12x4
    # keeps a linear function linear (corners to corners)
    assert resize_pos_embed(out, 1, (h1, w1)) is out
    small = resize_pos_embed(out, 1, (12, 4))
    r2 = torch.arange(12).view(12, 1, 1) / 11
    s2 = torch.arange(4).view(1, 4, 1) / 3
    assert torch.allclose(small[0, 1:], (a * r2 + b * s2 + d).reshape(-1, c), atol=1e-5)
    with pytest.raises(ValueError, match="not 5x5"):
        resize_pos_embed(out, 1, (12, 4), old_grid=(5, 5))


def test_infer_grid_reads_person_shaped_grids():
    assert infer_grid(32, (15, 7)) == (8, 4)     # 64x32, 8x8 patches -> stride 4
    assert infer_grid(128, (24, 8)) == (16, 8)   # 256x128 -> 384x128 with 16x16 patches
    assert infer_grid(192, (12, 4)) == (24, 8)
    assert infer_grid(7, (2, 1)) == (7, 1)       # a prime: the only tall factorisation


def test_patch_grid():
    assert patch_grid((384, 128), 16, 16) == (24, 8)
    assert patch_grid((384, 128), 16, 12) == (31, 10)


# ------------------------------------------------------------------ weights
def _unipt_checkpoint(model, path, extra_text=True):
    sd = {f"visual.{k}": v for k, v in model.state_dict().items()}
    if extra_text:
        sd["text.bert.embeddings.word_embeddings.weight"] = torch.zeros(10, 4)
    torch.save({"model": sd, "iteration": 3}, path)


def test_vit_weights_round_trip_through_unipt_checkpoint(tmp_path):
    torch.manual_seed(0)
    a = build_backbone(tiny_vit_cfg(size=(64, 32))).eval()
    _unipt_checkpoint(a, tmp_path / "unipt.pth")
    torch.manual_seed(1)
    fresh = build_backbone(tiny_vit_cfg(size=(64, 32))).eval()
    b = build_backbone(tiny_vit_cfg(size=(64, 32), weights=str(tmp_path / "unipt.pth"))).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert not torch.allclose(fresh(x), a(x))
        assert torch.equal(b(x), a(x))


def test_timm_checkpoint_14x14_loads_into_24x8(tmp_path, caplog):
    torch.manual_seed(0)
    src = ViTBackbone("vit_tiny_patch16_224", (224, 224), **TINY)
    sd = dict(src.vit.state_dict())  # timm layout, no prefix
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, 64), torch.randn(1000)
    torch.save(sd, tmp_path / "timm.pth")
    with caplog.at_level(logging.INFO, logger="unipt_plugin.modeling.weight_loading"):
        model = build_backbone(tiny_vit_cfg(weights=str(tmp_path / "timm.pth")))
    assert "loaded" in caplog.text and "dropped keys: head.bias, head.weight" in caplog.text
    pe_src = sd["pos_embed"]
    grid = pe_src[0, 1:].reshape(14, 14, 64).permute(2, 0, 1).unsqueeze(0)
    expected = F.interpolate(grid, size=(24, 8), mode="bilinear", align_corners=True)
    expected = torch.cat([pe_src[0, :1], expected[0].permute(1, 2, 0).reshape(192, 64)]).unsqueeze(0)
    assert torch.allclose(model.vit.pos_embed.data, expected, atol=1e-6)
    assert torch.equal(model.vit.pos_embed.data[0, 0], pe_src[0, 0])
    assert torch.equal(model.vit.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])


def test_person_grid_checkpoint_loads_into_an_overlapping_stride(tmp_path):
    """A 64x32 pre-training at stride 16 (4x2 grid) into a stride-8 model (7x3 grid): the 4x2
    grid is read from the length and resized corner to corner; the patch weights load as they are."""
    torch.manual_seed(0)
    src = build_backbone(tiny_vit_cfg(size=(64, 32)))
    _unipt_checkpoint(src, tmp_path / "unipt.pth")
    model = build_backbone(tiny_vit_cfg(size=(64, 32), stride=8, weights=str(tmp_path / "unipt.pth")))
    assert model.grid_size == (7, 3)
    pe_src = src.vit.pos_embed.data
    grid = pe_src[0, 1:].reshape(4, 2, 64).permute(2, 0, 1).unsqueeze(0)
    expected = F.interpolate(grid, size=(7, 3), mode="bilinear", align_corners=True)[0].permute(1, 2, 0).reshape(21, 64)
    assert torch.allclose(model.vit.pos_embed.data[0, 1:], expected, atol=1e-6)
    assert torch.equal(model.vit.patch_embed.proj.weight, src.vit.patch_embed.proj.weight)


def test_checkpoint_of_another_architecture_raises_naming_key_file_and_shapes(tmp_path):
    small = build_backbone(tiny_vit_cfg(size=(64, 32)))
    path = tmp_path / "other.pth"
    torch.save(small.vit.state_dict(), path)
    with pytest.raises(WeightShapeError) as e:
        build_backbone(tiny_vit_cfg(size=(64, 32), weights=str(path), embed_dim=96))
    msg = str(e.value)
    assert str(path) in msg and "(1, 1, 64)" in msg and "(1, 1, 96)" in msg and "'cls_token'" in msg


def test_file_with_no_matching_key_raises(tmp_path):
    path = tmp_path / "bert_only.pth"
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(3, 4)}, path)
    with pytest.raises(ValueError, match="no tensor matches"):
        build_backbone(tiny_vit_cfg(size=(64, 32), weights=str(path)))


def test_clip_tower_refuses_a_dropout_it_cannot_apply():
    cfg = clip_cfg()
    cfg.MODEL.VISUAL.DROPOUT = 0.1
    with pytest.raises(ValueError, match="MODEL.VISUAL.DROPOUT = 0.1: the CLIP image tower has no dropout"):
        build_backbone(cfg)


def test_clip_state_dict_loads_visual_part_with_grid_resize(tmp_path):
    torch.manual_seed(0)
    clip = create_clip("UniPT-CLIP-tiny")  # 224x224: 14x14 grid, OpenAI / open_clip key layout
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    model = build_backbone(clip_cfg(size=(64, 32), weights=str(tmp_path / "clip.pt"))).eval()
    src = clip.visual.positional_embedding.data
    assert torch.allclose(model.tower.positional_embedding.data, resize_pos_embed(src, 1, (4, 2)))
    assert torch.equal(model.tower.proj.data, clip.visual.proj.data)
    # at the checkpoint's own size, the class token equals open_clip's image embedding
    same = build_backbone(clip_cfg(size=(224, 224), weights=str(tmp_path / "clip.pt"))).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(same(x)[:, 0], clip.eval().encode_image(x), atol=1e-5)


def test_clip_round_trip_through_unipt_checkpoint(tmp_path):
    torch.manual_seed(0)
    a = build_backbone(clip_cfg(size=(64, 32))).eval()
    _unipt_checkpoint(a, tmp_path / "unipt.pth")
    b = build_backbone(clip_cfg(size=(64, 32), weights=str(tmp_path / "unipt.pth"))).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_backbone_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"visual.vit.cls_token": torch.zeros(1, 1, 64)}, "extra": NotATensor()}, path)
    with pytest.raises(UnsafeCheckpointError):
        build_backbone(tiny_vit_cfg(size=(64, 32), weights=str(path)))
    with pytest.raises(UnsafeCheckpointError):
        build_backbone(clip_cfg(size=(64, 32), weights=str(path)))


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone(tiny_vit_cfg(size=(64, 32), weights=str(tmp_path / "nope.pth")))


def test_unknown_arch_is_named():
    with pytest.raises(ValueError, match="not_a_vit"):
        ViTBackbone("not_a_vit", (64, 32))
    with pytest.raises(ValueError, match="not_a_clip"):
        CLIPVisualBackbone("not_a_clip", (64, 32))


def test_open_clip_own_resize_agrees_on_layout():
    """Cross-check the grid layout with open_clip's own resize (bicubic there, bilinear here):
    both must move the same rows to the same places, so the results are close for a smooth grid."""
    torch.manual_seed(0)
    clip = create_clip("UniPT-CLIP-tiny")
    i = torch.linspace(0, 1, 14).view(14, 1, 1)
    j = torch.linspace(0, 1, 14).view(1, 14, 1)
    smooth = torch.sin(3 * i) * torch.cos(2 * j) * torch.ones(1, 1, 64)
    clip.visual.positional_embedding.data[1:] = smooth.reshape(196, 64)
    sd = {k: v.clone() for k, v in clip.state_dict().items()}
    target = create_clip("UniPT-CLIP-tiny", (224, 112))  # 14x7 grid
    open_clip.model.resize_pos_embed(sd, target, interpolation="bicubic", antialias=False)
    ours = resize_pos_embed(clip.visual.positional_embedding.data, 1, (14, 7))
    assert sd["visual.positional_embedding"].shape == ours.shape
    assert (sd["visual.positional_embedding"] - ours).abs().max() < 0.1


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_clip_archive_loads_into_both_towers(tmp_path):
    """OpenAI's CLIP .pt files are TorchScript archives: the same path on a tiny scripted CLIP."""
    from unipt_plugin.modeling.text_encoders import CLIPTextEncoder

    torch.manual_seed(0)
    clip = create_clip("UniPT-CLIP-tiny").eval()
    torch.jit.script(clip).save(str(tmp_path / "ViT-tiny.pt"))
    visual = build_backbone(clip_cfg(size=(224, 224), weights=str(tmp_path / "ViT-tiny.pt"))).eval()
    text = CLIPTextEncoder("UniPT-CLIP-tiny", 77, str(tmp_path / "ViT-tiny.pt")).eval()
    x, ids = torch.randn(1, 3, 224, 224), open_clip.tokenize(["a person with a backpack"])
    with torch.no_grad():
        assert torch.allclose(visual(x)[:, 0], clip.encode_image(x), atol=1e-5)
        eot = ids.argmax(-1)
        assert torch.allclose(text(ids, (ids != 0).long())[torch.arange(1), eot], clip.encode_text(ids), atol=1e-5)


# ------------------------------------------------------------------ @configurable: cfg or plain arguments
def _same_module(a, b, x):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


def _seeded(build, seed=0):
    torch.manual_seed(seed)
    return build()


def test_vit_backbone_from_plain_arguments_equals_the_cfg_build(tmp_path):
    src = _seeded(lambda: ViTBackbone("vit_tiny_patch16_224", (224, 224), **TINY), seed=3)
    torch.save(src.vit.state_dict(), tmp_path / "timm.pth")
    cfg = tiny_vit_cfg(size=(64, 32), stride=12, weights=str(tmp_path / "timm.pth"))
    cfg.MODEL.VISUAL.DROP_PATH = 0.1
    from_cfg = _seeded(lambda: build_backbone(cfg))
    plain = _seeded(lambda: ViTBackbone(arch="vit_tiny_patch16_224", image_size=(64, 32), stride=12, drop_path=0.1,
                                        weights=str(tmp_path / "timm.pth"), **TINY))
    assert isinstance(from_cfg, ViTBackbone) and from_cfg.grid_size == plain.grid_size == (5, 2)
    assert plain.vit.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)
    _same_module(from_cfg, plain, torch.randn(2, 3, 64, 32))
    # the weights really came from the file (not the seed): another seed, same tensors outside pos_embed
    other = _seeded(lambda: ViTBackbone(cfg), seed=9)
    assert torch.equal(other.vit.blocks[0].attn.qkv.weight, src.vit.blocks[0].attn.qkv.weight)
    # a cfg plus an overriding argument (fast-reid's configurable forwards it to __init__)
    assert ViTBackbone(cfg, stride=16).grid_size == (4, 2)


def test_clip_visual_backbone_from_plain_arguments_equals_the_cfg_build(tmp_path):
    clip = _seeded(lambda: create_clip("UniPT-CLIP-tiny"), seed=3)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    cfg = clip_cfg(size=(64, 32), weights=str(tmp_path / "clip.pt"))
    from_cfg = _seeded(lambda: build_backbone(cfg))
    plain = _seeded(lambda: CLIPVisualBackbone(arch="UniPT-CLIP-tiny", image_size=(64, 32),
                                               weights=str(tmp_path / "clip.pt")))
    assert isinstance(from_cfg, CLIPVisualBackbone)
    _same_module(from_cfg, plain, torch.randn(2, 3, 64, 32))
    random_cfg, random_plain = (_seeded(lambda: CLIPVisualBackbone(clip_cfg(size=(64, 32)))),
                                _seeded(lambda: CLIPVisualBackbone("UniPT-CLIP-tiny", (64, 32))))
    _same_module(random_cfg, random_plain, torch.randn(1, 3, 64, 32))
    assert not torch.equal(random_plain.tower.proj, plain.tower.proj)  # the file was loaded above


def test_clip_visual_backbone_refuses_non_vit_clip():
    with pytest.raises(ValueError, match="'RN50' has a ResNet image tower"):
        CLIPVisualBackbone("RN50", (64, 32))
