"""Building the run's config from a file and command-line overrides, shared by every tool."""
from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
import yaml
from fastreid.config import CfgNode

from ..config import get_unipt_cfg

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file, key and value."""


def setup_cfg(config_file: str = "", opts: Sequence[str] = (), freeze: bool = True) -> CfgNode:
    """fast-reid's config + the UniPT keys, merged with ``config_file`` (``_BASE_`` chains
    allowed) and ``opts`` (``KEY VALUE`` pairs), with device-dependent fixes applied:

    * ``MODEL.DEVICE`` "cuda" on a machine without CUDA falls back to "cpu" with a warning;
    * ``SOLVER.AMP.ENABLED`` is switched off on the CPU (fast-reid's AMP trainer needs CUDA).
    """
    cfg = get_unipt_cfg()
    if config_file:
        check_config_file(config_file)
        try:
            cfg.merge_from_file(config_file)
        except (KeyError, ValueError, TypeError, AssertionError) as e:
            raise ConfigError(f"{config_file}: {e}. Every key is listed with its default in "
                              f"unipt_plugin/config/defaults.py (and fast-reid's config).") from e
    if opts:
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, ValueError, TypeError, AssertionError) as e:
            raise ConfigError(f"command-line override {list(opts)}: {e}") from e
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: running on the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        logger.warning("SOLVER.AMP.ENABLED needs CUDA: training in fp32 on the CPU")
        cfg.SOLVER.AMP.ENABLED = False
    if freeze:
        cfg.freeze()
    return cfg


def check_config_file(path: str, named_by: str = "") -> None:
    """Refuse, with a ``ConfigError`` naming the file, a config file (or a file of its
    ``_BASE_`` chain) that is missing, not YAML, empty or not a mapping of keys at the top
    level, before yacs reads it (whose errors for these cases do not name the file)."""
    where = f" (named by _BASE_ in {named_by})" if named_by else ""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}{where}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}{where} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{path}{where}: expected a mapping of config keys at the top level "
                          f"(lines of KEY: value, as in configs/Base-UniPT-T2I.yml), got {got}")
    base = data.get("_BASE_")
    if base:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: _BASE_ must be a file path, got {base!r}")
        if not base.startswith(("/", "https://", "http://")):  # fast-reid resolves it like this
            base = os.path.join(os.path.dirname(path), base)
        check_config_file(base, named_by=path)


def default_setup(cfg: CfgNode, args) -> None:
    """fast-reid's ``default_setup`` (output folder, logs, config dump), plus the plugin's logger
    writing to the same console and ``log.txt``, every generator seeded with ``cfg.SEED``
    (offset by the process rank) when it is >= 0 (fast-reid seeds randomly), and
    deterministic kernels when ``cfg.DETERMINISTIC``."""
    from fastreid.engine import default_setup as fastreid_default_setup
    from fastreid.utils import comm
    from fastreid.utils.env import seed_all_rng
    from fastreid.utils.logger import setup_logger

    fastreid_default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="unipt_plugin")
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED + comm.get_rank())
    if cfg.DETERMINISTIC:
        use_deterministic_kernels()


def use_deterministic_kernels() -> None:
    """Ask torch for deterministic kernels everywhere (must run before the first CUDA matmul:
    cuBLAS reads CUBLAS_WORKSPACE_CONFIG when its handle is created)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
    logger.info("DETERMINISTIC: deterministic kernels on (CUBLAS_WORKSPACE_CONFIG=%s)",
                os.environ["CUBLAS_WORKSPACE_CONFIG"])
