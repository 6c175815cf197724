from .checkpoint import UniPTCheckpointer
from .defaults import ConfigError, default_setup, setup_cfg
from .trainer import UniPTTrainer

__all__ = ["ConfigError", "UniPTCheckpointer", "UniPTTrainer", "default_setup", "setup_cfg"]
