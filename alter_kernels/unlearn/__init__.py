"""Unlearning engine: ALTER, the spec-7 baselines, data loading, sub-domains, checkpoints."""
from .data import DataError, load_rows
from .experts import add_forget_experts, frozen_experts
from .methods import METHODS
from .subdomains import kmeans
from .trainer import DEFAULTS, UnlearnDivergedError, UnlearnError, UnlearnResult, unlearn

__all__ = ["unlearn", "UnlearnResult", "UnlearnError", "UnlearnDivergedError", "DataError", "METHODS",
           "DEFAULTS", "add_forget_experts", "frozen_experts", "load_rows", "kmeans"]
