from .io import (UnsafeCheckpointError, atomic_open, atomic_torch_save, atomic_write_json,
                 atomic_write_text, load_weights_file)

__all__ = ["UnsafeCheckpointError", "atomic_open", "atomic_torch_save", "atomic_write_json",
           "atomic_write_text", "load_weights_file"]
