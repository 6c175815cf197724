"""One live run per output folder.

Two runs writing checkpoints, ``log.txt`` and ``last_checkpoint`` into the same OUTPUT_DIR
corrupt each other's resume state. :func:`lock_output_dir` takes an exclusive ``fcntl.flock``
on ``OUTPUT_DIR/.run.lock`` for the life of the process and writes the holder's pid, host and
command into it. The kernel drops the lock when its process dies, however it dies (SIGKILL
included), so a stale lock file from a killed run never blocks the next run.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys

__all__ = ["OutputDirInUse", "lock_output_dir", "LOCK_NAME"]

LOCK_NAME = ".run.lock"
_held: dict[str, int] = {}  # realpath of the folder -> open file descriptor (kept open = lock held)


class OutputDirInUse(RuntimeError):
    """Another live process holds the output folder's lock; the message names it."""


def lock_output_dir(output_dir: str) -> str:
    """Take the run lock of ``output_dir`` (created if missing) for this process; returns the
    lock file's path. Re-locking a folder this process already holds is a no-op.

    Raises:
        OutputDirInUse: a live process holds it (pid, host and command named).
    """
    os.makedirs(output_dir, exist_ok=True)
    key = os.path.realpath(output_dir)
    path = os.path.join(output_dir, LOCK_NAME)
    if key in _held:
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
            holder = f.read().strip() or "unknown process"
        raise OutputDirInUse(
            f"OUTPUT_DIR {output_dir} is in use by a live run ({holder}); two runs in one folder would overwrite "
            f"each other's checkpoints. Wait for it, stop it, or give this run another OUTPUT_DIR "
            f"(e.g. OUTPUT_DIR {output_dir.rstrip('/')}_2)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)}\n".encode())
    os.fsync(fd)
    _held[key] = fd
    return path
