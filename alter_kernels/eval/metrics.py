"""Model-free metric functions: ROUGE-L (through the ``rouge_score`` package), KS forget quality,
harmonic mean, truth ratios and their scores, fluency proxies. No torch here: these take numbers
and strings.
"""
from __future__ import annotations

import functools
import math
from typing import Iterable, Sequence

TRUTH_RATIO_MODES = ("geometric", "arithmetic")


@functools.lru_cache(maxsize=None)
def _scorer():
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


@functools.lru_cache(maxsize=None)
def _tokenizer(stem: bool):
    from rouge_score import tokenizers
    return tokenizers.DefaultTokenizer(use_stemmer=stem)


def rouge_tokens(text: str, stem: bool = False) -> list[str]:
    """The tokenisation of the ``rouge_score`` package: lowercase, every run of characters other
    than a-z / 0-9 is a separator; ``stem=True`` applies its Porter stemmer to tokens longer than
    3 characters, as ``RougeScorer(use_stemmer=True)`` does."""
    return _tokenizer(bool(stem)).tokenize(text)


def rouge_l(prediction: str, reference: str) -> dict:
    """ROUGE-L of a prediction against a reference, computed by the ``rouge_score`` package with
    ``use_stemmer=True`` (as TOFU and open-unlearning score generations): {"precision", "recall",
    "f"}. recall = LCS / reference tokens (what TOFU reports), precision = LCS / prediction
    tokens, f = their harmonic mean. An empty reference or prediction gives 0."""
    s = _scorer().score(reference, prediction)["rougeL"]
    return {"precision": float(s.precision), "recall": float(s.recall), "f": float(s.fmeasure)}


def rouge_l_recall(prediction: str, reference: str) -> float:
    return rouge_l(prediction, reference)["recall"]


def truth_ratio_from_nll(para_nll: Sequence[float], pert_nll: Sequence[Sequence[float]],
                         mode: str = "geometric") -> list[float]:
    """Truth ratios R = P_pert / P_para from mean token NLLs (per-token-normalised probabilities
    P = exp(-NLL)): ``para_nll`` [n] of the paraphrased true answer, ``pert_nll`` [n][k] of the k
    perturbed answers (NaN entries are skipped, so rows may have different k).

    - ``"geometric"`` (default): P_pert = geometric mean of the perturbed probabilities,
      R = exp(NLL_para - mean_j NLL_pert_j). TOFU's aggregation script (aggregate_eval_stat.py,
      which produced its published forget-quality numbers) and open-unlearning.
    - ``"arithmetic"``: P_pert = arithmetic mean, R = mean_j exp(NLL_para - NLL_pert_j). The
      truth-ratio equation of the TOFU paper and its in-training evaluation.

    By Jensen's inequality the arithmetic R is never below the geometric one.
    """
    if mode not in TRUTH_RATIO_MODES:
        raise ValueError(f"truth ratio mode must be one of {TRUTH_RATIO_MODES}, got {mode!r}")
    para = [float(x) for x in para_nll]
    if len(para) != len(pert_nll):
        raise ValueError(f"truth_ratio_from_nll: {len(para)} paraphrased but {len(pert_nll)} perturbed rows")
    out = []
    for i, (p, row) in enumerate(zip(para, pert_nll)):
        vals = [float(x) for x in row if not math.isnan(float(x))]
        if not vals:
            raise ValueError(f"truth_ratio_from_nll: row {i} has no perturbed answer")
        if mode == "geometric":
            out.append(math.exp(p - sum(vals) / len(vals)))
        else:
            out.append(sum(math.exp(p - v) for v in vals) / len(vals))
    return out


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
    b = check_truth_ratios([float(x) for x in truth_ratios_retain], "forget_quality: the retain model's truth ratios")
    if not a or not b:
        raise ValueError("forget_quality needs two non-empty samples of truth ratios")
    if any(math.isnan(x) or x < 0 for x in a):
        raise ValueError("forget_quality: the model's truth ratios hold NaN or negative values")
    return float(ks_2samp(a, b).pvalue)


def check_truth_ratios(values, what: str = "truth ratios") -> list[float]:
    """``values`` as floats, or a ValueError naming the first entry that is not a truth ratio
    R = P_pert / P_para of a reference: a finite number >= 0 (bools, NaN, inf and negatives are
    refused; they come from a damaged or hand-edited file)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{what} must be a non-empty list of numbers")
    out = []
    for i, x in enumerate(values):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise ValueError(f"{what}: entry {i} is {x!r}; expected a finite number >= 0")
        out.append(float(x))
    return out


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
