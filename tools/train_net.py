#!/usr/bin/env python
"""Train or evaluate UniPT with fast-reid's engine.

    python tools/train_net.py --config-file configs/CUHK-PEDES/vit_base.yml [KEY VALUE ...]
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
    python tools/train_net.py --config-file ... --resume          # continue in OUTPUT_DIR
    python tools/train_net.py --config-file ... --num-gpus 8      # DistributedDataParallel

Same arguments as fast-reid's ``tools/train_net.py`` (``default_argument_parser``).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import unipt_plugin  # noqa: E402,F401  (compat shims + registration, before fastreid)
from fastreid.engine import default_argument_parser, launch  # noqa: E402

from unipt_plugin.engine import UniPTCheckpointer, UniPTTrainer, default_setup, setup_cfg  # noqa: E402


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)

    if args.eval_only:
        cfg.defrost()
        cfg.MODEL.BACKBONE.PRETRAIN = False
        model = UniPTTrainer.build_model(cfg)
        UniPTCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        return UniPTTrainer.test(cfg, model)

    trainer = UniPTTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
