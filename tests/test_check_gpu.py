"""tools/check_gpu.py: its CPU-able part passes, and a step that cannot work is reported as
failed with a non-zero exit code and the reason.

Each test runs the real tool as a subprocess on one step (``--only finetune``: it renders the
synthetic world first, then fine-tunes the Tiny model through tools/train_net.py)."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK_GPU = os.path.join(ROOT, "tools", "check_gpu.py")


def _check_gpu(tmp_path, *args, env=None):
    report = tmp_path / "report.json"
    cmd = [sys.executable, CHECK_GPU, "--work-dir", str(tmp_path / "work"), "--json", str(report), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="2", **(env or {})))
    results = {}
    if report.exists():
        results = {r["step"]: r for r in json.loads(report.read_text())["results"]}
    return proc, results


def _table_row(stdout, step):
    """The summary table's row of ``step`` -> (result, figure)."""
    table = stdout.split("== summary", 1)[1]
    m = re.search(rf"^{re.escape(step)}\s+(pass|fail|skipped)\s+[\d.]+\s+(.*)$", table, re.M)
    assert m, f"no row for {step} in the summary table:\n{table}"
    return m.group(1), m.group(2)


def test_cpu_finetune_step_passes(tmp_path):
    proc, results = _check_gpu(tmp_path, "--only", "finetune", "--device", "cpu")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert set(results) == {"render", "finetune"}, results
    for step in ("render", "finetune"):
        assert _table_row(proc.stdout, step)[0] == "pass", out[-4000:]
        assert results[step]["status"] == "pass"
    figure = _table_row(proc.stdout, "finetune")[1]
    # the figure is read from the run's own log.txt and metrics.json
    assert "cpu, 1 process(es), float32" in figure and re.search(r"\b[1-9]\d* it\b", figure), figure
    assert "RESULT: no step failed" in proc.stdout
    assert (tmp_path / "work" / "runs" / "finetune" / "model_final.pth").exists()


def test_unusable_cuda_is_reported_as_failure(tmp_path):
    # CUDA hidden, so the result is the same on a GPU machine: MODEL.DEVICE cuda must fail with
    # the engine's ConfigError naming CUDA, and the tool must exit non-zero.
    proc, results = _check_gpu(tmp_path, "--only", "finetune", "--device", "cuda",
                               env={"CUDA_VISIBLE_DEVICES": ""})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert results["render"]["status"] == "pass", out[-4000:]
    assert results["finetune"]["status"] == "fail", out[-4000:]
    assert _table_row(proc.stdout, "finetune")[0] == "fail"
    assert "exit code 2" in results["finetune"]["figure"], results["finetune"]
    assert "ConfigError" in results["finetune"]["figure"] and "CUDA" in results["finetune"]["figure"]
    assert re.search(r"RESULT: FAILED: .*finetune", proc.stdout), proc.stdout[-2000:]
    # the work folder is kept for its logs, which hold the whole error
    log = (tmp_path / "work" / "logs" / "finetune.log").read_text()
    assert "MODEL.DEVICE cuda but CUDA is not usable" in log


def test_spent_budget_skips_optional_steps(tmp_path):
    proc, results = _check_gpu(tmp_path, "--only", "train_bench", "--budget", "0")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert results["train_bench"]["status"] == "skipped"
    assert "time budget spent" in results["train_bench"]["figure"]
    assert _table_row(proc.stdout, "train_bench")[0] == "skipped"
