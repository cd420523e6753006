"""A real-knowledge unlearning benchmark in the style of RWKU on a pretrained chat model
(SmolLM2-135M-Instruct by default): forget facts the model already knows, with no finetuning.

- :mod:`.facts_capitals`, :mod:`.facts_books`, :mod:`.general`: the facts and texts, written for
  this project; :mod:`.data` turns them into rows (forget, held-out wordings, neighbours,
  false-positive probes, general facts);
- :mod:`.score`: answers through the chat template, alias matching, accuracy on base-known items;
- :mod:`.bench`: the base pass, cached cells (method, family, lr scale, seed) through ``ak.unlearn``;
- :mod:`.report`: DEV selection score, results.json, markdown tables; :mod:`.cli`: the command
  ``python -m alter_kernels.realknow`` (docs/realknow.md).
"""
from .data import FAMILIES, FORGET_WORDINGS, KINDS, candidate_facts, family_rows, general_rows
from .score import is_correct, normalise

__all__ = ["FAMILIES", "FORGET_WORDINGS", "KINDS", "candidate_facts", "family_rows", "general_rows",
           "is_correct", "normalise"]
