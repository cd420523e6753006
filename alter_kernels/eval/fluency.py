"""Fluency of a model's open-ended answers and of its language modelling (issues 21 and 24).

Measures of generations and of language modelling, for any Hugging Face causal LM (patched or not):

- **text statistics** of generations (no model needed): :func:`fluency_stats` gives the
  repetition rate (share of a generation's n-grams that repeat an earlier n-gram of the same
  generation; a loop such as ``"his his his ..."`` scores near 1), distinct-1 / distinct-2 over
  the set of generations, and the mean length in words. :func:`degenerate_share` counts the
  generations whose repetition exceeds a threshold taken from a reference model's own
  generations (:func:`repetition_threshold`, e.g. its 95th percentile), so "degenerate" is
  judged against what the reference does, not an absolute number;
- **model measures** live in :mod:`.fluency_model` (``open_generations``, greedy answers to open
  prompts, and ``text_nll``, mean token NLL of plain passages; they call the model through
  :mod:`.tofu`, which imports this module); :func:`nll_ratio` divides a model's passage NLL by
  the base model's;
- **results per split** (issue 24): :func:`split_fluency` gives one split's statistics with the
  degenerate share judged against a reference model's generations on the same questions (the
  retain model in TOFU terms; ``None`` without one), :func:`split_results` the ``fluency_forget``
  / ``fluency_retain`` pair that evaluate_tofu, alter-eval and the demo report, and
  :func:`fluency_ratio` the fluency term of the DEV selection score.

The n-gram statistics reuse :func:`alter_kernels.eval.metrics.repetition_rate` and
:func:`~alter_kernels.eval.metrics.distinct_n` (one definition each; words as ``rouge_score``
tokenises them).
"""
from __future__ import annotations

import math
from typing import Sequence

from .metrics import distinct_n, repetition_rate, rouge_tokens

REPETITION_N = 2               # n of the repetition rate reported as "repetition"
DEGENERATE_QUANTILE = 0.95     # a generation is degenerate above this quantile of the reference's


def _quantile(values: Sequence[float], q: float) -> float:
    vals = sorted(float(v) for v in values)
    if not vals:
        raise ValueError("quantile of no values")
    pos = q * (len(vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def repetition_per_text(texts: Sequence[str], n: int = REPETITION_N) -> list[float]:
    """The repetition rate of each generation on its own (0 for one without n-grams)."""
    return [repetition_rate([t], n) for t in texts]


def repetition_threshold(reference_texts: Sequence[str], q: float = DEGENERATE_QUANTILE,
                         n: int = REPETITION_N) -> float:
    """The q-quantile of the reference generations' per-text repetition (linear interpolation)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"repetition_threshold: q must be in [0, 1], got {q}")
    return _quantile(repetition_per_text(reference_texts, n), q)


def degenerate_share(texts: Sequence[str], threshold: float, n: int = REPETITION_N) -> float:
    """Share of generations whose repetition rate is above ``threshold`` (0 for no texts)."""
    reps = repetition_per_text(texts, n)
    return sum(r > threshold for r in reps) / len(reps) if reps else 0.0


def fluency_stats(texts: Sequence[str], n: int = REPETITION_N, threshold: float | None = None) -> dict:
    """Text statistics of a set of generations: ``repetition`` (mean per-text repetition rate of
    n-grams), ``distinct_1``, ``distinct_2`` (over the set), ``mean_words``, ``n`` and, with a
    ``threshold``, ``degenerate_share``."""
    texts = list(texts)
    out = {"n": len(texts), "repetition": repetition_rate(texts, n), "distinct_1": distinct_n(texts, 1),
           "distinct_2": distinct_n(texts, 2),
           "mean_words": (sum(len(rouge_tokens(t)) for t in texts) / len(texts)) if texts else 0.0}
    if threshold is not None:
        out["degenerate_share"] = degenerate_share(texts, threshold, n)
    return out


def nll_ratio(nll: float, base_nll: float) -> float:
    """A model's passage NLL over the base model's (1 = unchanged, > 1 = worse)."""
    if not base_nll > 0:
        raise ValueError(f"nll_ratio: the base NLL must be > 0, got {base_nll}")
    return float(nll) / float(base_nll)


def split_fluency(texts: Sequence[str], reference_texts: Sequence[str] | None = None,
                  n: int = REPETITION_N, q: float = DEGENERATE_QUANTILE) -> dict:
    """:func:`fluency_stats` of one split's generations, with "degenerate" judged against a
    reference model's generations on the same questions (one per text, same order): a generation is
    degenerate when its repetition is above the reference's q-quantile (:func:`repetition_threshold`).
    Adds ``repetition_n``, ``degenerate_quantile``, ``degenerate_threshold``,
    ``reference_repetition`` (the reference's mean repetition) and ``reference_degenerate_share``
    (the reference's own share above its threshold); without a reference, ``degenerate_share`` and
    these reference numbers are None (not computed)."""
    texts = list(texts)
    ref = None if reference_texts is None else list(reference_texts)
    if ref is not None and len(ref) != len(texts):
        raise ValueError(f"split_fluency: {len(ref)} reference generations for {len(texts)} generations "
                         "(the reference must answer the same questions)")
    thr = repetition_threshold(ref, q, n) if ref else None
    out = fluency_stats(texts, n, thr)
    out.update(repetition_n=n, degenerate_quantile=q, degenerate_threshold=thr,
               degenerate_share=out.get("degenerate_share"),
               reference_repetition=repetition_rate(ref, n) if ref else None,
               reference_degenerate_share=degenerate_share(ref, thr, n) if ref else None)
    return out


def split_results(generations: dict, reference: dict | None = None) -> dict:
    """``{"fluency_forget": ..., "fluency_retain": ...}`` (:func:`split_fluency`) from
    ``generations`` = {"forget": [...], "retain": [...]} and the reference model's generations in
    the same form (a split missing from ``reference``, or ``reference=None``: no degenerate share)."""
    reference = reference or {}
    return {f"fluency_{s}": split_fluency(generations[s], reference.get(s)) for s in ("forget", "retain")}


def fluency_ratio(repetition: float, reference_repetition: float) -> float:
    """(1 - repetition) / (1 - reference_repetition), capped at 1: 1 for answers that repeat no more
    than the reference's, towards 0 for a loop (repetition -> 1). 1 when the reference itself
    repeats every n-gram (no room to compare against)."""
    for name, v in (("repetition", repetition), ("reference_repetition", reference_repetition)):
        if not (0.0 <= v <= 1.0):
            raise ValueError(f"fluency_ratio: {name} must be in [0, 1], got {v}")
    if reference_repetition >= 1.0:
        return 1.0
    return min(1.0, (1.0 - repetition) / (1.0 - reference_repetition))
