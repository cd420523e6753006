"""Public ops. Each module is the single dispatch point of its op."""
from .asym_lora import asym_lora
from .entropy import lm_head_entropy, tsallis_entropy
from .routing import route

__all__ = ["asym_lora", "lm_head_entropy", "tsallis_entropy", "route"]
