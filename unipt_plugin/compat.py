"""Make fast-reid 1.4.0 importable on Python 3.11, torch 2.x and numpy 2.x.

fast-reid 1.4.0 (the last PyPI release) was written for torch 1.x and Python <= 3.9. On
today's stack exactly these imports fail, and this module provides them *before* fastreid is
imported (``unipt_plugin/__init__.py`` imports this module first):

* ``from torch._six import string_classes`` (``fastreid/data/build.py``): ``torch._six`` was
  removed in torch 2.0. We register a tiny module that provides ``string_classes = (str,)``.
* ``from collections import Mapping`` (``fastreid/evaluation/testing.py`` and
  ``fastreid/data/build.py``): the ABC aliases left ``collections`` in Python 3.10. We alias
  ``collections.Mapping`` to ``collections.abc.Mapping``.

numpy 2.x needs no shim for the modules the plugin uses (``np.bool`` is back in numpy 2).

Nothing else is patched. Known behaviours of fast-reid that are *not* patched here but avoided
by the plugin: ``DataLoaderX`` needs CUDA (the plugin uses its own loader), ``ReidEvaluator``
compiles a Cython extension (the plugin has its own evaluator).
"""
from __future__ import annotations

import collections
import collections.abc
import sys
import types

_ABC_NAMES = ("Mapping",)


def apply() -> list[str]:
    """Install the shims that are missing; return the names of those installed (idempotent)."""
    installed: list[str] = []
    if "torch._six" not in sys.modules:
        try:
            import torch._six  # noqa: F401  (present on torch 1.x)
        except ImportError:
            six = types.ModuleType("torch._six")
            six.string_classes = (str,)
            six.int_classes = (int,)
            six.inf = float("inf")
            sys.modules["torch._six"] = six
            import torch

            torch._six = six
            installed.append("torch._six")
    for name in _ABC_NAMES:
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
            installed.append(f"collections.{name}")
    return installed


INSTALLED = apply()
