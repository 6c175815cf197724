#!/usr/bin/env python
"""Train or evaluate UniPT with fast-reid's engine.

    python tools/train_net.py --config-file configs/CUHK-PEDES/vit_base.yml [KEY VALUE ...]
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
    python tools/train_net.py --config-file configs/LUPerson-T/vit_base.yml --eval-only \
        MODEL.WEIGHTS logs/LUPerson-T/vit_base/model_final.pth DATASETS.TESTS '("CUHKPEDES",)'   # zero-shot
    python tools/train_net.py --config-file ... --resume          # continue in OUTPUT_DIR
    python tools/train_net.py --config-file ... --num-gpus 8      # one process per GPU (NCCL)
    python tools/train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes (gloo)

Same arguments as fast-reid's ``tools/train_net.py`` (``default_argument_parser``), with
``--dist-url`` defaulting to "auto". Exit codes: 0 done; 75 pre-empted (a checkpoint was saved:
run the same command with ``--resume``); 2 a config error; 1 any other failure.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import unipt_plugin  # noqa: E402,F401  (compat shims + registration, before fastreid)
from unipt_plugin.engine import (PREEMPTED_EXIT_CODE, ConfigError, OutputDirInUse, Preempted,  # noqa: E402
                                 UniPTCheckpointer, UniPTTrainer, default_argument_parser, default_setup, launch,
                                 setup_cfg)
from unipt_plugin.modeling.weight_loading import encoder_weights_skipped  # noqa: E402


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)

    if args.eval_only:
        # Every parameter comes from MODEL.WEIGHTS: the encoders' own weight files are not read.
        with encoder_weights_skipped():
            model = UniPTTrainer.build_model(cfg)
        UniPTCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        return UniPTTrainer.test(cfg, model)

    trainer = UniPTTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    try:
        return trainer.train()
    except Preempted:
        sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        # Read once here: the device picks the backend, and a bad config stops before any spawn.
        cfg = setup_cfg(args.config_file, args.opts)
        if args.eval_only and not cfg.DATASETS.TESTS:
            raise ConfigError("--eval-only with DATASETS.TESTS empty (as in the pre-training configs): nothing to "
                              "evaluate; name the test sets, e.g. DATASETS.TESTS '(\"CUHKPEDES\",)' (zero-shot "
                              "evaluation of a pre-training checkpoint: docs/evaluation.md)")
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            device=cfg.MODEL.DEVICE,
            forward_signals=cfg.SOLVER.PREEMPT_SIGNALS,
        )
    except (ConfigError, OutputDirInUse) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
