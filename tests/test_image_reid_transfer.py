"""Image ReID through fast-reid itself: the synthetic world in Market-1501's layout read by fast-reid's
own ``Market1501``, a UniPT pre-training checkpoint's visual encoder as fast-reid's backbone, fast-reid's
``Baseline`` trained for 2 iterations by the plugin's trainer (tools/train_net.py's ``main``) and
evaluated by fast-reid's ``ReidEvaluator``; the evaluator against a hand computation; the config checks.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
import torch
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.modeling import build_model

from unipt_plugin.config import get_unipt_cfg
from unipt_plugin.engine import ConfigError, setup_cfg
from unipt_plugin.engine.launch import default_argument_parser
from unipt_plugin.evaluation import ImageReIDEvaluator
from unipt_plugin.modeling.backbones import TransferBackbone
from unipt_plugin.modeling.weight_loading import WeightShapeError
from unipt_plugin.solver.build import param_group_specs
from unipt_plugin.synthetic import write_market1501
from unipt_plugin.synthetic.market1501 import MARKET_FOLDER, market_file_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKET_CFG = os.path.join(ROOT, "configs", "Market1501", "synthetic.yml")
PAPER_CFG = os.path.join(ROOT, "configs", "Market1501", "unipt_vit_base.yml")
PRETRAIN_CFG = os.path.join(ROOT, "configs", "Synthetic", "pretrain.yml")
TINY_T2I = os.path.join(ROOT, "configs", "Tiny", "t2i.yml")
WORLD = dict(num_train_ids=4, num_test_ids=3, images_per_id=4, num_cameras=4, num_distractors=2, size=(64, 32))


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("market"))
    return root, write_market1501(root, seed=3, show_progress=False, **WORLD)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A UniPT pre-training checkpoint of the demo's encoder (configs/Synthetic/pretrain.yml), random weights."""
    cfg = setup_cfg(PRETRAIN_CFG, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = str(tmp_path_factory.mktemp("pre") / "model_final.pth")
    torch.save({"model": model.state_dict(), "iteration": 9}, path)
    return path, model


def _market_cfg(root: str, *opts: str):
    return setup_cfg(MARKET_CFG, ["DATASETS.ROOT", root, *opts], freeze=False)


# ----------------------------------------------------------------------------- the Market-1501 layout

def test_the_written_layout_is_read_by_fastreids_own_market1501(market):
    root, counts = market
    assert market_file_name(1, 1, 151) == "0001_c1s1_000151_01.jpg"
    data = DATASET_REGISTRY.get("Market1501")(root=root)
    assert len(data.train) == counts["train_images"] == WORLD["num_train_ids"] * WORLD["images_per_id"]
    assert len(data.query) == counts["query_images"] == WORLD["num_test_ids"]
    assert len(data.gallery) == counts["gallery_images"] == WORLD["num_test_ids"] * 3 + WORLD["num_distractors"]
    assert data.get_num_pids(data.train) == WORLD["num_train_ids"]
    # every identity's views come from distinct cameras; each query has its person in the gallery
    # from another camera (what Market-1501's evaluation counts)
    for pid in {p for _, p, _ in data.query}:
        q_cam = [c for _, p, c in data.query if p == pid]
        g_cams = [c for _, p, c in data.gallery if p == pid]
        assert len(set(q_cam + g_cams)) == WORLD["images_per_id"] and q_cam[0] not in g_cams
    assert sum(p == 0 for _, p, _ in data.gallery) == WORLD["num_distractors"]  # Market's distractor id
    with open(os.path.join(root, MARKET_FOLDER, "attributes.json")) as f:
        assert len(json.load(f)) == len(data.train) + len(data.query) + len(data.gallery)


def test_the_writer_is_deterministic_and_resumes(market, tmp_path):
    root, counts = market
    again = write_market1501(root, seed=3, show_progress=False, **WORLD)
    assert again["rendered"] == 0 and {k: v for k, v in again.items() if k != "rendered"} == \
        {k: v for k, v in counts.items() if k != "rendered"}
    other = write_market1501(str(tmp_path), seed=3, show_progress=False, **WORLD)
    name = sorted(os.listdir(os.path.join(root, MARKET_FOLDER, "query")))[0]
    read = lambda r: open(os.path.join(r, MARKET_FOLDER, "query", name), "rb").read()  # noqa: E731
    assert other["rendered"] == sum(counts[k] for k in ("train_images", "query_images", "gallery_images"))
    assert read(root) == read(str(tmp_path))
    with pytest.raises(ValueError, match="num_cameras"):
        write_market1501(str(tmp_path), num_cameras=7, show_progress=False)
    with pytest.raises(ValueError, match="images_per_id"):
        write_market1501(str(tmp_path), images_per_id=5, num_cameras=4, show_progress=False)


# ----------------------------------------------------------------------------- the transfer backbone

def _backbone(pre_path: str, *opts: str) -> TransferBackbone:
    cfg = setup_cfg(MARKET_CFG, ["MODEL.TRANSFER.WEIGHTS", pre_path, *opts])
    from unipt_plugin.modeling.backbones.fastreid_transfer import build_unipt_transfer_backbone
    return build_unipt_transfer_backbone(cfg).eval()


def test_the_backbone_loads_the_checkpoints_visual_encoder(pretrained):
    path, pre = pretrained
    bb = _backbone(path)
    own = bb.encoder.state_dict()
    visual = {k: v for k, v in pre.state_dict().items() if k.startswith("visual.")}
    assert len(own) == len(visual)
    for key, value in visual.items():
        assert torch.equal(own[key[len("visual."):]], value), key
    assert bb.load_report is not None and not bb.load_report.missing


def test_the_feature_shapes_and_values(pretrained):
    path, pre = pretrained
    images = torch.rand(2, 3, 64, 32) * 2 - 1
    with torch.no_grad():
        tokens = pre.visual(images)  # (B, 1 + N, C) of the checkpoint's own encoder
        cls_ = _backbone(path)(images)
        max_ = _backbone(path, "MODEL.TRANSFER.FEATURE", "max")(images)
        grid = _backbone(path, "MODEL.TRANSFER.FEATURE", "grid", "MODEL.HEADS.POOL_LAYER", "GlobalAvgPool")(images)
    assert cls_.shape == (2, 128, 1, 1) and max_.shape == (2, 128, 1, 1) and grid.shape == (2, 128, 8, 4)
    torch.testing.assert_close(cls_[:, :, 0, 0], tokens[:, 0])
    torch.testing.assert_close(max_[:, :, 0, 0], tokens.max(dim=1).values)
    for b, c, i, j in ((0, 5, 0, 0), (1, 100, 3, 2), (1, 7, 7, 3)):  # row-major patch grid, 4 columns
        assert grid[b, c, i, j] == tokens[b, 1 + i * 4 + j, c]


def test_projection_and_max_give_the_pretrained_image_embedding(pretrained):
    path, pre = pretrained
    images = torch.rand(3, 3, 64, 32) * 2 - 1
    bb = _backbone(path, "MODEL.TRANSFER.FEATURE", "max", "MODEL.TRANSFER.PROJECTION_DIM", "128")
    with torch.no_grad():
        feat = bb(images)[:, :, 0, 0]
        expected = pre.encode_image(images * 127.5 + 127.5)  # UniPTPretrain normalises 0-255 images itself
    torch.testing.assert_close(torch.nn.functional.normalize(feat, dim=-1), expected, rtol=1e-5, atol=1e-5)


def test_the_backbones_settings_are_checked(pretrained, tmp_path):
    path, _ = pretrained
    with pytest.raises(ValueError, match="MODEL.BACKBONE.FEAT_DIM 128"):
        _backbone(path, "MODEL.BACKBONE.FEAT_DIM", "768")
    with pytest.raises(ValueError, match="MODEL.TRANSFER.WEIGHTS is empty"):
        _backbone("", "MODEL.TRANSFER.PROJECTION_DIM", "128")
    with pytest.raises(WeightShapeError, match="image_proj|weight"):
        _backbone(path, "MODEL.TRANSFER.PROJECTION_DIM", "64", "MODEL.BACKBONE.FEAT_DIM", "64")
    with pytest.raises(ValueError, match="would both load the encoder"):
        _backbone(path, "MODEL.VISUAL.WEIGHTS", path)
    with pytest.raises(ValueError, match="MODEL.TRANSFER.FEATURE"):
        _backbone(path, "MODEL.TRANSFER.FEATURE", "mean")
    with pytest.raises(KeyError, match="MODEL.TRANSFER.ENCODER"):
        _backbone(path, "MODEL.TRANSFER.ENCODER", "build_nothing")


# ----------------------------------------------------------------------------- config keys per kind of run

def test_each_kind_of_run_reads_its_own_keys(market):
    root, _ = market
    # fast-reid's head / loss / evaluation keys are Baseline's, honoured with their meaning
    cfg = _market_cfg(root, "MODEL.HEADS.NECK_FEAT", "after", "MODEL.LOSSES.NAME", '("CrossEntropyLoss",)',
                      "TEST.METRIC", "euclidean", "MODEL.LOSSES.CE.EPSILON", "0.1")
    assert cfg.MODEL.HEADS.NECK_FEAT == "after" and cfg.TEST.METRIC == "euclidean"
    with pytest.raises(ConfigError, match="MODEL.T2I.EMBED_DIM.*text-image key"):
        _market_cfg(root, "MODEL.T2I.EMBED_DIM", "64")
    with pytest.raises(ConfigError, match="DATASETS.SYNTH_PEDES.PROMPT_CAPTIONS"):
        _market_cfg(root, "DATASETS.SYNTH_PEDES.PROMPT_CAPTIONS", "True")
    with pytest.raises(ConfigError, match="would leave out \\['FocalLoss'\\]"):
        _market_cfg(root, "MODEL.LOSSES.NAME", '("CrossEntropyLoss", "FocalLoss")')
    with pytest.raises(ConfigError, match="MODEL.LOSSES.FL.ALPHA"):  # a fast-reid key Baseline does not read
        _market_cfg(root, "MODEL.LOSSES.FL.ALPHA", "0.5")
    with pytest.raises(ConfigError, match="MODEL.TRANSFER.ENCODER build_timm_vit_backbone"):
        _market_cfg(root, "MODEL.BACKBONE.NAME", "build_timm_vit_backbone")
    with pytest.raises(ConfigError, match="MODEL.TRANSFER.FEATURE.*build_resnet_backbone"):
        _market_cfg(root, "MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.TRANSFER.FEATURE", "max")
    # ... and in a text-image run the transfer keys and fast-reid's head keys stay refused
    with pytest.raises(ConfigError, match="MODEL.TRANSFER.FEATURE"):
        setup_cfg(TINY_T2I, ["MODEL.TRANSFER.FEATURE", "max"])
    with pytest.raises(ConfigError, match="build_unipt_transfer_backbone"):
        setup_cfg(TINY_T2I, ["MODEL.BACKBONE.NAME", "build_unipt_transfer_backbone"])
    with pytest.raises(ConfigError, match="MODEL.HEADS.NECK_FEAT"):
        setup_cfg(TINY_T2I, ["MODEL.HEADS.NECK_FEAT", "after"])


def test_the_paper_config_loads():
    cfg = setup_cfg(PAPER_CFG, ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.META_ARCHITECTURE == "Baseline" and cfg.MODEL.BACKBONE.NAME == "build_unipt_transfer_backbone"
    assert cfg.MODEL.BACKBONE.FEAT_DIM == 768 and tuple(cfg.INPUT.SIZE_TRAIN) == (256, 128)
    assert cfg.MODEL.TRANSFER.WEIGHTS.endswith("LUPerson-T/vit_base/model_final.pth")


def test_the_encoder_is_the_visual_part_of_the_optimiser(market):
    root, _ = market
    cfg = _market_cfg(root, "MODEL.TRANSFER.WEIGHTS", "", "MODEL.HEADS.NUM_CLASSES", "4",
                      "SOLVER.BASE_LR", "0.01", "SOLVER.VISUAL_LR", "0.002", "SOLVER.HEADS_LR_FACTOR", "3.0")
    model = build_model(cfg)
    groups = {g["name"]: g for g in param_group_specs(cfg, model)}
    names = {id(p): n for n, p in model.named_parameters()}
    visual = [names[id(p)] for g in groups.values() if g["name"].startswith("visual") for p in g["params"]]
    head = [names[id(p)] for g in groups.values() if g["name"].startswith("head") for p in g["params"]]
    assert visual and all(n.startswith("backbone.") for n in visual)
    assert head and all(n.startswith("heads.") for n in head)
    assert len(visual) + len(head) == sum(p.requires_grad for p in model.parameters())
    assert groups["visual"]["lr"] == pytest.approx(0.002) and groups["head"]["lr"] == pytest.approx(0.03)


# ----------------------------------------------------------------------------- fast-reid's evaluator

def test_reid_evaluator_against_a_hand_computation():
    cfg = get_unipt_cfg()
    ev = ImageReIDEvaluator(cfg, num_query=2)
    v = lambda *x: torch.nn.functional.normalize(torch.tensor([x], dtype=torch.float32), dim=1)  # noqa: E731
    # query 1 (pid 1, camera 0) ranks g1 (pid 2), g2 (pid 1, cam 1), g3 (pid 1, cam 0: left out), g4 (pid 1, cam 2);
    # query 2 (pid 2, camera 0) ranks g1 first
    # then 50 distractors (pid 99) below every other gallery image for both queries (fast-reid's
    # Python ranking needs galleries of >= 50 when it leaves some images out: its CMC rows must
    # have equal lengths)
    feats = torch.cat([v(1, 0, 0), v(0, 1, 0), v(1, 1, 0), v(0.6, 0, 0.8), v(0.5, 0, 0.866), v(0.4, 0, 0.9165)]
                      + [v(-1, -1, -1 - k / 100) for k in range(50)])
    pids = torch.tensor([1, 2, 2, 1, 1, 1] + [99] * 50)
    cams = torch.tensor([0, 0, 1, 1, 0, 2] + [5] * 50)
    ev.process({"targets": pids[:3], "camids": cams[:3]}, feats[:3])
    ev.process({"targets": pids[3:], "camids": cams[3:]}, feats[3:])
    r = ev.evaluate()
    # by hand: query 1 keeps [neg, pos, pos] -> AP (1/2 + 2/3) / 2, INP 2/3, first hit at rank 2; query 2: AP 1
    ap1 = (1 / 2 + 2 / 3) / 2
    assert r["Rank-1"] == pytest.approx(50.0) and r["Rank-5"] == pytest.approx(100.0)
    assert r["mAP"] == pytest.approx((ap1 + 1) / 2 * 100)
    assert r["mINP"] == pytest.approx((2 / 3 + 1) / 2 * 100)
    assert r["metric"] == pytest.approx((r["mAP"] + r["Rank-1"]) / 2)
    assert all(type(x) is float for x in r.values())  # JSON-serialisable


# ----------------------------------------------------------------------------- 2 iterations through the engine

def _train_net():
    spec = importlib.util.spec_from_file_location("unipt_train_net", os.path.join(ROOT, "tools", "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baseline_trains_two_iterations_and_reports_cmc_and_map(market, pretrained, tmp_path):
    root, counts = market
    pre_path, pre = pretrained
    out = str(tmp_path / "run")
    # 16 training images, batches of 8 (2 identities x 4 views): one epoch = 2 iterations
    args = default_argument_parser().parse_args([
        "--config-file", MARKET_CFG, "DATASETS.ROOT", root, "MODEL.TRANSFER.WEIGHTS", pre_path,
        "SOLVER.MAX_EPOCH", "1", "SOLVER.IMS_PER_BATCH", "8", "TEST.EVAL_PERIOD", "1", "OUTPUT_DIR", out])
    train_net = _train_net()
    results = train_net.main(args)
    assert set(results) >= {"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"}
    assert all(0.0 <= results[k] <= 100.0 for k in ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"))
    assert results["Rank-1"] <= results["Rank-5"] <= results["Rank-10"]
    # 3 queries: Rank-1 is a multiple of 100/3; with 11 gallery images Rank-10 misses at most 1 of 3 matches
    assert math.isclose(results["Rank-1"] * 3 / 100, round(results["Rank-1"] * 3 / 100), abs_tol=1e-6)
    with open(os.path.join(out, "eval_results.json")) as f:
        assert json.load(f)["Market1501"] == pytest.approx(results)
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    steps = {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert steps == {2}  # two optimiser steps
    model = ckpt["model"]
    assert model["heads.weight"].shape == (WORLD["num_train_ids"], 128)  # classes from the training set
    # the encoder started from the checkpoint and moved a little (two Adam steps at 3e-4)
    start = pre.state_dict()["visual.vit.patch_embed.proj.weight"]
    end = model["backbone.encoder.vit.patch_embed.proj.weight"]
    assert not torch.equal(start, end) and (start - end).abs().max() < 1e-2
    # --eval-only of the final checkpoint reproduces the final evaluation (no encoder file is read)
    args = default_argument_parser().parse_args([
        "--config-file", MARKET_CFG, "--eval-only", "DATASETS.ROOT", root, "MODEL.TRANSFER.WEIGHTS",
        str(tmp_path / "absent.pth"), "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval")])
    assert train_net.main(args) == pytest.approx(results)
