"""Unlearning engine: ALTER, the spec-7 baselines, data loading, sub-domains, checkpoints; finetuning
(:func:`finetune`) on the same loop."""
from .data import DataError, load_rows
from ..model.experts import add_forget_experts, frozen_experts
from .checkpoint import CheckpointError
from .methods import METHODS, alter_loss
from .options import OptionError
from .subdomains import kmeans
from .batches import AlterData, UnlearnData
from .options import DEFAULTS, UnlearnOptions
from .result import UnlearnDivergedError, UnlearnError, UnlearnInterrupted, UnlearnResult
from .setup import prepare_alter
from .trainer import unlearn
from .finetuning import finetune

__all__ = ["unlearn", "finetune", "UnlearnResult", "UnlearnError", "UnlearnDivergedError", "DataError", "METHODS",
           "DEFAULTS", "UnlearnOptions", "add_forget_experts", "frozen_experts", "load_rows", "kmeans",
           "prepare_alter", "UnlearnData", "AlterData", "alter_loss", "OptionError", "CheckpointError", "UnlearnInterrupted"]
