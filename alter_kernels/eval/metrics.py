"""Model-free metric functions: ROUGE-L, KS forget quality, harmonic mean, truth-ratio scores,
fluency proxies. No torch here: these take numbers and strings.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

_TOKEN_RE = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """The tokenisation of the ``rouge_score`` package (without stemming): lowercase, every run
    of characters other than a-z / 0-9 is a separator."""
    return [t for t in _TOKEN_RE.split(text.lower()) if t]


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else (prev[j] if prev[j] >= cur[j - 1] else cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> dict:
    """ROUGE-L of a prediction against a reference: {"precision", "recall", "f"}.

    recall = LCS / reference tokens (TOFU reports this one), precision = LCS / prediction tokens,
    f = their harmonic mean. An empty reference gives recall 0 (as rouge_score does).
    """
    p, r = rouge_tokens(prediction), rouge_tokens(reference)
    lcs = lcs_length(p, r)
    prec = lcs / len(p) if p else 0.0
    rec = lcs / len(r) if r else 0.0
    f = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return {"precision": prec, "recall": rec, "f": f}


def rouge_l_recall(prediction: str, reference: str) -> float:
    return rouge_l(prediction, reference)["recall"]


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean; 0 if any value is 0 (as scipy.stats.hmean); NaN if any is NaN; ValueError
    for negative values or an empty input."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("harmonic_mean of no values")
    if any(math.isnan(v) for v in vals):
        return float("nan")
    if any(v < 0 for v in vals):
        raise ValueError(f"harmonic_mean needs values >= 0, got {vals}")
    if any(v == 0 for v in vals):
        return 0.0
    return len(vals) / sum(1.0 / v for v in vals)


def forget_quality(truth_ratios_unlearned: Sequence[float], truth_ratios_retain: Sequence[float]) -> float:
    """TOFU forget quality: p-value of the two-sample KS test between the truth ratios of the
    unlearned model and those of the retain model on the forget questions. 1.0 means the two
    samples are indistinguishable; tiny values mean the model still behaves unlike the retain model.
    """
    from scipy.stats import ks_2samp
    a = [float(x) for x in truth_ratios_unlearned]
    b = [float(x) for x in truth_ratios_retain]
    if not a or not b:
        raise ValueError("forget_quality needs two non-empty samples of truth ratios")
    return float(ks_2samp(a, b).pvalue)


def truth_ratio_score(ratios: Sequence[float], split: str = "retain") -> float:
    """TOFU's aggregate of truth ratios R = P_pert / P_para.

    retain / real authors / world facts: mean(max(0, 1 - R)) (higher = prefers the truth);
    forget: mean(min(R, 1/R)) (1 = indifferent between true and false answers).
    """
    rs = [float(r) for r in ratios]
    if not rs:
        return float("nan")
    if split == "forget":
        return sum(min(r, 1.0 / r) if r > 0 else 0.0 for r in rs) / len(rs)
    return sum(max(0.0, 1.0 - r) for r in rs) / len(rs)


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n over a set of generations: unique n-grams / all n-grams (0 when there are none)."""
    grams = [g for t in texts for g in _ngrams(rouge_tokens(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: Sequence[str], n: int = 2) -> float:
    """Share of n-grams in a generation that repeat an earlier n-gram of the same generation,
    averaged over generations that have any n-gram (0 = no repetition; degenerate loops near 1)."""
    rates = []
    for t in texts:
        g = _ngrams(rouge_tokens(t), n)
        if g:
            rates.append(1.0 - len(set(g)) / len(g))
    return sum(rates) / len(rates) if rates else 0.0
