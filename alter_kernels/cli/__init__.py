"""The command lines (console scripts of setup.py):

- ``alter-unlearn`` (:mod:`alter_kernels.cli.unlearn`): unlearn a forget set from a causal LM;
  also ``python -m alter_kernels.cli`` (what ``torchrun -m`` / ``accelerate launch -m`` start);
- ``alter-eval`` (:mod:`alter_kernels.cli.eval`): TOFU evaluation of a model and its adapter;
- ``alter-finetune`` (:mod:`alter_kernels.cli.finetune`): finetune a model on question/answer rows
  (fully or LoRA merged) into an HF folder the other commands take.

``alter_kernels.cli.main`` / ``build_parser`` are alter-unlearn's.
"""
from .unlearn import build_parser, main

__all__ = ["build_parser", "main"]
