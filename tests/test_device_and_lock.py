"""No silent CPU fallback, ``MODEL.DEVICE auto`` logged, and one live run per OUTPUT_DIR,
through tools/train_net.py."""
import os
import signal
import subprocess
import sys
import time

import pytest

from raw_fixtures import make_cuhk_pedes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")


def _cmd(out, data, *extra):
    return [sys.executable, TRAIN_NET, "--config-file", "configs/Tiny/t2i.yml", "DATASETS.ROOT", data,
            "OUTPUT_DIR", out, "SOLVER.MAX_EPOCH", "1", *extra]


def _env(**kw):
    return dict(os.environ, OMP_NUM_THREADS="1", **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dev_data"))
    make_cuhk_pedes(root, num_ids=4, images_per_id=2, captions_per_image=2)
    return root


def test_cuda_requested_without_cuda_is_an_error_naming_cuda(data, tmp_path):
    out = str(tmp_path / "run")
    proc = subprocess.run(_cmd(out, data, "MODEL.DEVICE", "cuda"), capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=_env(CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode != 0
    err = proc.stderr
    assert "MODEL.DEVICE cuda but CUDA is not usable" in err, err[-2000:]
    assert "CUDA" in err and "MODEL.DEVICE cpu" in err
    assert not os.path.exists(os.path.join(out, "model_final.pth"))


def test_auto_device_runs_and_logs_the_cpu_decision(data, tmp_path):
    out = str(tmp_path / "run")
    proc = subprocess.run(_cmd(out, data, "MODEL.DEVICE", "auto", "SOLVER.AMP.ENABLED", "True"), capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=_env(CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "MODEL.DEVICE auto: running on cpu" in log
    assert "mixed precision is off" in log
    assert "running on cpu with 1 process(es), float32" in log


def _wait_for(path, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path):
            return True
        time.sleep(0.2)
    return False


def test_a_second_run_on_a_live_output_dir_is_refused_and_a_killed_run_does_not_block(data, tmp_path):
    out = str(tmp_path / "run")
    # A first run long enough to still be alive while the second starts.
    first = subprocess.Popen(_cmd(out, data, "SOLVER.MAX_EPOCH", "200", "TEST.EVAL_PERIOD", "1000"), cwd=ROOT,
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(os.path.join(out, "log.txt")), "the first run never started"
        second = subprocess.run(_cmd(out, data), capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env())
        assert second.returncode != 0
        assert "is in use by a live run" in second.stderr and f"pid {first.pid}" in second.stderr, \
            second.stderr[-2000:]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert os.path.exists(os.path.join(out, ".run.lock"))  # the stale lock file is still there
    third = subprocess.run(_cmd(out, data), capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env())
    assert third.returncode == 0, (third.stdout + third.stderr)[-3000:]
    assert os.path.exists(os.path.join(out, "model_final.pth"))
