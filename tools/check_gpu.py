#!/usr/bin/env python
"""Check that this machine trains and evaluates UniPT on its GPU(s), in under 5 minutes.

Prints the environment (torch and its CUDA build, the NVIDIA driver, every GPU with its memory,
NCCL, free shared memory in /dev/shm, CPUs), then runs each step below as the real tools run
(``tools/train_net.py``, ``tests/faulty_train_net.py``, ``tools/benchmark_eval.py``,
``tools/benchmark_train.py``, each a subprocess whose output goes to ``<work-dir>/logs/``) and
reports it as pass / fail / skipped with its figure:

  cuda             torch sees the GPU(s) and runs a matrix product on each
  render           a small synthetic pedestrian world (unipt_plugin.synthetic, CUHK-PEDES format)
  finetune         a few mixed-precision iterations of fine-tuning (configs/Tiny/t2i.yml); log.txt
                   must say "running on cuda with 1 process(es), mixed precision float16"
  pretrain         the same for pre-training (configs/Tiny/pretrain.yml, on the world's captions)
  preempt_resume   the fine-tuning run again, sent SIGTERM mid-epoch (UNIPT_FAULT=term:N): it must
                   exit 75 with model_preempted.pth; then --resume must finish. The final weights
                   are compared with the uninterrupted run's (max abs difference; bit-identical
                   is required on the CPU only)
  ddp2             fine-tuning with --num-gpus 2 (skipped with fewer than 2 GPUs)
  eval_only        --eval-only of the fine-tuned model: metrics equal to the run's last evaluation
  eval_bench       the evaluator at ICFG-PEDES size (19,848 x 19,848) at 3,584-d on the GPU
                   (tools/benchmark_eval.py --device cuda; skipped if that tool has no --device)
  train_bench      fine-tuning throughput of the paper model (benchmark_train.py --paper-model:
                   ViT-B/16 at 384x128 + BERT-base-sized text encoder, batch 64, float16)
  train_bench_bf16 the same in bfloat16
  pretrain_bench   the same for pre-training (configs/LUPerson-T/vit_base.yml) and the projected
                   LUPerson-T pre-training time on 8 such GPUs

The steps up to eval_only except ddp2 are required; the others are optional and skipped once the
time budget (``--budget``, default 290 s) is spent. The run ends with a table and exits 1 if a
step failed, 0 otherwise.

Without usable CUDA the tool says so and runs its CPU variant (MODEL.DEVICE cpu, AMP off, a
smaller world, the Tiny model in the benchmarks, two gloo processes for ddp2), which tests the
tool itself; ``--device cuda`` insists on CUDA (every GPU step then fails where CUDA is unusable).

    python tools/check_gpu.py                        # everything, ~4-5 minutes on one GPU
    python tools/check_gpu.py --only eval_only       # one step (and the steps it needs)
    python tools/check_gpu.py --work-dir /tmp/chk --keep --json /tmp/chk.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import unipt_plugin  # noqa: E402,F401  (fast-reid compat first)
from unipt_plugin.engine import PREEMPTED_EXIT_CODE  # noqa: E402
from unipt_plugin.engine.defaults import cuda_unusable_reason  # noqa: E402

PASS, FAIL, SKIP = "pass", "fail", "skipped"
LUPERSON_T_IMAGES = 1_300_000
LUPERSON_T_EPOCHS = 15
PROJECTION_GPUS = 8
METRIC_TOLERANCE = 1e-6


class StepFailed(Exception):
    """The step ran and failed; the message is its figure."""


class StepSkipped(Exception):
    """The step cannot run here; the message says why."""


@dataclass
class Scale:
    """Sizes of one variant (GPU or CPU)."""
    world_ids: int
    images_per_id: int
    epochs: int
    batch: int
    timeout_s: int
    bench_images: int
    bench_warmup: int
    bench_steps: int
    eval_bench: tuple[str, ...]


GPU_SCALE = Scale(world_ids=60, images_per_id=4, epochs=2, batch=8, timeout_s=240, bench_images=256,
                  bench_warmup=5, bench_steps=10, eval_bench=("--dim", "3584"))
CPU_SCALE = Scale(world_ids=16, images_per_id=2, epochs=1, batch=8, timeout_s=600, bench_images=32,
                  bench_warmup=1, bench_steps=2,
                  eval_bench=("--dim", "3584", "--queries", "1500", "--gallery", "1500", "--ids", "300"))


@dataclass
class Result:
    step: str
    status: str
    figure: str
    seconds: float


@dataclass
class Context:
    """What the steps share."""
    args: argparse.Namespace
    device: str                  # "cuda" or "cpu": MODEL.DEVICE of every run
    cuda_ok: bool
    num_gpus: int
    scale: Scale
    work: str
    t0: float
    results: dict[str, Result] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    step_logs: list[str] = field(default_factory=list)  # the logs written by the running step

    @property
    def world(self) -> str:
        return os.path.join(self.work, "world")

    def out(self, name: str) -> str:
        return os.path.join(self.work, "runs", name)

    def log(self, name: str) -> str:
        return os.path.join(self.work, "logs", f"{name}.log")

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def amp(self) -> bool:
        return self.device == "cuda"


@dataclass
class Step:
    name: str
    func: Callable[[Context], str]
    required: bool
    needs: tuple[str, ...]
    min_s: float  # about the least time it takes on one GPU; optional steps start only if this much is left
    title: str


# ------------------------------------------------------------------------------------ environment

def _nvidia_smi() -> list[dict[str, str]]:
    """One dict per GPU from nvidia-smi (index, name, driver, memory), [] when it is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,driver_version,memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.stdout.strip().splitlines() if out.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            rows.append(dict(zip(("index", "name", "driver", "memory_mib"), parts)))
    return rows


def _nccl_version() -> str:
    try:
        v = torch.cuda.nccl.version()
    except Exception as e:  # noqa: BLE001  (CPU builds have no NCCL)
        return f"unavailable ({type(e).__name__})"
    if isinstance(v, tuple):
        return ".".join(str(x) for x in v)
    return f"{v // 1000}.{v % 1000 // 100}.{v % 100}" if isinstance(v, int) else str(v)


def environment() -> dict[str, Any]:
    """The machine as the checks see it (printed first, and in the --json output)."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0], "executable": sys.executable, "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.version.cuda else None,
        "cuda_available": torch.cuda.is_available(), "nccl": _nccl_version(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    smi = _nvidia_smi()
    env["nvidia_smi"] = smi
    env["driver"] = smi[0]["driver"] if smi else None
    if env["driver"] is None and torch.version.cuda and hasattr(torch._C, "_cuda_getDriverVersion"):
        try:
            v = int(torch._C._cuda_getDriverVersion())
            env["driver_cuda_api"] = f"{v // 1000}.{v % 1000 // 10}" if v else None
        except Exception:  # noqa: BLE001
            env["driver_cuda_api"] = None
    gpus = []
    if env["cuda_available"]:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_gib": p.total_memory / 1024 ** 3,
                         "capability": f"{p.major}.{p.minor}", "bf16": _bf16_supported(i)})
    env["gpus"] = gpus
    try:
        du = shutil.disk_usage("/dev/shm")
        env["shm_free_gib"], env["shm_total_gib"] = du.free / 1024 ** 3, du.total / 1024 ** 3
    except OSError:
        env["shm_free_gib"] = env["shm_total_gib"] = None
    return env


def _bf16_supported(index: int) -> bool:
    try:
        with torch.cuda.device(index):
            return bool(torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001
        return False


def print_environment(env: dict[str, Any], reason: str) -> None:
    print("== environment")
    print(f"python {env['python']} ({env['executable']})")
    build = f"CUDA build {env['torch_cuda_build']}" if env["torch_cuda_build"] else "CPU-only build"
    print(f"torch {env['torch']} ({build}" + (f", cuDNN {env['cudnn']})" if env["cudnn"] else ")"))
    if env["driver"]:
        print(f"NVIDIA driver {env['driver']} (nvidia-smi)")
    elif env.get("driver_cuda_api"):
        print(f"NVIDIA driver: supports CUDA {env['driver_cuda_api']} (from torch; nvidia-smi not found)")
    else:
        print("NVIDIA driver: not found (no nvidia-smi" + (", and torch reports none)" if torch.version.cuda else ")"))
    if env["cuda_available"]:
        print(f"CUDA usable: yes, {len(env['gpus'])} GPU(s)")
        for g in env["gpus"]:
            print(f"  GPU {g['index']}: {g['name']}, {g['memory_gib']:.1f} GiB, compute capability {g['capability']}, "
                  f"bfloat16 {'yes' if g['bf16'] else 'no'}")
    else:
        print(f"CUDA usable: NO - {reason}")
        for g in env["nvidia_smi"]:
            print(f"  nvidia-smi lists GPU {g['index']}: {g['name']}, {g['memory_mib']} MiB (not usable by torch)")
    print(f"NCCL {env['nccl']}")
    if env["shm_free_gib"] is not None:
        print(f"/dev/shm: {env['shm_free_gib']:.2f} GiB free of {env['shm_total_gib']:.2f} GiB"
              + ("  (low: data-loader workers pass batches through it; start the container with a larger "
                 "--shm-size)" if env["shm_free_gib"] < 1 else ""))
    else:
        print("/dev/shm: not present")
    print(f"CPUs: {env['cpu_count']} ({env['cpus_usable']} usable by this process)")
    print(f"CUDA_VISIBLE_DEVICES={env['cuda_visible_devices']!r}" if env["cuda_visible_devices"] is not None
          else "CUDA_VISIBLE_DEVICES not set")


# ------------------------------------------------------------------------------------ subprocesses

@dataclass
class Proc:
    rc: int
    seconds: float
    log: str
    timed_out: bool


def run_tool(ctx: Context, name: str, cmd: Sequence[str], timeout: float | None = None,
             env: dict[str, str] | None = None) -> Proc:
    """Run ``cmd`` (from the repository root), its output to ``logs/<name>.log``. On timeout its
    whole process group (the tool and the workers it started) is killed."""
    path = ctx.log(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ctx.step_logs.append(path)
    timeout = timeout or ctx.scale.timeout_s
    start = time.perf_counter()
    with open(path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(_quote(c) for c in cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(list(cmd), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, **(env or {})), start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            timed_out = True
    return Proc(rc, time.perf_counter() - start, path, timed_out)


def _quote(s: str) -> str:
    return s if s and re.fullmatch(r"[\w@%+=:,./-]+", s) else "'" + s.replace("'", "'\\''") + "'"


def _tail(path: str, lines: int = 15) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()[-lines:]
    except OSError:
        return []


def _error_line(path: str) -> str:
    """The most telling line of a failed tool's output: its last error or exception line."""
    tail = _tail(path, 60)
    for line in reversed(tail):
        if re.search(r"(Error|Exception|error:|Killed|Traceback)", line):
            return line.strip()
    return next((line.strip() for line in reversed(tail) if line.strip()), "no output")


def _echo(path: str, start: str) -> None:
    """Print a tool's report: its output from the first line matching ``start`` on, indented."""
    lines = _read(path).splitlines()
    first = next((i for i, line in enumerate(lines) if re.search(start, line)), None)
    for line in lines[first:] if first is not None else []:
        if "truncated to INPUT.TEXT.MAX_LENGTH" not in line:
            print("   > " + line)


def check_proc(p: Proc, what: str, expect_rc: int = 0) -> None:
    """Raise StepFailed unless the tool exited with ``expect_rc``."""
    if p.timed_out:
        raise StepFailed(f"{what}: timed out after {p.seconds:.0f} s (log {p.log})")
    if p.rc != expect_rc:
        raise StepFailed(f"{what}: exit code {p.rc} (expected {expect_rc}): {_error_line(p.log)}")


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _load_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _eval_results(output_dir: str) -> dict[str, float]:
    """The metrics of the run's one test set (``eval_results.json``, written by UniPTTrainer.test)."""
    from unipt_plugin.evaluation.results import read_eval_results

    return read_eval_results(output_dir)


# ------------------------------------------------------------------------------------ training runs

def _device_opts(ctx: Context) -> list[str]:
    return ["MODEL.DEVICE", ctx.device, "SOLVER.AMP.ENABLED", str(ctx.amp), "DATASETS.ROOT", ctx.world, "SEED", "0"]


def _finetune_opts(ctx: Context, out: str) -> list[str]:
    s = ctx.scale
    return [*_device_opts(ctx), "SOLVER.MAX_EPOCH", str(s.epochs), "SOLVER.STEPS", "[1]", "TEST.EVAL_PERIOD", "1",
            "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.IMS_PER_BATCH", str(s.batch), "OUTPUT_DIR", out]


def _train_items(ctx: Context) -> int:
    """Training items (image, caption pairs) of the rendered world, from its reid_raw.json."""
    entries = _load_json(os.path.join(ctx.world, "CUHK-PEDES", "reid_raw.json"))
    return sum(len(e["captions"]) for e in entries if e["split"] == "train")


def _expected_log_line(ctx: Context, processes: int) -> str:
    precision = "mixed precision float16" if ctx.amp else "float32"
    return f"running on {ctx.device} with {processes} process(es), {precision}"


def _check_log(ctx: Context, out: str, processes: int = 1) -> str:
    path = os.path.join(out, "log.txt")
    if not os.path.exists(path):
        raise StepFailed(f"no {path}")
    expected = _expected_log_line(ctx, processes)
    text = _read(path)
    if expected not in text:
        found = re.search(r"running on \S+ with \d+ process\(es\), [^\n]*", text)
        raise StepFailed(f"log.txt does not say '{expected}'" + (f" but '{found.group(0)}'" if found else ""))
    return expected


def _short(line: str) -> str:
    """'running on cuda with 1 process(es), mixed precision float16'
    -> 'cuda, 1 process(es), mixed precision float16'."""
    m = re.match(r"running on (\S+) with (\d+) process\(es\), (.*)", line)
    return f"{m.group(1)}, {m.group(2)} process(es), {m.group(3)}" if m else line


def _speed(out: str) -> str:
    """'N it, X ms/it': the iterations run (metrics.json) and fast-reid's per-iteration time
    ('Overall training speed' in log.txt, which leaves out the first iterations)."""
    iterations = 0
    try:
        with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    iterations = max(iterations, int(json.loads(line).get("iteration", -1)) + 1)
    except (OSError, ValueError):
        pass
    m = re.search(r"Overall training speed: \d+ iterations in \S+ \(([\d.]+) s / it\)",
                  _read(os.path.join(out, "log.txt")))
    speed = f" at {float(m.group(1)) * 1000:.0f} ms/it" if m else ""
    return f"{iterations} it{speed}"


def step_cuda(ctx: Context) -> str:
    if not ctx.cuda_ok:
        reason = ctx.data["cuda_reason"]
        if ctx.args.device == "cpu":
            raise StepSkipped("CPU variant: --device cpu")
        if ctx.args.device == "cuda":
            raise StepFailed(f"--device cuda but CUDA is not usable: {reason}")
        if ctx.data["env"]["nvidia_smi"]:
            raise StepFailed(f"nvidia-smi lists {len(ctx.data['env']['nvidia_smi'])} GPU(s) but torch cannot use "
                             f"CUDA: {reason}")
        raise StepSkipped("CPU variant: no usable CUDA (see above)")
    figures = []
    for i in range(ctx.num_gpus):
        dev = torch.device("cuda", i)
        a = torch.randn(4096, 4096, device=dev, dtype=torch.float16)
        a @ a  # cuBLAS initialisation, outside the timing
        torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize(dev)
        tflops = 10 * 2 * 4096 ** 3 / (time.perf_counter() - start) / 1e12
        figures.append(f"GPU {i} fp16 matmul {tflops:.0f} TFLOP/s")
    return f"{ctx.num_gpus} GPU(s); " + ", ".join(figures)


def step_render(ctx: Context) -> str:
    from unipt_plugin.synthetic import generate_world

    s = ctx.scale
    counts = generate_world(ctx.world, num_labeled_ids=s.world_ids, images_per_id=s.images_per_id,
                            num_pool_images=0, size=(128, 64), seed=0, show_progress=False)
    return f"{counts['labeled_images']} images of {counts['labeled_ids']} people at 128x64"


def step_finetune(ctx: Context) -> str:
    out = ctx.out("finetune")
    p = run_tool(ctx, "finetune", [sys.executable, "tools/train_net.py", "--config-file", "configs/Tiny/t2i.yml",
                                   *_finetune_opts(ctx, out)])
    check_proc(p, "tools/train_net.py")
    line = _check_log(ctx, out)
    results = _eval_results(out)
    return f"{_speed(out)}, Rank-1 {results['Rank-1']:.1f}; log.txt: {_short(line)}"


def step_pretrain(ctx: Context) -> str:
    out = ctx.out("pretrain")
    s = ctx.scale
    p = run_tool(ctx, "pretrain", [sys.executable, "tools/train_net.py", "--config-file", "configs/Tiny/pretrain.yml",
                                   *_device_opts(ctx), "DATASETS.NAMES", '("CUHKPEDES",)', "DATASETS.TESTS", "()",
                                   "SOLVER.MAX_EPOCH", str(s.epochs), "SOLVER.IMS_PER_BATCH", str(s.batch),
                                   "SOLVER.CHECKPOINT_PERIOD", str(s.epochs), "OUTPUT_DIR", out])
    check_proc(p, "tools/train_net.py")
    line = _check_log(ctx, out)
    if not os.path.exists(os.path.join(out, "model_final.pth")):
        raise StepFailed(f"no model_final.pth in {out}")
    return f"{_speed(out)}; log.txt: {_short(line)}"


def _weights(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys and shapes."""
    if a.keys() != b.keys():
        raise StepFailed(f"the checkpoints hold different tensors: {sorted(set(a) ^ set(b))[:3]}")
    worst = 0.0
    for k in a:
        if a[k].shape != b[k].shape:
            raise StepFailed(f"{k}: shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}")
        if a[k].is_floating_point():
            worst = max(worst, float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0)
        elif not torch.equal(a[k], b[k]):
            worst = float("inf")
    return worst


def step_preempt_resume(ctx: Context) -> str:
    out = ctx.out("preempt_resume")
    ipe = _train_items(ctx) // ctx.scale.batch
    at = max(1, ipe // 2)  # mid-epoch 0
    cmd = ["tools/train_net.py", "--config-file", "configs/Tiny/t2i.yml"]
    p = run_tool(ctx, "preempt", [sys.executable, "tests/faulty_train_net.py", *cmd[1:], *_finetune_opts(ctx, out)],
                 env={"UNIPT_FAULT": f"term:{at}"})
    check_proc(p, f"SIGTERM after iteration {at}", expect_rc=PREEMPTED_EXIT_CODE)
    if not os.path.exists(os.path.join(out, "model_preempted.pth")):
        raise StepFailed(f"exit code 75 but no model_preempted.pth in {out}")
    p = run_tool(ctx, "resume", [sys.executable, *cmd[:3], "--resume", *_finetune_opts(ctx, out)])
    check_proc(p, "--resume")
    log = _read(os.path.join(out, "log.txt"))
    resumed = re.search(r"Resumed at epoch (\d+) \(iteration (\d+)\) with the checkpoint's RNG state", log)
    if not resumed or int(resumed.group(2)) != at + 1:
        raise StepFailed(f"the resumed run did not restart at iteration {at + 1} with the checkpoint's RNG state")
    diff = max_abs_difference(_weights(os.path.join(out, "model_final.pth")),
                              _weights(os.path.join(ctx.out("finetune"), "model_final.pth")))
    figure = f"exit 75 after it {at}, resumed at it {at + 1}; final weights vs uninterrupted: "
    if diff == 0:
        return figure + "bit-identical"
    if ctx.device == "cpu":
        raise StepFailed(figure + f"max |diff| {diff:.3g} (must be bit-identical on the CPU)")
    return figure + f"max |diff| {diff:.3g} (CUDA kernels need not be bit-reproducible)"


def step_ddp2(ctx: Context) -> str:
    if ctx.device == "cuda" and ctx.num_gpus < 2:
        raise StepSkipped(f"{ctx.num_gpus} GPU")
    out = ctx.out("ddp2")
    opts = _finetune_opts(ctx, out)
    opts[opts.index("SOLVER.MAX_EPOCH") + 1] = "1"
    opts[opts.index("SOLVER.IMS_PER_BATCH") + 1] = str(2 * ctx.scale.batch)
    p = run_tool(ctx, "ddp2", [sys.executable, "tools/train_net.py", "--config-file", "configs/Tiny/t2i.yml",
                               "--num-gpus", "2", *opts])
    check_proc(p, "tools/train_net.py --num-gpus 2")
    line = _check_log(ctx, out, processes=2)
    backend = "NCCL" if ctx.device == "cuda" else "gloo (CPU)"
    results = _eval_results(out)
    return f"2 processes, {backend}: {_speed(out)}, Rank-1 {results['Rank-1']:.1f}; log.txt: {_short(line)}"


def step_eval_only(ctx: Context) -> str:
    trained = ctx.out("finetune")
    out = ctx.out("eval_only")
    p = run_tool(ctx, "eval_only", [sys.executable, "tools/train_net.py", "--config-file", "configs/Tiny/t2i.yml",
                                    "--eval-only", *_device_opts(ctx),
                                    "MODEL.WEIGHTS", os.path.join(trained, "model_final.pth"), "OUTPUT_DIR", out])
    check_proc(p, "tools/train_net.py --eval-only")
    a = _eval_results(trained)
    b = _eval_results(out)
    keys = [k for k in a if isinstance(a[k], (int, float))]
    if not keys or set(keys) - set(b):
        raise StepFailed(f"metrics differ in keys: training {sorted(a)}, eval-only {sorted(b)}")
    worst = max(abs(float(a[k]) - float(b[k])) for k in keys)
    figure = f"Rank-1 {b['Rank-1']:.2f} mAP {b['mAP']:.2f}; max |diff| vs training's last evaluation {worst:.2g}"
    if worst > METRIC_TOLERANCE:
        raise StepFailed(figure)
    return figure


def _has_flag(ctx: Context, script: str, flag: str) -> bool:
    p = run_tool(ctx, f"{os.path.basename(script)}_help", [sys.executable, script, "--help"], timeout=120)
    return p.rc == 0 and re.search(rf"(^|\s){re.escape(flag)}\b", _read(p.log)) is not None


def step_eval_bench(ctx: Context) -> str:
    script = "tools/benchmark_eval.py"
    if not _has_flag(ctx, script, "--device"):
        raise StepSkipped(f"{script} has no --device option")
    p = run_tool(ctx, "eval_bench", [sys.executable, script, "--device", ctx.device, *ctx.scale.eval_bench])
    text = _read(p.log)
    check_proc(p, script)
    _echo(p.log, r"^Q=\d+")
    size = re.search(r"Q=(\d+) G=(\d+) D=(\d+)", text)
    times = {m.group(1): float(m.group(2))
             for m in re.finditer(r"^\(([abc])\)[^\n]*?\s([\d.]+)\s+[\d.]+\s*$", text, re.M)}
    rank1 = re.search(r"metrics \(a\):[^\n]*?Rank-1=([\d.]+)", text)
    parts = [f"{size.group(1)}x{size.group(2)}x{size.group(3)} on {ctx.device}" if size else f"on {ctx.device}"]
    names = {"a": "evaluator", "b": "full sort", "c": "product alone"}
    parts += [f"{names[k]} {v:.2f} s" for k, v in sorted(times.items())]
    if rank1:
        parts.append(f"Rank-1 {float(rank1.group(1)):.1f}")
    if not times:
        parts.append("(timings not found in its output: " + _error_line(p.log)[:60] + ")")
    return ", ".join(parts)


def _bench(ctx: Context, name: str, config: str, dtype: str) -> dict[str, Any]:
    s = ctx.scale
    path = os.path.join(ctx.work, f"{name}.json")
    cmd = [sys.executable, "tools/benchmark_train.py", "--config-file", config, "--synthetic-data", str(s.bench_images),
           "--warmup", str(s.bench_warmup), "--steps", str(s.bench_steps), "--json", path]
    if ctx.device == "cuda":
        workers = max(1, min(8, (os.cpu_count() or 2) - 1))
        cmd += ["--paper-model", "--dtype", dtype, "DATALOADER.NUM_WORKERS", str(workers)]
    else:
        cmd += ["MODEL.DEVICE", "cpu"]
    p = run_tool(ctx, name, cmd)
    check_proc(p, "tools/benchmark_train.py")
    _echo(p.log, r"^config ")
    return _load_json(path)


def _bench_figure(r: dict[str, Any]) -> str:
    what = "paper model" if r.get("paper_model") else "Tiny model (CPU stand-in)"
    precision = r["amp_dtype"] if r["amp"] else "float32"
    verdict = "OK" if r["outside_share"] < 0.10 else "ABOVE the 10% target"
    figure = (f"{what}, batch {r['batch']}, {precision}: {r['plain_samples_per_s']:.1f} samples/s, outside "
              f"fwd/bwd/opt {r['outside_share'] * 100:.1f}% ({verdict})")
    if r.get("peak_gpu_mem_bytes"):
        figure += f", peak {r['peak_gpu_mem_bytes'] / 1024 ** 3:.1f} GiB"
    return figure


def step_train_bench(ctx: Context) -> str:
    config = "configs/CUHK-PEDES/vit_base.yml" if ctx.device == "cuda" else "configs/Tiny/t2i.yml"
    r = _bench(ctx, "train_bench", config, "float16")
    ctx.data["train_bench"] = r
    return _bench_figure(r)


def step_train_bench_bf16(ctx: Context) -> str:
    if ctx.device != "cuda":
        raise StepSkipped("no CUDA (mixed precision is CUDA-only)")
    if not ctx.data["env"]["gpus"] or not ctx.data["env"]["gpus"][0]["bf16"]:
        raise StepSkipped("this GPU has no bfloat16 support")
    r = _bench(ctx, "train_bench_bf16", "configs/CUHK-PEDES/vit_base.yml", "bfloat16")
    figure = _bench_figure(r)
    fp16 = ctx.data.get("train_bench")
    if fp16:
        figure += f"; {r['plain_samples_per_s'] / fp16['plain_samples_per_s']:.2f}x float16's speed"
    return figure


def projection_hours(samples_per_s: float, gpus: int = PROJECTION_GPUS) -> float:
    """Hours of LUPerson-T pre-training (1.3M images x 15 epochs) on ``gpus`` GPUs, each at
    ``samples_per_s``, assuming linear scaling."""
    return LUPERSON_T_IMAGES * LUPERSON_T_EPOCHS / (gpus * samples_per_s) / 3600


def step_pretrain_bench(ctx: Context) -> str:
    config = "configs/LUPerson-T/vit_base.yml" if ctx.device == "cuda" else "configs/Tiny/pretrain.yml"
    r = _bench(ctx, "pretrain_bench", config, "float16")
    figure = _bench_figure(r)
    if r.get("paper_model") and r["device"].startswith("cuda"):
        hours = projection_hours(r["plain_samples_per_s"])
        ctx.data["projection"] = (
            f"LUPerson-T pre-training projection: {LUPERSON_T_IMAGES / 1e6:.1f}M images x {LUPERSON_T_EPOCHS} epochs "
            f"/ ({PROJECTION_GPUS} GPUs x {r['plain_samples_per_s']:.1f} samples/s) = {hours:.1f} h. Assumes linear "
            f"scaling over {PROJECTION_GPUS} GPUs of this kind at per-GPU batch 64 (the paper's 512 / 8), the "
            f"throughput measured here (configs/LUPerson-T/vit_base.yml, --paper-model, {r['amp_dtype']}, synthetic "
            f"images), and data loading keeping up with real JPEGs.")
        figure += f"; 8-GPU LUPerson-T projection {hours:.1f} h"
    else:
        figure += "; no LUPerson-T projection (needs the paper model on CUDA)"
    return figure


STEPS: tuple[Step, ...] = (
    Step("cuda", step_cuda, True, (), 5, "CUDA usable, a matrix product on every GPU"),
    Step("render", step_render, True, (), 5, "render a small synthetic world"),
    Step("finetune", step_finetune, True, ("render",), 20, "fine-tuning (mixed precision on CUDA)"),
    Step("pretrain", step_pretrain, True, ("render",), 20, "pre-training (mixed precision on CUDA)"),
    Step("preempt_resume", step_preempt_resume, True, ("finetune",), 35, "SIGTERM mid-epoch, exit 75, --resume"),
    Step("ddp2", step_ddp2, False, ("render",), 35, "--num-gpus 2"),
    Step("eval_only", step_eval_only, True, ("finetune",), 15, "--eval-only equals the training's evaluation"),
    Step("eval_bench", step_eval_bench, False, (), 40, "evaluator at ICFG-PEDES size, 3,584-d"),
    Step("train_bench", step_train_bench, False, (), 45, "paper-model fine-tuning throughput, float16"),
    Step("train_bench_bf16", step_train_bench_bf16, False, (), 40, "paper-model fine-tuning throughput, bfloat16"),
    Step("pretrain_bench", step_pretrain_bench, False, (), 45, "paper-model pre-training throughput + projection"),
)
STEP_NAMES = tuple(s.name for s in STEPS)


def select_steps(only: Sequence[str]) -> list[Step]:
    """The steps to run: all, or those named in ``only`` plus the steps they need."""
    if not only:
        return list(STEPS)
    by_name = {s.name: s for s in STEPS}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise SystemExit(f"--only: unknown step(s) {unknown}; the steps are {', '.join(STEP_NAMES)}")
    chosen: set[str] = set()

    def add(name: str) -> None:
        if name not in chosen:
            chosen.add(name)
            for n in by_name[name].needs:
                add(n)
    for n in only:
        add(n)
    return [s for s in STEPS if s.name in chosen]


def run_steps(ctx: Context, steps: Sequence[Step]) -> list[Result]:
    for step in steps:
        start = time.perf_counter()
        missing = [n for n in step.needs if ctx.results.get(n) is None or ctx.results[n].status != PASS]
        left = ctx.args.budget - ctx.elapsed()
        print(f"\n== {step.name}: {step.title}", flush=True)
        ctx.step_logs = []
        if missing:
            status, figure = SKIP, f"needs {', '.join(missing)}, which did not pass"
        elif not step.required and left < step.min_s:
            status, figure = SKIP, f"time budget spent ({max(0.0, left):.0f} s of {ctx.args.budget:.0f} s left)"
        else:
            try:
                status, figure = PASS, step.func(ctx)
            except StepSkipped as e:
                status, figure = SKIP, str(e)
            except StepFailed as e:
                status, figure = FAIL, str(e)
            except Exception as e:  # noqa: BLE001  (a bug or an unexpected machine state: report it, go on)
                status, figure = FAIL, f"{type(e).__name__}: {e}"
        result = Result(step.name, status, figure, time.perf_counter() - start)
        ctx.results[step.name] = result
        print(f"   {status}: {figure}  ({result.seconds:.1f} s)", flush=True)
        if status == FAIL and ctx.step_logs:
            print(f"   last lines of {ctx.step_logs[-1]}:")
            for line in _tail(ctx.step_logs[-1], 12):
                print("   | " + line[:200])
    return list(ctx.results.values())


def print_table(results: Sequence[Result], total_s: float) -> None:
    width = max(len(r.step) for r in results)
    print(f"\n== summary ({total_s:.0f} s)")
    print(f"{'step':<{width}}  {'result':<7}  {'seconds':>7}  figure")
    for r in results:
        print(f"{r.step:<{width}}  {r.status:<7}  {r.seconds:>7.1f}  {r.figure}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="\n".join(__doc__.split("\n")[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto (default): CUDA when usable, else the CPU variant; cuda: insist on CUDA; cpu: the CPU "
                        "variant even on a GPU machine")
    p.add_argument("--budget", type=float, default=290.0,
                   help="seconds; optional steps are skipped once this is spent (default 290)")
    p.add_argument("--only", nargs="+", default=[], metavar="STEP",
                   help=f"run only these steps and the steps they need ({', '.join(STEP_NAMES)})")
    p.add_argument("--work-dir", default="",
                   help="a new or empty folder for the world, the runs and their logs (default: a temporary folder, "
                        "deleted at the end unless --keep or a step failed); a folder given here is never deleted")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--json", default="", help="also write the environment and the results to this JSON file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    steps = select_steps(args.only)
    t0 = time.perf_counter()
    if args.work_dir:
        work = os.path.abspath(args.work_dir)
        if os.path.isdir(work) and os.listdir(work):
            raise SystemExit(f"--work-dir {work} is not empty: give a new or empty folder (the runs must start fresh)")
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="unipt_check_gpu_")
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)

    cuda_ok = torch.cuda.is_available() and args.device != "cpu"
    reason = "" if torch.cuda.is_available() else cuda_unusable_reason()
    if args.device == "cpu" and torch.cuda.is_available():
        reason = "--device cpu"
    env = environment()
    print_environment(env, reason or "not used")
    device = "cuda" if cuda_ok or args.device == "cuda" else "cpu"
    scale = GPU_SCALE if device == "cuda" else CPU_SCALE
    if not cuda_ok:
        print(f"\n*** No usable CUDA ({reason}). "
              + ("--device cuda: the GPU steps run with MODEL.DEVICE cuda and are expected to fail."
                 if device == "cuda" else
                 "Running the CPU variant (MODEL.DEVICE cpu, AMP off, a smaller world, the Tiny model in the "
                 "benchmarks): it checks this tool and the CPU paths, not a GPU. ***"))
    print(f"\nwork folder {work}; time budget {args.budget:.0f} s for the optional steps")
    ctx = Context(args=args, device=device, cuda_ok=cuda_ok, num_gpus=torch.cuda.device_count() if cuda_ok else 0,
                  scale=scale, work=work, t0=t0)
    ctx.data["env"], ctx.data["cuda_reason"] = env, reason
    results = run_steps(ctx, steps)
    total = ctx.elapsed()
    print_table(results, total)
    if "projection" in ctx.data:
        print("\n" + ctx.data["projection"])
    failed = [r.step for r in results if r.status == FAIL]
    print(f"\nRESULT: {'FAILED: ' + ', '.join(failed) if failed else 'no step failed'}"
          + ("" if device == "cuda" else " (CPU variant: no GPU was checked)"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"environment": env, "device": device, "seconds": total,
                       "results": [asdict(r) for r in results]}, f, indent=2, default=str)
    if args.work_dir or args.keep or failed:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
