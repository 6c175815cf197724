from .checkpoint import UniPTCheckpointer
from .defaults import ConfigError, default_setup, setup_cfg
from .launch import PREEMPTED_EXIT_CODE, default_argument_parser, launch
from .output_lock import OutputDirInUse
from .preemption import Preempted
from .trainer import UniPTTrainer

__all__ = ["ConfigError", "OutputDirInUse", "PREEMPTED_EXIT_CODE", "Preempted", "UniPTCheckpointer",
           "UniPTTrainer", "default_argument_parser", "default_setup", "launch", "setup_cfg"]
