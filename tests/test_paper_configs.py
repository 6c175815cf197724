"""The paper configs load and build their models at full size, without any weight file.

Every config under configs/{LUPerson-T,CUHK-PEDES,ICFG-PEDES,RSTPReid}/ is read through
``setup_cfg``; weight paths are blanked and the text encoder is a randomly initialised
``SmallBertTextEncoder`` at bert-base-uncased sizes (768 wide, 12 layers, 12 heads, 3072 FFN), so
the architecture equals BERT base. Each distinct architecture is built once (module fixtures);
configs of the same kind must have identical MODEL sections apart from weight paths, so the one
build covers them. Expected parameter counts are computed by hand from the published layer
sizes (ViT-B/16: 86M, BERT base: 110M incl. its pooler, DeiT-S: 22M).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import unipt_plugin  # noqa: F401  (fast-reid compat first)
from fastreid.modeling import build_model

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.engine import setup_cfg

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRETRAIN_DIRS = ("LUPerson-T",)
T2I_DIRS = ("CUHK-PEDES", "ICFG-PEDES", "RSTPReid")
BACKBONES = {"vit_base": 768, "deit_small": 384}
CUHK_TRAIN_IDS = 11003
BERT_BASE = ["MODEL.TEXT.NAME", "SmallBertTextEncoder", "MODEL.TEXT.HIDDEN_SIZE", "768",
             "MODEL.TEXT.NUM_LAYERS", "12", "MODEL.TEXT.NUM_HEADS", "12", "MODEL.TEXT.INTERMEDIATE_SIZE", "3072"]
NO_WEIGHTS = ["MODEL.VISUAL.WEIGHTS", "", "MODEL.TEXT.WEIGHTS", "", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]


def _cfg(folder: str, backbone: str):
    return setup_cfg(str(CONFIGS / folder / f"{backbone}.yml"),
                     NO_WEIGHTS + BERT_BASE + ["MODEL.HEADS.NUM_CLASSES", str(CUHK_TRAIN_IDS)])


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _transformer_layer_params(width: int, ffn: int) -> int:
    """One pre/post-norm transformer layer: QKV + output projection + 2 LayerNorms + 2-layer FFN."""
    return 3 * (width * width + width) + (width * width + width) + 2 * 2 * width + (width * ffn + ffn) + (ffn * width + width)


def _vit_params(width: int, depth: int, ffn: int, num_tokens: int, patch: int = 16) -> int:
    """timm ViT without classification head: patch conv, cls token, position embedding, blocks, final norm."""
    return (3 * patch * patch * width + width) + width + num_tokens * width + depth * _transformer_layer_params(width, ffn) + 2 * width


def _bert_params(width: int = 768, layers: int = 12, ffn: int = 3072, vocab: int = 30522, positions: int = 512) -> int:
    """BertModel without pooler: word + position + token-type embeddings and their LayerNorm, layers."""
    return (vocab + positions + 2) * width + 2 * width + layers * _transformer_layer_params(width, ffn)


def _all_configs():
    return [(d, b) for d in PRETRAIN_DIRS + T2I_DIRS for b in BACKBONES]


@pytest.mark.parametrize("folder,backbone", _all_configs())
def test_every_paper_config_loads_with_paper_settings(folder: str, backbone: str) -> None:
    cfg = _cfg(folder, backbone)
    s = cfg.SOLVER
    assert tuple(cfg.INPUT.SIZE_TRAIN) == (384, 128) and tuple(cfg.INPUT.SIZE_TEST) == (384, 128)
    assert cfg.INPUT.TEXT.MAX_LENGTH == 100
    assert cfg.MODEL.BACKBONE.NAME == "build_timm_vit_backbone"
    assert cfg.MODEL.VISUAL.ARCH == {"vit_base": "vit_base_patch16_384", "deit_small": "deit_small_patch16_224"}[backbone]
    assert cfg.MODEL.VISUAL.STRIDE == 16
    # The configs name BERT base; the overrides above replace only the builder, not the sizes' source.
    raw = get_unipt_cfg()
    raw.merge_from_file(str(CONFIGS / folder / f"{backbone}.yml"))  # as written: before the device checks
    assert raw.MODEL.DEVICE == "cuda" and raw.SOLVER.AMP.ENABLED
    assert raw.MODEL.TEXT.NAME == "BertTextEncoder" and raw.MODEL.TEXT.WEIGHTS.endswith("bert-base-uncased")
    if folder in PRETRAIN_DIRS:
        assert cfg.MODEL.META_ARCHITECTURE == "UniPTPretrain"
        assert s.OPT == "AdamW" and tuple(s.BETAS) == (0.9, 0.98) and s.EPS == 1e-8
        assert s.SCHED == "WarmupLinearLR" and s.WARMUP_RATIO == pytest.approx(0.1)
        assert s.IMS_PER_BATCH == 512 and s.MAX_EPOCH == 15
        assert cfg.MODEL.PRETRAIN.EMBED_DIM == 768 and cfg.MODEL.PRETRAIN.TEMPERATURE == 1.0
        assert cfg.MODEL.PRETRAIN.MLM_PROB == pytest.approx(0.15) and cfg.MODEL.PRETRAIN.MLM_WEIGHT == 1.0
        # the authors' ViT regularisation and projection init (tests/test_authors_settings.py)
        assert (cfg.MODEL.VISUAL.DROPOUT, cfg.MODEL.VISUAL.DROP_PATH) == (0.1, 0.0)
        assert cfg.MODEL.PRETRAIN.PROJ_INIT == "normal"
        assert cfg.DATASETS.NAMES == ("LUPersonT",)
    else:
        assert cfg.MODEL.META_ARCHITECTURE == "UniPTT2I"
        assert s.OPT == "Adam"
        # Paper: visual encoder, PGU and heads 1e-4; pre-trained text encoder 1e-5.
        assert (s.BASE_LR, s.VISUAL_LR, s.TEXT_LR) == (1e-4, 1e-4, 1e-5)
        assert s.IMS_PER_BATCH == 64 and s.MAX_EPOCH == 60
        assert cfg.MODEL.T2I.RANK_MARGIN == pytest.approx(0.2)
        assert cfg.MODEL.T2I.EMBED_DIM == 512
        assert (cfg.MODEL.PGU.NUM_PROTOTYPES, cfg.MODEL.PGU.NUM_LAYERS, cfg.MODEL.PGU.PART_DIM) == (6, 2, 512)
        # LGUR's PGU and part learning rate (tests/test_authors_settings.py)
        p = cfg.MODEL.PGU
        assert (p.NUM_HEADS, p.HEAD_DIM, p.QKV_BIAS, p.FFN_DIM, p.DROPOUT) == (6, 512, False, 512, 0.0)
        assert (p.IMAGE_TOKENS, p.PART_INIT, s.PART_LR) == ("patches", "kaiming_normal", 1e-3)
        name = {"CUHK-PEDES": "CUHKPEDES", "ICFG-PEDES": "ICFGPEDES", "RSTPReid": "RSTPReid"}[folder]
        assert cfg.DATASETS.NAMES == (name,) and cfg.DATASETS.TESTS == (name,)
        # Fine-tuning starts from the matching pre-training checkpoint.
        assert raw.MODEL.WEIGHTS == f"logs/LUPerson-T/{backbone}/model_final.pth"


def _model_section(cfg) -> dict:
    """cfg.MODEL without the weight paths, as plain data."""
    m = cfg.MODEL.clone()
    m.defrost()
    m.WEIGHTS, m.VISUAL.WEIGHTS, m.TEXT.WEIGHTS = "", "", ""
    return m.dump()


@pytest.mark.parametrize("folder", T2I_DIRS[1:])
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_t2i_configs_share_one_architecture(folder: str, backbone: str) -> None:
    """ICFG-PEDES and RSTPReid build the same model as CUHK-PEDES (only the data differ), so the
    CUHK-PEDES builds below cover them."""
    assert _model_section(_cfg(folder, backbone)) == _model_section(_cfg("CUHK-PEDES", backbone))


def _build(folder: str, backbone: str):
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_model(_cfg(folder, backbone))
    return model, time.perf_counter() - start


@pytest.fixture(scope="module")
def t2i_vit_base():
    return _build("CUHK-PEDES", "vit_base")[0]


@pytest.fixture  # function scope: freed after its one test
def t2i_deit_small():
    return _build("CUHK-PEDES", "deit_small")[0]


@pytest.fixture  # function scope: freed after its one test
def pretrain_vit_base():
    return _build("LUPerson-T", "vit_base")[0]


@pytest.fixture  # function scope: freed after its one test
def pretrain_deit_small():
    return _build("LUPerson-T", "deit_small")[0]


def _check_visual(model, backbone: str) -> None:
    width = BACKBONES[backbone]
    assert model.visual.out_dim == width
    assert tuple(model.visual.grid_size) == (24, 8)
    assert tuple(model.visual.vit.pos_embed.shape) == (1, 1 + 24 * 8, width)
    depth, ffn = 12, 4 * width
    assert len(model.visual.vit.blocks) == depth
    assert _count(model.visual) == _vit_params(width, depth, ffn, 1 + 24 * 8)


def _check_text(model) -> None:
    assert model.text.out_dim == 768 and model.text.vocab_size == 30522
    n = _count(model.text)
    assert n == _bert_params()
    # BERT base is quoted as 110M (109.5M with its pooler, which the encoder leaves out).
    assert abs(n - 110e6) / 110e6 < 0.02


@pytest.mark.parametrize("name,backbone", [("t2i_vit_base", "vit_base"), ("t2i_deit_small", "deit_small")])
def test_t2i_model_shapes(request, name: str, backbone: str) -> None:
    model = request.getfixturevalue(name)
    width = BACKBONES[backbone]
    _check_visual(model, backbone)
    _check_text(model)
    assert tuple(model.image_proj.weight.shape) == (512, width)
    assert tuple(model.text_proj.weight.shape) == (512, 768)
    assert tuple(model.classifier.weight.shape) == (CUHK_TRAIN_IDS, 512)
    pgu = model.pgu
    assert pgu.num_prototypes == 6 and pgu.part_dim == 512 and pgu.out_dim == 3072
    assert tuple(pgu.prototypes.shape) == (6, 384) and len(pgu.layers) == 2
    assert tuple(pgu.part_proj.shape) == (6, 512, 384)
    assert tuple(pgu.input_proj["image"].weight.shape) == (384, width)
    assert tuple(pgu.input_proj["text"].weight.shape) == (384, 768)
    attn = pgu.layers[0].attn  # 6 heads x 512, bias-free q/k/v (LGUR)
    assert tuple(attn.q_proj.weight.shape) == (3072, 384) and attn.q_proj.bias is None
    assert tuple(pgu.layers[0].ffn[0].weight.shape) == (512, 384) and pgu.image_tokens == "patches"
    if backbone == "vit_base":
        assert abs(_count(model.visual) - 86e6) / 86e6 < 0.02  # ViT-B/16: 86M


def test_t2i_vit_base_batch1_forward(t2i_vit_base) -> None:
    """One 384x128 image through the full-size model gives the 512 + 6 x 512 feature, each part
    L2-normalised (the retrieval score is their inner product)."""
    model = t2i_vit_base.eval()
    with torch.no_grad():
        feat = model({"images": torch.rand(1, 3, 384, 128) * 255})
    assert feat.shape == (1, 512 + 3072)
    torch.testing.assert_close(feat[:, :512].norm(dim=1), torch.ones(1))
    torch.testing.assert_close(feat[:, 512:].norm(dim=1), torch.ones(1))


@pytest.mark.parametrize("name,backbone", [("pretrain_vit_base", "vit_base"), ("pretrain_deit_small", "deit_small")])
def test_pretrain_model_shapes(request, name: str, backbone: str) -> None:
    model = request.getfixturevalue(name)
    width = BACKBONES[backbone]
    _check_visual(model, backbone)
    _check_text(model)
    assert tuple(model.image_proj.weight.shape) == (768, width)
    assert tuple(model.text_proj.weight.shape) == (768, 768)
    assert model.log_logit_scale is None and model.fixed_logit_scale == 1.0
    assert model.mlm_head is not None
    assert tuple(model.mlm_head.decoder.weight.shape) == (30522, 768)
