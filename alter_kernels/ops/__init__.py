"""Public ops. Each module is the single dispatch point of its op."""
from .asym_lora import asym_lora
from .entropy import lm_head_entropy, tsallis_entropy
from .routing import route
from ._fake import register_fakes

register_fakes()

__all__ = ["asym_lora", "lm_head_entropy", "tsallis_entropy", "route"]
