"""Building the run's config from a file and command-line overrides, shared by every tool."""
from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
import yaml
from fastreid.config import CfgNode
from fastreid.engine import default_setup as fastreid_default_setup
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from ..config import get_unipt_cfg
from ..config.image_reid import image_reid_key_errors
from ..config.inherited import inherited_key_errors
from .output_lock import lock_output_dir
from .preemption import parse_signals
from .train_loop import amp_dtype

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file, key and value."""


# Decisions taken while reading the config, logged by default_setup once log.txt exists.
_pending_notes: list[str] = []


def cuda_unusable_reason() -> str:
    """Why ``torch.cuda.is_available()`` is False here, with what to check."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if torch.version.cuda is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build: install the build for your CUDA "
                f"(README, GPU install)")
    hints = [f"torch {torch.__version__} is built for CUDA {torch.version.cuda} and finds no usable GPU",
             "check the NVIDIA driver (nvidia-smi; it must support CUDA " + str(torch.version.cuda) + ")"]
    if visible is not None:
        hints.append(f"CUDA_VISIBLE_DEVICES={visible!r} (empty hides every GPU)")
    else:
        hints.append("that the container or job was started with GPUs (docker --gpus, SLURM --gres)")
    return "; ".join(hints)


def _resolve_device(cfg: CfgNode) -> None:
    device = str(cfg.MODEL.DEVICE)
    if device == "auto":
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
        _pending_notes.append(f"MODEL.DEVICE auto: running on {cfg.MODEL.DEVICE}"
                              + ("" if cfg.MODEL.DEVICE == "cuda" else f" ({cuda_unusable_reason()})"))
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"MODEL.DEVICE {device} but CUDA is not usable: {cuda_unusable_reason()}. "
                              f"To run on the CPU instead, set MODEL.DEVICE cpu (or auto).")
    elif device != "cpu":
        raise ConfigError(f"MODEL.DEVICE = {device!r}: expected cpu, cuda, cuda:N or auto")
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        _pending_notes.append("SOLVER.AMP.ENABLED is on but the run is on the CPU: mixed precision is off, "
                              "training in float32")
        cfg.SOLVER.AMP.ENABLED = False


def check_engine_keys(cfg: CfgNode) -> None:
    """Refuse engine settings that cannot work, naming the key, the value and what to use."""
    try:
        amp_dtype(cfg.SOLVER.AMP.DTYPE)
        parse_signals(cfg.SOLVER.PREEMPT_SIGNALS)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if int(cfg.SOLVER.LOG_PERIOD) < 1:
        raise ConfigError(f"SOLVER.LOG_PERIOD = {cfg.SOLVER.LOG_PERIOD}: must be >= 1 (iterations between console lines)")
    if int(cfg.SOLVER.ACCUM_STEPS) < 1:
        raise ConfigError(f"SOLVER.ACCUM_STEPS = {cfg.SOLVER.ACCUM_STEPS}: must be >= 1")


def setup_cfg(config_file: str = "", opts: Sequence[str] = (), freeze: bool = True) -> CfgNode:
    """fast-reid's config + the UniPT keys, merged with ``config_file`` (``_BASE_`` chains
    allowed) and ``opts`` (``KEY VALUE`` pairs), checked, with the device resolved:

    * ``MODEL.DEVICE`` "cuda" (or "cuda:N") when CUDA is not usable is a :class:`ConfigError`
      naming torch's CUDA build and what to check; it never silently becomes a CPU run;
    * ``MODEL.DEVICE`` "auto" becomes "cuda" when CUDA is usable, else "cpu";
    * ``SOLVER.AMP.ENABLED`` is switched off on the CPU;
    * a fast-reid key the plugin does not honour, set to a non-default value, is a
      :class:`ConfigError` naming it and what to use instead (``config/inherited.py``);
    * a key the run's kind does not read (a text-image key with fast-reid's ``Baseline``, a
      transfer key with a text-image meta-architecture), set to a non-default value, is a
      :class:`ConfigError` too (``config/image_reid.py``).

    The decisions are kept and written to ``log.txt`` by :func:`default_setup` (the logger does
    not exist yet when the config is read).
    """
    _pending_notes.clear()
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
    defaults = get_unipt_cfg()
    inherited = inherited_key_errors(cfg, defaults)
    errors = inherited + image_reid_key_errors(cfg, defaults)
    if errors:
        where = f" in {config_file} or the overrides" if config_file else ""
        what = "fast-reid key(s)" if len(inherited) == len(errors) else "key(s)"
        raise ConfigError(f"{len(errors)} {what}{where} cannot be used:\n  " + "\n  ".join(errors))
    _resolve_device(cfg)
    check_engine_keys(cfg)
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
    """fast-reid's ``default_setup`` (output folder, logs, config dump), after taking the output
    folder's run lock (:func:`~unipt_plugin.engine.output_lock.lock_output_dir`: a second live run
    on the same OUTPUT_DIR is refused), plus the plugin's logger writing to the same console and
    ``log.txt`` (with the device decisions of :func:`setup_cfg`), every generator seeded with
    ``cfg.SEED`` (offset by the process rank) when it is >= 0 (fast-reid seeds randomly), TF32
    on CUDA per ``cfg.TF32``, and deterministic kernels when ``cfg.DETERMINISTIC``."""
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        lock_output_dir(cfg.OUTPUT_DIR)  # before anything is written there
    fastreid_default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="unipt_plugin")
    while _pending_notes:
        logger.info(_pending_notes.pop(0))
    logger.info("running on %s with %d process(es)%s", cfg.MODEL.DEVICE, comm.get_world_size(),
                f", mixed precision {cfg.SOLVER.AMP.DTYPE}" if cfg.SOLVER.AMP.ENABLED else ", float32")
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED + comm.get_rank())
    if cfg.MODEL.DEVICE.startswith("cuda"):
        set_tf32(bool(cfg.TF32))
    if cfg.DETERMINISTIC:
        use_deterministic_kernels()


def set_tf32(enabled: bool) -> None:
    """TF32 tensor cores for float32 matmuls and convolutions on CUDA (the TF32 key)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    logger.info("TF32 matmuls %s", "on" if enabled else "off")


def use_deterministic_kernels() -> None:
    """Ask torch for deterministic kernels everywhere (must run before the first CUDA matmul:
    cuBLAS reads CUBLAS_WORKSPACE_CONFIG when its handle is created)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)
    logger.info("DETERMINISTIC: deterministic kernels on (CUBLAS_WORKSPACE_CONFIG=%s)",
                os.environ["CUBLAS_WORKSPACE_CONFIG"])
