"""TOFU / WMDP / MUSE-style evaluation of Hugging Face causal LMs (ALTER_SPEC section 8)."""
from .data import load_rows
from .format import DEFAULT_TEMPLATE, IGNORE_INDEX, QAFormat, pad_batch
from .metrics import (distinct_n, forget_quality, harmonic_mean, lcs_length, repetition_rate, rouge_l,
                      rouge_l_recall, rouge_tokens, truth_ratio_score)
from .tofu import (answer_nll, evaluate_tofu, generate_answers, greedy_generate, mcq_accuracy,
                   model_utility, sequence_nll, split_stats, truth_ratios, verbatim_rouge)

__all__ = ["load_rows", "DEFAULT_TEMPLATE", "IGNORE_INDEX", "QAFormat", "pad_batch", "distinct_n",
           "forget_quality", "harmonic_mean", "lcs_length", "repetition_rate", "rouge_l", "rouge_l_recall",
           "rouge_tokens", "truth_ratio_score", "answer_nll", "evaluate_tofu", "generate_answers",
           "greedy_generate", "mcq_accuracy", "model_utility", "sequence_nll", "split_stats",
           "truth_ratios", "verbatim_rouge"]
