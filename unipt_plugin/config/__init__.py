from .defaults import add_unipt_config, get_unipt_cfg

__all__ = ["add_unipt_config", "get_unipt_cfg"]
