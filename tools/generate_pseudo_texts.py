#!/usr/bin/env python
"""Generate LUPerson-T pseudo texts for unlabeled person images (divide, conquer, combine).

    # one process, whole folder, then merge + report
    python tools/generate_pseudo_texts.py --images /data/LUPerson/images --output /data/LUPerson-T/annotations.json \
        --model ViT-B-16 --weights /models/ViT-B-16.pt --report-dir /data/LUPerson-T/report
    # shard 3 of 16 (any machine, any time; re-running skips finished chunks), later the merge
    python tools/generate_pseudo_texts.py --list images.txt --image-root /data/LUPerson/images \
        --output out/annotations.json --weights /models/ViT-B-16.pt --shard 3 --num-shards 16
    python tools/generate_pseudo_texts.py --list images.txt --output out/annotations.json --merge --report-dir out/report
    # 8 GPUs: one process per GPU through unipt_plugin.engine.launch; process r of W runs shard
    # shard*W + r of num_shards*W, and the merge runs at the end when --num-shards is 1
    python tools/generate_pseudo_texts.py --images ... --output ... --weights ... --num-gpus 8

See docs/pseudo_texts.md.
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import unipt_plugin  # noqa: E402,F401  (compat shims before fastreid)
from unipt_plugin.pseudo_text.pipeline import build_parser, main, run_merge, run_one_shard  # noqa: E402

# The plugin's INFO lines (progress every ~10 s with --no-progress, shard and merge summaries);
# other libraries at WARNING. At module level, so that processes started by launch have it too.
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("unipt_plugin").setLevel(logging.INFO)


def _worker(args):
    """One launched process: its global rank picks its shard; it runs on its own GPU."""
    from fastreid.utils import comm

    world, rank = comm.get_world_size(), comm.get_rank()
    device = f"cuda:{comm.get_local_rank()}" if args.device.startswith("cuda") else args.device
    stats = run_one_shard(args, args.shard * world + rank, args.num_shards * world, device)
    print(f"rank {rank}: shard {args.shard * world + rank}/{args.num_shards * world}: {stats}")


if __name__ == "__main__":
    args = build_parser().parse_args()
    world = args.num_gpus * args.num_machines
    if world <= 1 or args.merge:
        main(sys.argv[1:])
    else:
        from unipt_plugin.engine import launch

        launch(_worker, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,), device=args.device)
        if args.num_shards == 1 and args.machine_rank == 0 and args.num_machines == 1:
            run_merge(args)
