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

    python tools/run_demo.py                    # the README's main job
    python tools/run_demo.py --seeds 0 1 2      # the 3-seed comparison
    python tools/run_demo.py --ablate-mlm --ablate-pgu
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

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
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (world seed stays --world-seed)")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--ablate-mlm", action="store_true", help="also pre-train with beta = 0 (no MLM) and fine-tune from it")
    p.add_argument("--ablate-pgu", action="store_true", help="also fine-tune with gamma = 0 (no PGU) from UniPT")
    return p.parse_args(argv)


def run(cmd: list[str], log_path: str) -> None:
    """Run a tool as a subprocess, its output going to log_path; fail loudly with the log's tail."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    t0 = time.time()
    print(f"  $ {' '.join(cmd)}", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8") as f:
            tail = f.read()[-3000:]
        sys.exit(f"demo stage failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    print(f"    done in {time.time() - t0:.0f} s (log: {log_path})", flush=True)


def final_metrics(output_dir: str) -> dict[str, float]:
    """The run's last evaluation (``eval_results.json``, written by UniPTTrainer.test)."""
    import json

    with open(os.path.join(output_dir, "eval_results.json"), encoding="utf-8") as f:
        results = json.load(f)
    return {k: float(results[k]) for k in METRICS}


def main(argv=None) -> int:
    args = parse_args(argv)
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

    def train(name: str, seed: int, config: str, opts: list[str]) -> str:
        out = os.path.join(work, f"seed{seed}", name)
        if not os.path.exists(os.path.join(out, "model_final.pth")):
            epochs = sc["pretrain_epochs"] if "pretrain" in config else sc["finetune_epochs"]
            batch = sc["batch_pretrain"] if "pretrain" in config else sc["batch_finetune"]
            sched = [] if "pretrain" in config else ["SOLVER.STEPS", f"[{max(1, epochs * 3 // 4)}]",
                                                     "TEST.EVAL_PERIOD", str(epochs)]
            run([py, "tools/train_net.py", "--config-file", config, "DATASETS.ROOT", data, "OUTPUT_DIR", out,
                 "SEED", str(seed), "SOLVER.MAX_EPOCH", str(epochs), "SOLVER.CHECKPOINT_PERIOD", str(epochs),
                 "SOLVER.IMS_PER_BATCH", str(batch),
                 *sched, "MODEL.DEVICE", "cpu", *opts], os.path.join(work, "logs", f"seed{seed}_{name}.log"))
        runs.setdefault(name, {})[seed] = out
        return out

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

    print("[6/6] writing the report", flush=True)
    from unipt_plugin.synthetic.demo_report import write_report

    labels = {"unipt": "fine-tuned from UniPT", "scratch": "fine-tuned from scratch",
              "unipt_no_mlm": "from UniPT without MLM (beta = 0)", "unipt_no_pgu": "from UniPT without PGU (gamma = 0)"}
    results = {labels[n]: {s: final_metrics(d) for s, d in runs[n].items()} for n in labels if n in runs}
    first = args.seeds[0]
    md = write_report(report, results, loss_runs={"pre-training": runs["pretrain"][first],
                                                  "fine-tuning from UniPT": runs["unipt"][first],
                                                  "fine-tuning from scratch": runs["scratch"][first]},
                      finetune_dir=runs["unipt"][first], data_root=data,
                      extra_sections=[clip_md, os.path.join(report, "pseudo_texts", "report.md")],
                      elapsed_s=time.time() - t_start)
    print(md)
    print(f"report: {report}/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
