"""Several processes through the real entry point, on the CPU (gloo): ``tools/train_net.py
--num-gpus 2 MODEL.DEVICE cpu`` starts two processes whose one optimiser step equals one
process's step on the concatenated batch, gradient accumulation reproduces several processes on
one, the 2-process evaluation equals the 1-process one, and ablations that leave modules
without gradients run.

How the comparisons are made exact enough to test:
* the random parts are switched off: no flip, no MLM, no dropout (MODEL.TEXT.DROPOUT 0, PGU dropout 0), and a ranking loss with
  margin 0 and the hardest-negative fallback (with margin 0 no negative is semi-hard, so every
  anchor takes its hardest negative: no random draw);
* one step of Adam with ``eps`` = 1e6 and learning rate 1e6 moves each weight by
  ``lr * g / (|g| + eps)`` = g (to 1e-6 relative for |g| < 1): the weights after the step are
  ``w0 - grad``, so comparing weights compares gradients (a plain Adam step would move every
  weight by +-lr whatever the gradient's size, and compare signs only);
* a control (2 processes without gathered negatives) must differ by far more than the
  tolerance, so the equalities are not vacuous.
fast-reid's samplers deal one shuffled stream round-robin to the ranks, so the 2-process batch
is a permutation of the 1-process batch; every loss is invariant to that permutation.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from raw_fixtures import make_cuhk_pedes, make_luperson_t

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
TOL = 1e-5

# One step of "Adam" that is a gradient step: see the module docstring.
LINEAR_STEP = ["MODEL.TEXT.DROPOUT", "0.0", "SOLVER.BASE_LR", "1e6", "SOLVER.VISUAL_LR", "1e6", "SOLVER.TEXT_LR", "1e6", "SOLVER.EPS", "1e6",
               "SOLVER.WEIGHT_DECAY", "0.0", "SOLVER.MAX_EPOCH", "1", "INPUT.FLIP.ENABLED", "False", "SEED", "5"]
T2I_DETERMINISTIC = ["MODEL.PGU.DROPOUT", "0.0", "MODEL.T2I.RANK_MARGIN", "0.0", "MODEL.T2I.RANK_HARDEST_FALLBACK",
                     "True", "SOLVER.IMS_PER_BATCH", "16", "TEST.EVAL_PERIOD", "1"]
# (the paper configs use per-GPU negatives, GATHER_NEGATIVES False; here they are gathered)
PRETRAIN_DETERMINISTIC = ["MODEL.PRETRAIN.GATHER_NEGATIVES", "True", "MODEL.PRETRAIN.MLM_WEIGHT", "0.0", "SOLVER.WARMUP_RATIO", "0.0", "SOLVER.IMS_PER_BATCH", "32"]


def _train(config, out, data, *extra, procs=1, check=True, flags=()):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, TRAIN_NET, "--config-file", config, "--num-gpus", str(procs), *flags, "DATASETS.ROOT", data,
           "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    if check:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return proc


def _weights(out):
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)["model"]


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mp_data"))
    make_luperson_t(root, num_images=16, captions_per_image=2)  # 32 items: one batch of 32
    make_cuhk_pedes(root, num_ids=4, images_per_id=2, captions_per_image=2)  # 16 items: one batch of 16
    return root


@pytest.fixture(scope="module")
def t2i_runs(data, tmp_path_factory):
    cfg, extra = "configs/Tiny/t2i.yml", LINEAR_STEP + T2I_DETERMINISTIC
    outs = {k: str(tmp_path_factory.mktemp(k)) for k in ("one", "two", "two_no_gather", "accum")}
    _train(cfg, outs["one"], data, *extra)
    log = _train(cfg, outs["two"], data, *extra, procs=2)
    outs["two_log"] = log.stdout + log.stderr
    _train(cfg, outs["two_no_gather"], data, *extra, "MODEL.T2I.GATHER_NEGATIVES", "False", procs=2)
    _train(cfg, outs["accum"], data, *extra, "MODEL.T2I.GATHER_NEGATIVES", "False", "SOLVER.ACCUM_STEPS", "2")
    return outs


def test_two_processes_really_run(t2i_runs):
    with open(os.path.join(t2i_runs["two"], "log.txt")) as f:
        log = f.read()
    assert "running on cpu with 2 process(es)" in log


def test_finetuning_two_processes_with_gathered_negatives_equal_one_process(t2i_runs):
    one, two, control = (_weights(t2i_runs[k]) for k in ("one", "two", "two_no_gather"))
    assert _max_diff(one, control) > 100 * TOL  # per-process negatives give another step
    assert _max_diff(one, two) < TOL


def test_accumulating_two_micro_batches_equals_two_processes_without_gathering(t2i_runs):
    accum, two_no_gather, one = (_weights(t2i_runs[k]) for k in ("accum", "two_no_gather", "one"))
    assert _max_diff(accum, one) > 100 * TOL  # micro-batches really have their own negatives
    assert _max_diff(accum, two_no_gather) < TOL


def test_pretraining_two_processes_with_gathered_negatives_equal_one_process(data, tmp_path):
    cfg, extra = "configs/Tiny/pretrain.yml", LINEAR_STEP + PRETRAIN_DETERMINISTIC
    one, two, control = (str(tmp_path / k) for k in ("one", "two", "control"))
    _train(cfg, one, data, *extra)
    _train(cfg, two, data, *extra, procs=2)
    _train(cfg, control, data, *extra, "MODEL.PRETRAIN.GATHER_NEGATIVES", "False", procs=2)
    w1, w2, wc = _weights(one), _weights(two), _weights(control)
    assert _max_diff(w1, wc) > 100 * TOL
    assert _max_diff(w1, w2) < TOL


def test_everything_on_two_processes_end_to_end_and_evaluation_equals_one_process(data, tmp_path):
    pre, fine = str(tmp_path / "pre"), str(tmp_path / "fine")
    _train("configs/Tiny/pretrain.yml", pre, data, "SOLVER.MAX_EPOCH", "1", procs=2)
    _train("configs/Tiny/t2i.yml", fine, data, "MODEL.WEIGHTS", os.path.join(pre, "model_final.pth"),
           "SOLVER.MAX_EPOCH", "2", procs=2)
    with open(os.path.join(fine, "eval_results.json")) as f:
        two_process_eval = json.load(f)
    again = str(tmp_path / "eval1")
    _train("configs/Tiny/t2i.yml", again, data, "MODEL.WEIGHTS", os.path.join(fine, "model_final.pth"),
           flags=["--eval-only"])
    with open(os.path.join(again, "eval_results.json")) as f:
        one_process_eval = json.load(f)
    assert two_process_eval == one_process_eval
    assert set(one_process_eval["CUHKPEDES"]) >= {"Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"}


def test_pgu_weight_zero_and_accumulation_run_on_two_processes(data, tmp_path):
    # PGU_WEIGHT 0 leaves the PGU without gradients (DDP would stop at the 2nd iteration if it
    # were trainable); ACCUM_STEPS 2 runs DDP's no_sync on the first micro-batch.
    out = str(tmp_path / "pgu0")
    proc = _train("configs/Tiny/t2i.yml", out, data, "MODEL.T2I.PGU_WEIGHT", "0.0", "SOLVER.MAX_EPOCH", "2",
                  "SOLVER.ACCUM_STEPS", "2", "TEST.EVAL_PERIOD", "2", procs=2)
    assert os.path.exists(os.path.join(out, "model_final.pth")), (proc.stdout + proc.stderr)[-3000:]
