from .checkpoint import UniPTCheckpointer
from .defaults import setup_cfg
from .trainer import UniPTTrainer

__all__ = ["UniPTCheckpointer", "UniPTTrainer", "setup_cfg"]
