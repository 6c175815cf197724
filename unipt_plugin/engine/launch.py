"""Starting one process per device: fast-reid's ``launch`` in shape, with what it lacks.

fast-reid's ``launch`` (``fastreid/engine/launch.py``) is NCCL-only, runs its first barrier
before ``torch.cuda.set_device`` (NCCL then guesses each rank's GPU), passes no ``device_id``,
never destroys the process group and defaults ``--dist-url`` to a fixed port per user. This
one, called the same way:

* on CUDA: ``torch.cuda.set_device(local_rank)`` first, then
  ``init_process_group("nccl", device_id=cuda:local_rank)``, then the first barrier;
* on the CPU (``device="cpu"``): the gloo backend, so ``--num-gpus 2 MODEL.DEVICE cpu`` starts
  two real processes (the multi-process path runs in CI, which has no GPU), each with
  cores / N torch threads unless OMP_NUM_THREADS is set;
* the process group is destroyed when the worker returns or raises;
* ``dist_url="auto"`` (the default of :func:`default_argument_parser`) picks a free port on
  localhost; multi-machine jobs name a ``tcp://`` address, as with fast-reid;
* the pre-emption signals (``SOLVER.PREEMPT_SIGNALS``) received by the launching process are
  forwarded to its workers, and a worker's exit code (e.g. :data:`PREEMPTED_EXIT_CODE`) becomes
  the launcher's.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastreid.engine import default_argument_parser as fastreid_parser
from fastreid.utils import comm

__all__ = ["default_argument_parser", "launch", "PREEMPTED_EXIT_CODE"]

logger = logging.getLogger(__name__)

#: Exit code of a run stopped by a pre-emption signal after saving its checkpoint
#: (EX_TEMPFAIL of sysexits.h: "temporary failure, try again"): resume it with ``--resume``.
PREEMPTED_EXIT_CODE = 75


def default_argument_parser() -> argparse.ArgumentParser:
    """fast-reid's argument parser (``--config-file``, ``--resume``, ``--eval-only``,
    ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, ``opts``) with
    ``--dist-url`` defaulting to "auto" (a free localhost port: two jobs on one host do not
    collide) instead of a fixed port per user."""
    parser = fastreid_parser()
    parser.set_defaults(dist_url="auto")
    for action in parser._actions:
        if action.dest == "dist_url":
            action.help = ("initialization URL for pytorch distributed backend: 'auto' (default) = a free "
                           "port on localhost (one machine); tcp://HOST:PORT for multi-machine jobs")
        if action.dest == "num_gpus":
            action.help = ("number of processes per machine: one per GPU on CUDA; with MODEL.DEVICE cpu, "
                           "that many CPU processes (gloo)")
    return parser


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(main_func: Callable[..., Any], num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str | None = "auto", args: Sequence[Any] = (), device: str = "cuda",
           forward_signals: Sequence[str] = ("SIGTERM",)) -> None:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on this machine (one per
    GPU on CUDA; CPU processes with ``device="cpu"``), or in this process when the world has
    one process.

    Args:
        main_func: picklable function (module level) run in every process.
        num_gpus_per_machine: processes on this machine.
        num_machines, machine_rank: the job's machines and this one's index.
        dist_url: "auto" (one machine: a free localhost port) or ``tcp://HOST:PORT``.
        device: "cuda" (NCCL, one GPU per process) or "cpu" (gloo).
        forward_signals: signal names that the launcher passes on to its workers.
    Raises:
        ValueError: a setting that cannot work (naming it).
        SystemExit: with a worker's non-zero exit code.
    """
    world_size = int(num_machines) * int(num_gpus_per_machine)
    if world_size <= 1:
        main_func(*args)
        return
    use_cuda = str(device).startswith("cuda")
    if use_cuda:
        visible = torch.cuda.device_count()
        if num_gpus_per_machine > visible:
            raise ValueError(f"--num-gpus {num_gpus_per_machine} but this machine shows {visible} CUDA device(s) "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}): "
                             f"lower --num-gpus or make the GPUs visible")
    if dist_url in (None, "", "auto"):
        if num_machines > 1:
            raise ValueError("--dist-url auto only works on one machine: give every machine the same "
                             "tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    context = mp.start_processes(
        _distributed_worker, nprocs=num_gpus_per_machine, join=False, start_method="spawn",
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args), use_cuda),
    )
    forwarded = [getattr(signal, name) for name in forward_signals]

    def forward(signum, _frame):
        for process in context.processes:
            if process.is_alive() and process.pid:
                os.kill(process.pid, signum)

    previous = {s: signal.signal(s, forward) for s in forwarded}
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as e:
        if e.exit_code and e.exit_code > 0:
            raise SystemExit(e.exit_code) from None
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _distributed_worker(local_rank: int, main_func: Callable[..., Any], world_size: int, num_gpus_per_machine: int,
                        machine_rank: int, dist_url: str, args: tuple, use_cuda: bool) -> None:
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    kwargs: dict[str, Any] = {}
    if not use_cuda and "OMP_NUM_THREADS" not in os.environ:
        # CPU processes share the cores: one full-width thread pool each would oversubscribe
        # them (torchrun sets OMP_NUM_THREADS=1 for the same reason).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_gpus_per_machine))
    if use_cuda:
        torch.cuda.set_device(local_rank)  # before the group: NCCL binds this rank to this GPU
        kwargs["device_id"] = torch.device("cuda", local_rank)
    try:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method=dist_url,
                                world_size=world_size, rank=global_rank, **kwargs)
    except Exception:
        logger.error("could not join the process group at %s (rank %d of %d)", dist_url, global_rank, world_size)
        raise
    try:
        comm.synchronize()  # every process has joined before any starts working
        num_machines = world_size // num_gpus_per_machine
        for i in range(num_machines):  # the per-machine group fast-reid's comm.get_local_rank reads
            ranks_on_i = list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine))
            group = dist.new_group(ranks_on_i)
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = group
        main_func(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        comm._LOCAL_PROCESS_GROUP = None
    sys.stdout.flush()
