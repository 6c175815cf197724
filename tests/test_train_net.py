"""End to end through the real entry point: tools/train_net.py pre-trains, fine-tunes from the
pre-training checkpoint, evaluates, and evaluates again with --eval-only."""
import os
import re
import subprocess
import sys

import pytest
import torch

from raw_fixtures import make_cuhk_pedes, make_luperson_t

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, TRAIN_NET, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    return log


def _metrics(log: str) -> dict:
    """The last fast-reid csv table printed for CUHKPEDES."""
    header = re.findall(r"\| Dataset\s*\|(.*)\|\n", log)[-1]
    row = re.findall(r"\| CUHKPEDES\s*\|(.*)\|\n", log)[-1]
    names = [h.strip() for h in header.split("|")]
    return dict(zip(names, (float(v) for v in row.split("|"))))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    data = str(tmp / "data")
    make_cuhk_pedes(data, num_ids=4, images_per_id=2)
    make_luperson_t(data, num_images=16)
    common = ["DATASETS.ROOT", data, "SOLVER.MAX_EPOCH", "1"]
    pre_dir, ft_dir = str(tmp / "pre"), str(tmp / "ft")
    pre_log = _run("--config-file", "configs/Tiny/pretrain.yml", *common, "OUTPUT_DIR", pre_dir)
    ft_log = _run("--config-file", "configs/Tiny/t2i.yml", *common, "OUTPUT_DIR", ft_dir,
                  "MODEL.WEIGHTS", os.path.join(pre_dir, "model_final.pth"))
    eval_log = _run("--config-file", "configs/Tiny/t2i.yml", "--eval-only", "DATASETS.ROOT", data,
                    "OUTPUT_DIR", str(tmp / "eval"), "MODEL.WEIGHTS", os.path.join(ft_dir, "model_final.pth"))
    return {"pre": pre_dir, "ft": ft_dir, "pre_log": pre_log, "ft_log": ft_log, "eval_log": eval_log}


def test_pretraining_trains_both_losses_and_saves(runs):
    assert re.search(r"loss_con: [\d.]+\s+loss_mlm: [\d.]+", runs["pre_log"])
    ckpt = torch.load(os.path.join(runs["pre"], "model_final.pth"), weights_only=True)
    assert any(k.startswith("visual.") for k in ckpt["model"]) and any(k.startswith("text.") for k in ckpt["model"])


def test_finetuning_starts_from_the_pretrained_encoders(runs):
    assert re.search(r"Matched \d+ of the model's \d+ tensors", runs["ft_log"])
    pre = torch.load(os.path.join(runs["pre"], "model_final.pth"), weights_only=True)["model"]
    ft = torch.load(os.path.join(runs["ft"], "model_final.pth"), weights_only=True)["model"]
    shared = [k for k in ft if k.startswith(("visual.", "text.")) and k in pre]
    assert shared, "fine-tuning checkpoint shares no encoder tensor with pre-training"
    # Fine-tuning started from the pre-trained encoders and then moved them a little.
    moved = [k for k in shared if ft[k].dtype.is_floating_point and not torch.equal(ft[k], pre[k])]
    assert moved
    key = "visual.vit.patch_embed.proj.weight"
    assert (ft[key] - pre[key]).abs().max() < 1e-2  # a couple of Adam steps at lr 1e-4, not a re-init


def test_evaluation_reports_the_field_metrics(runs):
    m = _metrics(runs["ft_log"])
    for k in ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"):
        assert 0.0 <= m[k] <= 100.0
    assert m["Rank-1"] <= m["Rank-5"] <= m["Rank-10"]
    # 4 test ids, 8 gallery images: Rank-10 >= 8 covers every image.
    assert m["Rank-10"] == 100.0


def test_eval_only_reproduces_the_final_evaluation(runs):
    assert _metrics(runs["eval_log"]) == _metrics(runs["ft_log"])
