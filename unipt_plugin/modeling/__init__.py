from . import backbones, text_encoders, meta_arch  # noqa: F401  (registration)
