"""PLIP's model: the ModifiedResNet backbone, the config, and the loader of PLIP's checkpoint.

PLIP's checkpoint layout is written out here from its public model code (``visual_model.py``:
``Image_encoder_ModifiedResNet`` with ``AttentionPool2d`` sized for 256x128; ``textual_model.py``:
``Textual_encoder`` holding a bert-base-uncased ``BertModel`` as ``encoder``; the file stores
``{"epoch", "ImgEncoder_state_dict", "TxtEncoder_state_dict"}``, as its ``zs_infer.py`` reads it),
independently of open_clip and transformers: key names and shapes by the architecture's rules,
random values. The full-size model is built once (module fixture) and runs one forward.
"""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from fastreid.modeling import build_model
from fastreid.modeling.backbones import build_backbone
from torch import nn

from unipt_plugin.engine import setup_cfg
from unipt_plugin.engine.checkpoint import UniPTCheckpointer
from unipt_plugin.modeling.backbones import ModifiedResNetBackbone
from unipt_plugin.modeling.backbones.modified_resnet import modified_resnet_spec
from unipt_plugin.modeling.plip_weights import load_plip_checkpoint
from unipt_plugin.modeling.weight_loading import WeightShapeError

CONFIG = "configs/CUHK-PEDES/plip_mresnet50.yml"
BERT_BASE = ["MODEL.TEXT.NAME", "SmallBertTextEncoder", "MODEL.TEXT.HIDDEN_SIZE", "768",
             "MODEL.TEXT.NUM_LAYERS", "12", "MODEL.TEXT.NUM_HEADS", "12", "MODEL.TEXT.INTERMEDIATE_SIZE", "3072"]
NO_WEIGHTS = ["MODEL.VISUAL.WEIGHTS", "", "MODEL.TEXT.WEIGHTS", "", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]
TINY = ["MODEL.VISUAL.ARCH", "UniPT-RN-tiny", "MODEL.TEXT.NAME", "SmallBertTextEncoder"]  # SmallBert: 128 x 2 layers
TINY_RN = dict(layers=(1, 1, 1, 1), width=8, output_dim=32)
TINY_BERT = dict(hidden=128, layers=2, ffn=512)
# PLIP's pooler and the position_ids buffer of transformers < 4.31 have no place in our BERT encoders.
DROPPED = ["encoder.embeddings.position_ids", "encoder.pooler.dense.bias", "encoder.pooler.dense.weight"]


# ------------------------------------------------------------------ PLIP's layout, from its code
def _bn(shapes: dict, prefix: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{prefix}.{name}"] = (c,)
    shapes[f"{prefix}.num_batches_tracked"] = ()


def plip_image_layout(layers=(3, 4, 6, 3), width=64, output_dim=768, grid=(8, 4)) -> dict[str, tuple]:
    """Image_encoder_ModifiedResNet: 3-conv stem (width/2, width/2, width), Bottleneck stages of
    planes width * 2^i (expansion 4; the first block of each stage has the avgpool + 1x1 conv + BN
    downsample), AttentionPool2d over width * 32 channels with (1 + h*w) position rows."""
    s: dict[str, tuple] = {}
    s["conv1.weight"] = (width // 2, 3, 3, 3)
    _bn(s, "bn1", width // 2)
    s["conv2.weight"] = (width // 2, width // 2, 3, 3)
    _bn(s, "bn2", width // 2)
    s["conv3.weight"] = (width, width // 2, 3, 3)
    _bn(s, "bn3", width)
    inplanes = width
    for stage, blocks in enumerate(layers):
        planes = width * 2 ** stage
        for b in range(blocks):
            p = f"layer{stage + 1}.{b}"
            s[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            _bn(s, f"{p}.bn1", planes)
            s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(s, f"{p}.bn2", planes)
            s[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            _bn(s, f"{p}.bn3", planes * 4)
            if b == 0:
                s[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                _bn(s, f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    embed = width * 32
    s["attnpool.positional_embedding"] = (1 + grid[0] * grid[1], embed)
    for name in ("k_proj", "q_proj", "v_proj"):
        s[f"attnpool.{name}.weight"], s[f"attnpool.{name}.bias"] = (embed, embed), (embed,)
    s["attnpool.c_proj.weight"], s["attnpool.c_proj.bias"] = (output_dim, embed), (output_dim,)
    return s


def plip_text_layout(hidden=768, layers=12, ffn=3072, vocab=30522, positions=512) -> dict[str, tuple]:
    """Textual_encoder: ``encoder`` = BertModel (embeddings with the position_ids buffer saved by
    transformers of 2023, layers, pooler)."""
    e = "encoder."
    s = {f"{e}embeddings.word_embeddings.weight": (vocab, hidden),
         f"{e}embeddings.position_embeddings.weight": (positions, hidden),
         f"{e}embeddings.token_type_embeddings.weight": (2, hidden),
         f"{e}embeddings.LayerNorm.weight": (hidden,), f"{e}embeddings.LayerNorm.bias": (hidden,),
         f"{e}embeddings.position_ids": (1, positions)}
    for i in range(layers):
        p = f"{e}encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            s[f"{p}{name}.weight"], s[f"{p}{name}.bias"] = (hidden, hidden), (hidden,)
        s[f"{p}intermediate.dense.weight"], s[f"{p}intermediate.dense.bias"] = (ffn, hidden), (ffn,)
        s[f"{p}output.dense.weight"], s[f"{p}output.dense.bias"] = (hidden, ffn), (hidden,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            s[f"{p}{name}.weight"], s[f"{p}{name}.bias"] = (hidden,), (hidden,)
    s[f"{e}pooler.dense.weight"], s[f"{e}pooler.dense.bias"] = (hidden, hidden), (hidden,)
    return s


def plip_checkpoint(image: dict[str, tuple], text: dict[str, tuple], seed: int = 0) -> dict:
    """PLIP's file layout with random values: each float tensor a slice, at its own random offset,
    of one N(0, 1) pool (no two keys alike, so a swapped key shows; one pool keeps the full-size
    file cheap). BatchNorm counters and BERT's position_ids hold what PLIP's would."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [torch.Size(shape).numel() for shape in (*image.values(), *text.values())]
    pool = torch.randn(max(sizes) + len(sizes), generator=gen)
    offsets = torch.randperm(len(sizes), generator=gen).tolist()  # distinct starts
    out, i = {}, 0
    for part, shapes in (("ImgEncoder_state_dict", image), ("TxtEncoder_state_dict", text)):
        out[part] = {}
        for key, shape in shapes.items():
            if key.endswith("num_batches_tracked"):
                out[part][key] = torch.tensor(1234)
            elif key.endswith("position_ids"):
                out[part][key] = torch.arange(shape[1]).unsqueeze(0)
            else:
                n = torch.Size(shape).numel()
                out[part][key] = pool[offsets[i]:offsets[i] + n].view(shape)
            i += 1
    return {"epoch": 30, **out}


def ours(plip_key: str, part: str) -> str:
    """Our name of a PLIP key, by hand: the image encoder under visual.resnet., BERT under text.bert."""
    return "visual.resnet." + plip_key if part == "image" else "text.bert." + plip_key[len("encoder."):]


def test_layout_counts_by_hand():
    # stem 3 convs + 3 BNs x 5 = 18; 16 bottlenecks x 18; 4 downsamples x 6; attention pool 9
    assert len(plip_image_layout()) == 18 + 16 * 18 + 4 * 6 + 9 == 339
    # embeddings 6 (with position_ids), 12 layers x 16, pooler 2
    assert len(plip_text_layout()) == 6 + 12 * 16 + 2 == 200
    assert plip_image_layout()["attnpool.positional_embedding"] == (33, 2048)


# ------------------------------------------------------------------ the full-size model of the config
@pytest.fixture(scope="module")
def plip_model():
    """The config's model at full size, random; inference-only (NUM_CLASSES 0: no classifiers),
    the text encoder a random BERT of bert-base-uncased's sizes (no folder needed)."""
    torch.manual_seed(0)
    return build_model(setup_cfg(CONFIG, NO_WEIGHTS + BERT_BASE + ["MODEL.HEADS.NUM_CLASSES", "0"]))


def test_config_has_plips_settings():
    raw = setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu"])
    assert raw.MODEL.WEIGHTS == "pretrained/PLIP_MRN50.pth.tar"
    assert raw.MODEL.BACKBONE.NAME == "build_modified_resnet_backbone" and raw.MODEL.VISUAL.ARCH == "RN50-PLIP"
    assert tuple(raw.INPUT.SIZE_TRAIN) == tuple(raw.INPUT.SIZE_TEST) == (256, 128)
    # PLIP's Normalize((0.357, 0.323, 0.328), (0.252, 0.242, 0.239)) after ToTensor (x / 255)
    assert raw.MODEL.PIXEL_MEAN == pytest.approx([0.357 * 255, 0.323 * 255, 0.328 * 255])
    assert raw.MODEL.PIXEL_STD == pytest.approx([0.252 * 255, 0.242 * 255, 0.239 * 255])
    assert raw.INPUT.TEXT.MAX_LENGTH == 64 and raw.MODEL.T2I.EMBED_DIM == 768
    t, s = raw.MODEL.T2I, raw.SOLVER
    assert (t.CMPM_WEIGHT, t.CMPC_WEIGHT, t.ID_WEIGHT, t.RANK_WEIGHT, raw.MODEL.PGU.ENABLED) == (1, 1, 0, 0, False)
    assert (s.VISUAL_LR, s.TEXT_LR, s.BASE_LR, s.MAX_EPOCH, list(s.STEPS), s.IMS_PER_BATCH) == (
        1e-4, 1e-4, 1e-3, 30, [20], 128)


def test_full_size_model_shapes_and_one_forward(plip_model):
    model = plip_model.eval()
    visual = model.visual
    assert isinstance(visual, ModifiedResNetBackbone) and visual.out_dim == 768 and visual.grid_size == (8, 4)
    assert visual.resnet.attnpool.num_heads == 8
    own = {k[len("visual.resnet."):]: tuple(v.shape) for k, v in model.state_dict().items()
           if k.startswith("visual.resnet.")}
    assert own == plip_image_layout()  # every key and shape of PLIP's image encoder
    captured = {}
    handle = visual.register_forward_hook(lambda m, i, o: captured.setdefault("tokens", o))
    images = torch.rand(1, 3, 256, 128, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        feat = model({"images": images})
        text = model({"text_ids": torch.tensor([[101, 1037, 2158, 102]]),
                      "text_mask": torch.ones(1, 4, dtype=torch.long)})
    handle.remove()
    tokens = captured["tokens"]
    assert tokens.shape == (1, 1 + 8 * 4, 768)
    assert feat.shape == (1, 768) and text.shape == (1, 768)
    # POOL cls: the image feature is the normalised projection of the attention-pooled token
    torch.testing.assert_close(feat, F.normalize(model.image_proj(tokens[:, 0]), dim=-1))


def test_plip_checkpoint_of_full_size_loads_every_key(plip_model, caplog):
    image, text = plip_image_layout(), plip_text_layout()
    ckpt = plip_checkpoint(image, text)
    with caplog.at_level(logging.INFO):
        report = load_plip_checkpoint(plip_model, ckpt)
    state = plip_model.state_dict()
    expected = {ours(k, "image"): v for k, v in ckpt["ImgEncoder_state_dict"].items()}
    expected.update({ours(k, "text"): v for k, v in ckpt["TxtEncoder_state_dict"].items() if k not in DROPPED})
    # every tensor of both encoders comes from the file, with PLIP's values
    assert set(expected) == {k for k in state if k.startswith(("visual.", "text."))}
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    # the report: all matched, the heads missing, nothing unexpected, 3 dropped
    assert report.loaded == sorted(expected) and report.unexpected == [] and report.dropped == DROPPED
    assert report.missing == sorted(k for k in state if not k.startswith(("visual.", "text.")))
    assert f"loaded {len(expected)} tensors, {len(report.missing)} missing, 0 unexpected" in caplog.text
    assert "dropped 3" in caplog.text


# ------------------------------------------------------------------ tiny models: exact checks
#: tiny forwards at 128x64 (grid 4x2) and 64x32 (grid 2x1): the ResNet's cost is in its pixels
SMALL = ["INPUT.SIZE_TRAIN", "[128, 64]", "INPUT.SIZE_TEST", "[128, 64]"]
SMALLEST = ["INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]"]


def _tiny_cfg(*opts):
    return setup_cfg(CONFIG, NO_WEIGHTS + TINY + ["MODEL.HEADS.NUM_CLASSES", "5", *opts])


def _tiny_checkpoint(grid=(8, 4), output_dim=32, seed=0) -> dict:
    return plip_checkpoint(plip_image_layout(**{**TINY_RN, "output_dim": output_dim}, grid=grid),
                           plip_text_layout(**TINY_BERT), seed)


def test_tokens_are_open_clips_pool_then_the_value_projected_grid():
    torch.manual_seed(0)
    backbone = build_backbone(_tiny_cfg(*SMALL)).eval()
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        tokens = backbone(x)
        pooled = backbone.resnet(x)  # open_clip's ModifiedResNet.forward
        feats = backbone.resnet.forward_intermediates(x, intermediates_only=True)["image_intermediates"][-1]
    assert tokens.shape == (2, 9, 32) and feats.shape == (2, 256, 4, 2)
    torch.testing.assert_close(tokens[:, 0], pooled, rtol=0, atol=0)
    pool = backbone.resnet.attnpool
    grid = feats.permute(0, 2, 3, 1).reshape(2, 8, 256) + pool.positional_embedding[1:]  # row-major 4x2
    v = grid @ pool.v_proj.weight.T + pool.v_proj.bias
    torch.testing.assert_close(tokens[:, 1:], v @ pool.c_proj.weight.T + pool.c_proj.bias)


def test_attention_tokens_match_torch_multihead_attention():
    torch.manual_seed(0)
    backbone = build_backbone(_tiny_cfg(*SMALL, "MODEL.VISUAL.RESNET_TOKENS", "attention")).eval()
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        tokens = backbone(x)
        pooled = backbone.resnet(x)
        feats = backbone.feature_map(x)
    pool = backbone.resnet.attnpool
    mha = nn.MultiheadAttention(256, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([pool.q_proj.weight, pool.k_proj.weight, pool.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]))
        mha.out_proj.weight.copy_(torch.eye(256))
        mha.out_proj.bias.zero_()
        seq = feats.flatten(2).transpose(1, 2)
        seq = torch.cat([seq.mean(1, keepdim=True), seq], 1) + pool.positional_embedding
        expected = pool.c_proj(mha(seq, seq, seq, need_weights=False)[0])
    assert tokens.shape == (2, 9, 32)
    torch.testing.assert_close(tokens, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tokens[:, 0], pooled, rtol=1e-5, atol=1e-6)


def test_visual_weights_plip_file_resizes_the_8x4_grid_to_12x4(tmp_path):
    ckpt = _tiny_checkpoint()
    path = tmp_path / "plip.pth.tar"
    torch.save(ckpt, path)
    backbone = build_backbone(_tiny_cfg("INPUT.SIZE_TRAIN", "[384, 128]", "INPUT.SIZE_TEST", "[384, 128]",
                                        "MODEL.VISUAL.WEIGHTS", str(path)))
    assert backbone.grid_size == (12, 4)
    image = ckpt["ImgEncoder_state_dict"]
    pe_src, pe = image["attnpool.positional_embedding"], backbone.resnet.attnpool.positional_embedding.data
    grid = pe_src[1:].reshape(8, 4, 256).permute(2, 0, 1).unsqueeze(0)
    expected = F.interpolate(grid, size=(12, 4), mode="bilinear", align_corners=True)[0]
    expected = expected.permute(1, 2, 0).reshape(48, 256)
    assert pe.shape == (49, 256) and torch.equal(pe[0], pe_src[0])
    torch.testing.assert_close(pe[1:], expected, rtol=0, atol=1e-6)
    own = backbone.resnet.state_dict()
    assert all(torch.equal(own[k], v) for k, v in image.items() if k != "attnpool.positional_embedding")


def test_visual_weights_clip_resnet_file_and_unipt_checkpoint(tmp_path):
    """An open_clip / OpenAI CLIP ResNet file ("visual." keys, a square 7x7 grid at 224) and a UniPT
    checkpoint ("model" -> "visual.resnet.*") load through MODEL.VISUAL.WEIGHTS."""
    from open_clip.modified_resnet import ModifiedResNet

    torch.manual_seed(0)
    src = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=32, heads=2, image_size=224, width=8)
    torch.save({f"visual.{k}": v for k, v in src.state_dict().items()}, tmp_path / "clip_rn.pt")
    backbone = build_backbone(_tiny_cfg("MODEL.VISUAL.WEIGHTS", str(tmp_path / "clip_rn.pt")))
    pe_src = src.attnpool.positional_embedding.data
    grid = pe_src[1:].reshape(7, 7, 256).permute(2, 0, 1).unsqueeze(0)
    expected = F.interpolate(grid, size=(8, 4), mode="bilinear", align_corners=True)[0]
    expected = expected.permute(1, 2, 0).reshape(32, 256)
    pe = backbone.resnet.attnpool.positional_embedding.data
    assert torch.equal(pe[0], pe_src[0])
    torch.testing.assert_close(pe[1:], expected, rtol=0, atol=1e-6)
    assert torch.equal(backbone.resnet.layer4[0].conv3.weight, src.layer4[0].conv3.weight)

    torch.save({"model": {f"visual.{k}": v for k, v in backbone.state_dict().items()}}, tmp_path / "unipt.pth")
    again = build_backbone(_tiny_cfg("MODEL.VISUAL.WEIGHTS", str(tmp_path / "unipt.pth")))
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in again.state_dict().items())


def test_model_weights_plip_file_loads_through_the_checkpointer(tmp_path, caplog):
    """MODEL.WEIGHTS = PLIP's file: fast-reid's Checkpointer (UniPTCheckpointer) maps it."""
    ckpt = _tiny_checkpoint()
    path = tmp_path / "PLIP_MRN50.pth.tar"
    torch.save(ckpt, path)
    model = build_model(_tiny_cfg())
    with caplog.at_level(logging.INFO):
        UniPTCheckpointer(model).load(str(path))
    state = model.state_dict()
    expected = {ours(k, "image"): v for k, v in ckpt["ImgEncoder_state_dict"].items()}
    expected.update({ours(k, "text"): v for k, v in ckpt["TxtEncoder_state_dict"].items() if k not in DROPPED})
    assert set(expected) == {k for k in state if k.startswith(("visual.", "text."))}
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    assert f"{len(expected)} of its tensors match" in caplog.text and "dropped 3" in caplog.text
    bad = _tiny_checkpoint(output_dim=48)
    torch.save(bad, path)
    with pytest.raises(WeightShapeError, match=r"attnpool\.c_proj\.weight"):  # not fast-reid's silent skip
        UniPTCheckpointer(model).load(str(path))


def test_wrong_shape_is_refused_naming_key_and_shapes():
    model = build_model(_tiny_cfg())
    ckpt = _tiny_checkpoint(output_dim=48)  # a 48-d attention pool, the model's is 32-d
    with pytest.raises(WeightShapeError, match=r"visual\.resnet\.attnpool\.c_proj\.weight.*\(48, 256\).*\(32, 256\)"):
        load_plip_checkpoint(model, ckpt)


def test_unexpected_keys_are_reported(caplog):
    model = build_model(_tiny_cfg())
    ckpt = _tiny_checkpoint()
    ckpt["ImgEncoder_state_dict"]["fc.weight"] = torch.zeros(3, 32)
    ckpt["TxtEncoder_state_dict"]["classifier.weight"] = torch.zeros(3, 128)  # outside PLIP's "encoder."
    with caplog.at_level(logging.INFO):
        report = load_plip_checkpoint(model, ckpt)
    assert report.unexpected == ["TxtEncoder_state_dict.classifier.weight", "visual.resnet.fc.weight"]
    assert "2 unexpected" in caplog.text and "visual.resnet.fc.weight" in caplog.text
    assert len(report.loaded) == len(plip_image_layout(**TINY_RN)) + len(plip_text_layout(**TINY_BERT)) - 3
    # a model with only the image encoder: the text part is reported, the image part loaded
    backbone = build_backbone(_tiny_cfg())
    report = load_plip_checkpoint(backbone, _tiny_checkpoint())
    assert report.loaded == sorted("resnet." + k for k in plip_image_layout(**TINY_RN))
    assert len(report.unexpected) == len(plip_text_layout(**TINY_BERT))
    assert all(k.startswith("TxtEncoder_state_dict.encoder.") for k in report.unexpected)


def test_tiny_training_step_with_cmpm_c():
    """The config's fine-tuning (CMPM + CMPC on the pooled tokens, BatchNorm in training mode) runs
    and reaches every trainable parameter of the ResNet."""
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(*SMALLEST)).train()
    batch = {"images": torch.rand(4, 3, 64, 32) * 255, "targets": torch.tensor([0, 0, 1, 2]),
             "text_ids": torch.randint(1000, 2000, (4, 6)), "text_mask": torch.ones(4, 6, dtype=torch.long)}
    losses = model(batch)
    assert set(losses) == {"loss_cmpm", "loss_cmpc"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.visual.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert int(model.visual.resnet.bn1.num_batches_tracked) == 1


def test_refusals_and_architectures():
    with pytest.raises(ValueError, match="MODEL.VISUAL.DROP_PATH = 0.1"):
        build_backbone(_tiny_cfg("MODEL.VISUAL.DROP_PATH", "0.1"))
    with pytest.raises(ValueError, match="INPUT.SIZE_TRAIN 250x128"):
        build_backbone(_tiny_cfg("INPUT.SIZE_TRAIN", "[250, 128]", "INPUT.SIZE_TEST", "[250, 128]"))
    with pytest.raises(ValueError, match="RESNET_TOKENS"):
        build_backbone(_tiny_cfg("MODEL.VISUAL.RESNET_TOKENS", "mean"))
    with pytest.raises(ValueError, match="'ViT-B-16' is not a ModifiedResNet"):
        modified_resnet_spec("ViT-B-16")
    # OpenAI's RN50: 32 heads (width 64 * 32 / 64), 1024-d embedding; PLIP's: 8 heads, 768-d
    rn50 = modified_resnet_spec("RN50")
    assert (rn50.layers, rn50.width, rn50.heads, rn50.output_dim) == ((3, 4, 6, 3), 64, 32, 1024)
    plip = modified_resnet_spec("RN50-PLIP")
    assert (plip.layers, plip.width, plip.heads, plip.output_dim) == ((3, 4, 6, 3), 64, 8, 768)
