"""Runs that survive faults: SIGKILL mid-epoch + --resume ends bit-identical to an uninterrupted
run, a NaN loss stops training naming the iteration and the term with the last checkpoint
intact, and the same seed gives the same weights whatever DATALOADER.NUM_WORKERS.

Every run goes through the real entry point (tools/train_net.py, or tests/faulty_train_net.py,
which is the same entry point plus one injected fault)."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from raw_fixtures import make_cuhk_pedes, make_luperson_t

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
FAULTY = os.path.join(ROOT, "tests", "faulty_train_net.py")
EPOCHS = 3
# iterations per epoch: pre-training 16 images x 2 captions / batch 8; fine-tuning 4 ids x 2
# images x 2 captions / batch 8
IPE = {"pretrain": 4, "t2i": 2}


def _train(script, config, out, data, *extra, fault=None, check=True, resume=False):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    if fault:
        env["UNIPT_FAULT"] = fault
    cmd = [sys.executable, script, "--config-file", config, *(["--resume"] if resume else []), "DATASETS.ROOT", data, "OUTPUT_DIR", out,
           "SEED", "3", "SOLVER.MAX_EPOCH", str(EPOCHS), "SOLVER.CHECKPOINT_PERIOD", "1", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    if check:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def _last_checkpoint(out):
    with open(os.path.join(out, "last_checkpoint")) as f:
        return f.read().strip()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("resume_data"))
    make_luperson_t(root, num_images=16, captions_per_image=2)
    make_cuhk_pedes(root, num_ids=4, images_per_id=2, captions_per_image=2)
    return root


RUNS = {
    "pretrain": ("configs/Tiny/pretrain.yml", []),
    "t2i": ("configs/Tiny/t2i.yml", ["SOLVER.STEPS", "[2]", "TEST.EVAL_PERIOD", "1"]),
}


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    outs = {}
    for name, (config, extra) in RUNS.items():
        outs[name] = str(tmp_path_factory.mktemp(f"{name}_full"))
        _train(TRAIN_NET, config, outs[name], data, *extra)
    return outs


@pytest.mark.parametrize("name", sorted(RUNS))
def test_sigkill_mid_epoch_then_resume_is_bit_identical(name, data, uninterrupted, tmp_path):
    config, extra = RUNS[name]
    out = str(tmp_path / "run")
    kill_at = IPE[name] + 1  # the second iteration of epoch 1: mid-epoch, after the epoch-0 checkpoint
    killed = _train(FAULTY, config, out, data, *extra, fault=f"kill:{kill_at}", check=False)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-3000:]
    assert _last_checkpoint(out) == "model_0000.pth"
    assert not os.path.exists(os.path.join(out, "model_final.pth"))

    resumed = _train(TRAIN_NET, config, out, data, *extra, resume=True)
    log = resumed.stdout + resumed.stderr
    assert "Resumed at epoch 1 (iteration %d) with the checkpoint's RNG state" % IPE[name] in log

    full = uninterrupted[name]
    _assert_bit_identical(_weights(os.path.join(out, "model_final.pth")),
                          _weights(os.path.join(full, "model_final.pth")))
    if name == "t2i":
        with open(os.path.join(out, "eval_results.json")) as f, \
                open(os.path.join(full, "eval_results.json")) as g:
            assert json.load(f) == json.load(g)


def test_nan_loss_stops_naming_iteration_and_term_and_keeps_the_checkpoint(data, uninterrupted, tmp_path):
    config, extra = RUNS["t2i"]
    out = str(tmp_path / "run")
    bad_iter = IPE["t2i"] + 1
    proc = _train(FAULTY, config, out, data, *extra, fault=f"nan:{bad_iter}:loss_rank", check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"non-finite loss at iteration {bad_iter}: loss_rank (" in log, log[-3000:]
    assert "loss_rank = nan" in log and "--resume" in log
    # The epoch-0 checkpoint is still the last one, loads, and is exactly the uninterrupted run's.
    assert _last_checkpoint(out) == "model_0000.pth"
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    _assert_bit_identical(_weights(os.path.join(out, "model_0000.pth")),
                          _weights(os.path.join(uninterrupted["t2i"], "model_0000.pth")))


def test_same_seed_same_weights_with_loader_workers_and_deterministic_kernels(data, uninterrupted, tmp_path):
    # CPU training is deterministic as it is: 2 loader processes instead of 0, and torch's
    # deterministic-kernel mode (DETERMINISTIC True), change no bit of the result.
    config, extra = RUNS["pretrain"]
    out = str(tmp_path / "workers")
    proc = _train(TRAIN_NET, config, out, data, *extra, "DATALOADER.NUM_WORKERS", "2", "DETERMINISTIC", "True")
    assert "DETERMINISTIC: deterministic kernels on" in proc.stdout + proc.stderr
    _assert_bit_identical(_weights(os.path.join(out, "model_final.pth")),
                          _weights(os.path.join(uninterrupted["pretrain"], "model_final.pth")))


@pytest.mark.parametrize("name", sorted(RUNS))
def test_sigterm_mid_epoch_saves_exits_75_and_resume_is_bit_identical(name, data, uninterrupted, tmp_path):
    config, extra = RUNS[name]
    out = str(tmp_path / "run")
    term_at = IPE[name]  # the first iteration of epoch 1 (of 2 or 4): not at an epoch end
    stopped = _train(FAULTY, config, out, data, *extra, fault=f"term:{term_at}", check=False)
    log = stopped.stdout + stopped.stderr
    assert stopped.returncode == 75, log[-3000:]
    assert f"pre-empted by SIGTERM after iteration {term_at}" in log
    assert _last_checkpoint(out) == "model_preempted.pth"
    assert not os.path.exists(os.path.join(out, "model_final.pth"))

    resumed = _train(TRAIN_NET, config, out, data, *extra, resume=True)
    log = resumed.stdout + resumed.stderr
    assert "Resumed at epoch 1 (iteration %d) with the checkpoint's RNG state" % (term_at + 1) in log, log[-3000:]
    full = uninterrupted[name]
    _assert_bit_identical(_weights(os.path.join(out, "model_final.pth")),
                          _weights(os.path.join(full, "model_final.pth")))


def test_sigterm_in_the_last_iteration_of_an_epoch_keeps_the_epoch_end_work(data, uninterrupted, tmp_path):
    # Stopping after an epoch's last iteration must not lose that epoch's evaluation, epoch LR
    # step and checkpoint: the resumed run starts the next epoch and ends identical.
    config, extra = RUNS["t2i"]
    out = str(tmp_path / "run")
    term_at = 2 * IPE["t2i"] - 1
    stopped = _train(FAULTY, config, out, data, *extra, fault=f"term:{term_at}", check=False)
    assert stopped.returncode == 75, (stopped.stdout + stopped.stderr)[-3000:]
    assert os.path.exists(os.path.join(out, "model_0001.pth"))  # epoch 1's own checkpoint was written
    resumed = _train(TRAIN_NET, config, out, data, *extra, resume=True)
    assert "Resumed at epoch 2 (iteration %d)" % (2 * IPE["t2i"]) in resumed.stdout + resumed.stderr
    _assert_bit_identical(_weights(os.path.join(out, "model_final.pth")),
                          _weights(os.path.join(uninterrupted["t2i"], "model_final.pth")))
    with open(os.path.join(out, "eval_results.json")) as f, \
            open(os.path.join(uninterrupted["t2i"], "eval_results.json")) as g:
        assert json.load(f) == json.load(g)
