"""Atomic file output and safe weight loading, shared by every tool and module.

Rules of the project: no half-written output (write to a temporary file in the same folder,
then ``os.replace``), and no pickled code executed when loading weights (``torch.load`` with
``weights_only=True``, or safetensors).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import torch
from safetensors.torch import load_file

__all__ = [
    "atomic_open",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_torch_save",
    "load_weights_file",
    "UnsafeCheckpointError",
]


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    If the body raises (or the process dies), ``path`` keeps its previous content and the
    temporary file is removed (on an exception) or left as ``.<name>.tmp*`` (on a kill).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as JSON (UTF-8, non-ASCII kept) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


class UnsafeCheckpointError(RuntimeError):
    """A weights file needs arbitrary pickled code to load and was refused."""


def load_weights_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Mapping[str, Any]:
    """Load a checkpoint or weights file without executing pickled code.

    ``.safetensors`` files go through safetensors; anything else through
    ``torch.load(weights_only=True)``. TorchScript archives (OpenAI's CLIP ``.pt``) are read
    with ``torch.jit.load`` and their ``state_dict()`` is returned: TorchScript deserialises
    no Python objects.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        UnsafeCheckpointError: the file carries pickled objects other than tensors and plain
            containers (the message names the file and the fix).
        ValueError: the file is empty or not a checkpoint at all (e.g. JSON text).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes); expected a checkpoint written by torch.save, or .safetensors")
    if path.suffix == ".safetensors":
        return load_file(str(path), device=str(map_location))
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except RuntimeError as e:
        # A TorchScript archive (e.g. OpenAI's CLIP ViT-B-16.pt) is not a pickle of tensors.
        if "TorchScript" in str(e) or "torch.jit.load" in str(e):
            return torch.jit.load(str(path), map_location=map_location).state_dict()
        raise
    except Exception as e:  # pickle.UnpicklingError and friends
        if "Weights only load failed" in str(e) and "Unsupported global" not in str(e):
            # the unpickler stopped at an opcode no checkpoint contains: not a pickle at all
            raise ValueError(f"{path}: not a PyTorch checkpoint (it does not unpickle: "
                             f"{type(e).__name__}); expected a file written by torch.save, or .safetensors") from e
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "Weights only load failed" in str(e):
            raise UnsafeCheckpointError(
                f"{path}: refused to load; the file contains pickled Python objects beyond "
                f"tensors and plain containers, which could run code. Re-save it as a plain "
                f"state_dict (torch.save(model.state_dict(), ...)) or as .safetensors."
            ) from e
        raise
