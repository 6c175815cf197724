"""Library functions that replaced hand-written code give the same results as the code they replaced.

* Position-embedding resize: timm's ``resample_abs_pos_embed`` (bilinear, ``align_corners=True``,
  no antialiasing) inside ``backbones.resize_pos_embed`` equals, bit for bit, the grid resize
  the backbones used before (re-implemented below: prefix rows kept, the grid interpolated with
  ``F.interpolate``), on timm (1, L, C) and open_clip (L, C) layouts.
* The CLIP factory ``clip_models.create_clip`` builds, under the same seed, the same tensors as
  the constructions it replaced: ``open_clip.CLIP(**config)`` (the CLIP towers and the stand-in)
  and ``open_clip.create_model(name, pretrained=None, ...)`` (the pseudo-text generator).
* The CLIP weight loader ``clip_models.load_clip_weights`` loads the same tensors as open_clip's
  own ``load_checkpoint`` (open_clip files, DDP "module." prefix, TorchScript archives).
"""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from unipt_plugin.modeling.backbones import resize_pos_embed
from unipt_plugin.modeling.clip_models import (
    TINY_CLIP_CONFIGS,
    clip_tokenizer,
    create_clip,
    load_clip_weights,
    read_clip_state_dict,
)
from unipt_plugin.modeling.weight_loading import WeightShapeError, unwrap_state_dict
from unipt_plugin.pseudo_text.clip_model import load_frozen_clip

SMALL_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": [32, 16], "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


# ------------------------------------------------------------------ position embeddings
def _grid_resize_before(pos_embed, num_prefix, new_grid, old_grid):
    """The resize the backbones did by hand: (1, P + h*w, C) or (P + h*w, C) -> prefix rows kept,
    the row-major grid interpolated bilinearly with align_corners=True in float32."""
    pe = pos_embed.unsqueeze(0) if pos_embed.dim() == 2 else pos_embed
    prefix, grid = pe[:, :num_prefix], pe[:, num_prefix:]
    c = grid.shape[-1]
    img = grid.reshape(1, old_grid[0], old_grid[1], c).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=tuple(new_grid), mode="bilinear", align_corners=True)
    out = torch.cat([prefix, img.permute(0, 2, 3, 1).reshape(1, -1, c).to(pos_embed.dtype)], dim=1)
    return out.squeeze(0) if pos_embed.dim() == 2 else out


@pytest.mark.parametrize("shape, num_prefix, new_grid, old_grid", [
    ((1, 1 + 24 * 8, 16), 1, (12, 4), (24, 8)),  # a person grid halved, class token
    ((1, 1 + 24 * 8, 16), 1, (48, 16), (24, 8)),  # doubled
    ((1, 1 + 14 * 14, 16), 1, (24, 8), None),  # DeiT / CLIP 224 checkpoint -> 384x128, square inferred
    ((1 + 14 * 14, 16), 1, (24, 8), None),  # open_clip's (L, C) positional_embedding
    ((1, 2 + 14 * 14, 8), 2, (5, 2), None),  # distilled DeiT: two prefix tokens
    ((1, 14 * 14, 8), 0, (31, 10), None),  # no prefix token (no_embed_class ViTs)
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_timm_resample_equals_the_grid_resize_it_replaced(shape, num_prefix, new_grid, old_grid, dtype):
    pe = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    grid = old_grid or (14, 14)
    expected = _grid_resize_before(pe, num_prefix, new_grid, grid)
    got = resize_pos_embed(pe, num_prefix, new_grid, old_grid)
    assert got.shape == expected.shape and got.dtype == dtype
    assert torch.equal(got, expected)
    assert torch.equal(got[..., :num_prefix, :], pe[..., :num_prefix, :])  # prefix rows untouched


def test_timm_defaults_would_change_the_values():
    """Why the settings are explicit: timm's default (bicubic, antialias) and plain bicubic differ
    from the bilinear align_corners=True resize the checkpoints have been adapted with."""
    pe = torch.randn(1, 1 + 24 * 8, 16, generator=torch.Generator().manual_seed(1))
    ours = resize_pos_embed(pe, 1, (12, 4), (24, 8))
    for kwargs in ({}, {"interpolation": "bicubic", "antialias": False}):
        other = resample_abs_pos_embed(pe, [12, 4], [24, 8], num_prefix_tokens=1, **kwargs)
        assert other.shape == ours.shape and not torch.allclose(other, ours, atol=1e-3)


# ------------------------------------------------------------------ CLIP factory
def _same_tensors(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _seeded(build, seed=0):
    torch.manual_seed(seed)
    return build()


def test_create_clip_equals_open_clip_constructor_for_tiny_names_and_dicts():
    cfg = json.loads(json.dumps(TINY_CLIP_CONFIGS["UniPT-CLIP-tiny"]))
    cfg["vision_cfg"]["image_size"] = (64, 32)
    _same_tensors(_seeded(lambda: create_clip("UniPT-CLIP-tiny", (64, 32))), _seeded(lambda: open_clip.CLIP(**cfg)))
    ours = _seeded(lambda: create_clip(SMALL_CLIP))
    _same_tensors(ours, _seeded(lambda: open_clip.CLIP(**json.loads(json.dumps(SMALL_CLIP)))))
    assert tuple(ours.visual.image_size) == (32, 16) and tuple(ours.visual.preprocess_cfg["size"]) == (32, 16)
    # the seed matters (the comparison can fail)
    assert not torch.equal(_seeded(lambda: create_clip(SMALL_CLIP), 1).visual.proj, ours.visual.proj)


@pytest.mark.parametrize("quick_gelu", [True, None])
def test_create_clip_equals_open_clip_create_model_for_registry_names(quick_gelu):
    ours = _seeded(lambda: create_clip("ViT-S-32", quick_gelu=quick_gelu))
    theirs = _seeded(lambda: open_clip.create_model("ViT-S-32", pretrained=None, force_quick_gelu=bool(quick_gelu),
                                                    pretrained_image=False, pretrained_text=False))
    assert type(ours) is type(theirs) is open_clip.CLIP
    _same_tensors(ours, theirs)
    assert ours.visual.preprocess_cfg == theirs.visual.preprocess_cfg
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(ours.eval().encode_image(x), theirs.eval().encode_image(x))  # same activation


def test_create_clip_equals_open_clip_create_model_for_json_configs(tmp_path):
    path = tmp_path / "eq-small-clip.json"
    path.write_text(json.dumps(SMALL_CLIP))
    open_clip.add_model_config(path)
    ours = _seeded(lambda: create_clip(str(path)))
    _same_tensors(ours, _seeded(lambda: open_clip.create_model("eq-small-clip", pretrained=None,
                                                               pretrained_image=False, pretrained_text=False)))
    texts = ["a man in a red shirt", "word " * 90]
    assert torch.equal(clip_tokenizer(str(path))(texts), open_clip.get_tokenizer("eq-small-clip")(texts))
    assert torch.equal(clip_tokenizer("ViT-S-32")(texts), open_clip.get_tokenizer("ViT-S-32")(texts))


def test_create_clip_bad_specs_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip architecture 'not-a-clip'"):
        create_clip("not-a-clip")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        create_clip(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"embed_dim": 8, "vision_cfg": {}}))
    with pytest.raises(ValueError, match=r"bad.json.*\['text_cfg'\]"):
        create_clip(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="not a plain CLIP ViT"):
        create_clip("ViT-B-16-SigLIP", plain_vit=True)


# ------------------------------------------------------------------ CLIP weight loader
def _file_variants(tmp_path, src):
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "ddp.pt")
    save_file(sd, str(tmp_path / "weights.safetensors"))
    return [tmp_path / "plain.pt", tmp_path / "ddp.pt", tmp_path / "weights.safetensors"]


def test_load_clip_weights_equals_open_clip_load_checkpoint(tmp_path):
    src = _seeded(lambda: create_clip(SMALL_CLIP), seed=5)
    for path in _file_variants(tmp_path, src):
        ours, theirs = _seeded(lambda: create_clip(SMALL_CLIP)), _seeded(lambda: create_clip(SMALL_CLIP))
        load_clip_weights(ours, path)
        open_clip.load_checkpoint(theirs, str(path))
        _same_tensors(ours, theirs)
        _same_tensors(ours, src)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_load_clip_weights_reads_torchscript_archives_like_open_clip(tmp_path):
    """OpenAI's format. open_clip reads it only with weights_only=False (full unpickling, which
    the project refuses); ours goes through torch.jit.load and gives the same tensors."""
    src = _seeded(lambda: create_clip("UniPT-CLIP-tiny"), seed=5).eval()
    torch.jit.script(src).save(str(tmp_path / "openai-style.pt"))
    assert "input_resolution" not in read_clip_state_dict(tmp_path / "openai-style.pt")
    ours, theirs = create_clip("UniPT-CLIP-tiny"), create_clip("UniPT-CLIP-tiny")
    load_clip_weights(ours, tmp_path / "openai-style.pt")
    # non-strict there: a scripted archive also holds the causal mask, a non-persistent buffer
    result = open_clip.load_checkpoint(theirs, str(tmp_path / "openai-style.pt"), strict=False, weights_only=False)
    assert result.missing_keys == [] and result.unexpected_keys == ["attn_mask"]
    _same_tensors(ours, theirs)
    _same_tensors(ours, src)


def test_load_clip_weights_errors_name_the_file(tmp_path):
    src = create_clip(SMALL_CLIP)
    sd = dict(src.state_dict())
    sd.pop("visual.proj")
    sd["extra.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match=r"mismatch.pt does not match.*missing \['visual.proj'\].*"
                                         r"unexpected \['extra.weight'\]\. Check the name"):
        load_clip_weights(create_clip(SMALL_CLIP), tmp_path / "mismatch.pt", hint="Check the name.")
    wider = dict(SMALL_CLIP, embed_dim=24)
    torch.save(create_clip(wider).state_dict(), tmp_path / "wider.pt")
    with pytest.raises(WeightShapeError, match=r"wider.pt: tensor '[a-z_.]+' has shape \(32, 24\) in the file but \(32, 16\)"):
        load_clip_weights(create_clip(SMALL_CLIP), tmp_path / "wider.pt")


def test_frozen_clip_is_the_factory_model_loaded_and_frozen(tmp_path):
    (tmp_path / "frozen-small.json").write_text(json.dumps(SMALL_CLIP))
    src = _seeded(lambda: create_clip(SMALL_CLIP), seed=5)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    model, tokenizer = load_frozen_clip(model_config=str(tmp_path / "frozen-small.json"), weights=str(tmp_path / "w.pt"))
    _same_tensors(model, src)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert torch.equal(tokenizer(["a man"]), open_clip.tokenize(["a man"]))
    random_a = _seeded(lambda: load_frozen_clip("ViT-S-32", random_init_ok=True, quick_gelu="on")[0])
    _same_tensors(random_a, _seeded(lambda: open_clip.create_model("ViT-S-32", force_quick_gelu=True,
                                                                    pretrained_text=False)))


def test_one_module_prefix_rule():
    """``unwrap_state_dict`` strips DDP's "module." with torch's own helper: every key that has it."""
    sd = {"module.a": torch.zeros(1), "b": torch.ones(1), "module.c.module.d": torch.ones(2), "step": 3}
    assert sorted(unwrap_state_dict({"model": sd})) == ["a", "b", "c.module.d"]


def test_checkpointer_matches_ddp_prefixed_checkpoints(tmp_path, caplog):
    """engine.checkpoint counts matches after the same prefix rule; fast-reid then loads the file."""
    import logging

    from unipt_plugin.engine import UniPTCheckpointer

    torch.manual_seed(0)
    src, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch.save({"model": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ddp.pth")
    with caplog.at_level(logging.INFO, logger="unipt_plugin.engine.checkpoint"):
        UniPTCheckpointer(model).load(str(tmp_path / "ddp.pth"))
    assert "Matched 2 of the model's 2 tensors" in caplog.text
    assert torch.equal(model.weight, src.weight) and torch.equal(model.bias, src.bias)
