"""Fluency measures that call a model (issues 21 and 24): greedy answers to open-ended prompts
(:func:`open_generations`) and the mean token NLL of plain passages (:func:`text_nll`); the text
statistics of those answers and :func:`~alter_kernels.eval.fluency.nll_ratio` are in
:mod:`.fluency` (model-free, imported by :mod:`.tofu`; kept apart so there is no import cycle)."""
from __future__ import annotations

from typing import Sequence

from .format import QAFormat
from .tofu import greedy_generate, sequence_nll

OPEN_MAX_NEW_TOKENS = 56       # open-ended answers: long enough for a loop to show, short for CPU


def open_generations(model, tokenizer, prompts: Sequence[str], fmt: QAFormat | None = None,
                     max_new_tokens: int = OPEN_MAX_NEW_TOKENS, batch_size: int = 16) -> list[str]:
    """Greedy answers (decoded, special tokens skipped) to open-ended prompts."""
    fmt = fmt or QAFormat()
    ids = [fmt.prompt_ids(tokenizer, p) for p in prompts]
    outs = greedy_generate(model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [tokenizer.decode(o, skip_special_tokens=True) for o in outs]


def text_nll(model, tokenizer, texts: Sequence[str], batch_size: int = 8) -> float:
    """Mean token NLL of plain passages (with the tokenizer's special tokens; every token after
    the first is scored), averaged over the tokens of all passages."""
    pairs = []
    for t in texts:
        ids = list(tokenizer(t, add_special_tokens=True).input_ids)
        if len(ids) < 2:
            raise ValueError(f"text_nll: passage too short to score: {t!r}")
        pairs.append((ids, ids))
    if not pairs:
        raise ValueError("text_nll: no passages")
    per = sequence_nll(model, tokenizer, pairs, batch_size=batch_size, reduction="sum")
    tokens = sum(len(ids) - 1 for ids, _ in pairs)
    return float(per.sum()) / tokens
