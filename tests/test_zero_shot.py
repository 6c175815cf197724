"""Zero-shot text-to-image evaluation of a pre-training checkpoint (no fine-tuning).

A tiny UniPTPretrain is pre-trained for 2 iterations on a LUPerson-T fixture with a CUHK-PEDES
test split named in DATASETS.TESTS (so it is also evaluated at the end of pre-training, which
TEST.EVAL_PERIOD 0 of the pre-training configs used to crash), then evaluated with
``tools/train_net.py --config-file configs/Tiny/pretrain.yml --eval-only``. The reference is
computed here: the checkpoint loaded into a freshly built model in eval mode, the test images
read and resized with PIL and the captions tokenized all in one batch each, scored by the inner
product in float64 and ranked by the brute-force reference of tests/test_retrieval_metrics.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from raw_fixtures import make_cuhk_pedes, make_luperson_t
from test_retrieval_metrics import brute_force_scores

import unipt_plugin  # noqa: F401
from fastreid.modeling import build_model
from unipt_plugin.data.tokenizer import build_tokenizer
from unipt_plugin.engine import setup_cfg
from unipt_plugin.evaluation import read_eval_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
CONFIG = "configs/Tiny/pretrain.yml"
TESTS = ["DATASETS.TESTS", '("CUHKPEDES",)']
METRICS = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP")


def _load_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, TRAIN_NET, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    if check:
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero_shot")
    data = str(tmp / "data")
    # Test split: 8 ids, 16 images, 32 captions (Rank-10 does not cover the gallery).
    cuhk = make_cuhk_pedes(data, num_ids=8, images_per_id=2)
    make_luperson_t(data, num_images=16)  # 16 pairs at batch 8: 2 iterations
    pre, zs = str(tmp / "pre"), str(tmp / "zero_shot")
    pre_log = _run("--config-file", CONFIG, "DATASETS.ROOT", data, "SOLVER.MAX_EPOCH", "1", *TESTS,
                   "OUTPUT_DIR", pre)
    zs_log = _run("--config-file", CONFIG, "--eval-only", "DATASETS.ROOT", data, *TESTS, "OUTPUT_DIR", zs,
                  "MODEL.WEIGHTS", os.path.join(pre, "model_final.pth"))
    return {"data": data, "cuhk": cuhk, "pre": pre, "zs": zs, "pre_log": pre_log.stdout + pre_log.stderr,
            "zs_log": zs_log.stdout + zs_log.stderr}


def _reference(runs) -> dict[str, float]:
    """Metrics from the checkpoint's features, computed directly (no loader, no evaluator)."""
    cfg = setup_cfg(CONFIG, ["DATASETS.ROOT", runs["data"]])
    model = build_model(cfg)
    state = torch.load(os.path.join(runs["pre"], "model_final.pth"), map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(state)  # strict: every tensor of the pre-training model
    model.eval()
    test = [r for r in runs["cuhk"]["records"] if r["split"] == "test"]
    h, w = cfg.INPUT.SIZE_TEST
    assert cfg.INPUT.INTERPOLATION == "bicubic"
    images = torch.stack([torch.from_numpy(np.array(Image.open(r["path"]).convert("RGB").resize((w, h), Image.BICUBIC)))
                          .permute(2, 0, 1) for r in test])  # (16, 3, 64, 32) uint8
    captions = [(c, r["pid"]) for r in test for c in r["captions"]]
    tokens = build_tokenizer(cfg)([c for c, _ in captions])
    with torch.no_grad():
        image_feats = model({"images": images})
        text_feats = model({"text_ids": tokens["input_ids"], "text_mask": tokens["attention_mask"]})
    embed = cfg.MODEL.PRETRAIN.EMBED_DIM
    assert image_feats.shape == (16, embed) and text_feats.shape == (32, embed)
    for feats in (image_feats, text_feats):  # pooled and L2-normalised
        assert torch.allclose(feats.norm(dim=1), torch.ones(len(feats)), atol=1e-5)
    scores = text_feats.double() @ image_feats.double().T
    return brute_force_scores(scores, torch.tensor([p for _, p in captions]), torch.tensor([r["pid"] for r in test]),
                              topk=(1, 5, 10))


def test_zero_shot_metrics_equal_a_brute_force_ranking_of_the_model_features(runs):
    assert "UniPTPretrain" in runs["zs_log"]
    results = _load_json(os.path.join(runs["zs"], "eval_results.json"))
    assert list(results) == ["CUHKPEDES"]
    got = results["CUHKPEDES"]
    expected = _reference(runs)
    for key in METRICS:
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key
    assert got["metric"] == pytest.approx((expected["mAP"] + expected["Rank-1"]) / 2, abs=1e-9)


def test_pretraining_with_a_test_set_evaluates_zero_shot_at_its_end(runs):
    # TEST.EVAL_PERIOD 0 (the pre-training configs) with DATASETS.TESTS: one evaluation, at the end.
    assert runs["pre_log"].count("Evaluation results for CUHKPEDES in csv format") == 1
    assert os.path.exists(os.path.join(runs["pre"], "model_final.pth"))
    assert read_eval_results(runs["pre"]) == read_eval_results(runs["zs"])


def test_eval_only_without_test_sets_is_refused(runs, tmp_path):
    out = str(tmp_path / "none")
    p = _run("--config-file", CONFIG, "--eval-only", "DATASETS.ROOT", runs["data"], "OUTPUT_DIR", out,
             "MODEL.WEIGHTS", os.path.join(runs["pre"], "model_final.pth"), check=False)
    assert p.returncode == 2, (p.stdout + p.stderr)[-3000:]
    assert "ConfigError: --eval-only with DATASETS.TESTS empty" in p.stderr
    assert "DATASETS.TESTS '(\"CUHKPEDES\",)'" in p.stderr
    assert not os.path.exists(out)
