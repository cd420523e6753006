"""TOFU / WMDP / MUSE-style evaluation of Hugging Face causal LMs (ALTER_SPEC section 8).

Command line: ``alter-eval`` (:mod:`alter_kernels.cli.eval`)."""
from .data import load_rows
from .format import DEFAULT_TEMPLATE, IGNORE_INDEX, QAFormat, pad_batch
from .metrics import (TRUTH_RATIO_MODES, distinct_n, forget_quality, harmonic_mean, repetition_rate, rouge_l,
                      rouge_l_recall, rouge_tokens, truth_ratio_from_nll, truth_ratio_score)
from .tofu import (DEFAULT_MAX_NEW_TOKENS, answer_nll, evaluate_tofu, generate_answers, greedy_generate,
                   mcq_accuracy, model_utility, sequence_nll, split_stats, truth_ratios, verbatim_rouge)

__all__ = ["load_rows", "DEFAULT_TEMPLATE", "IGNORE_INDEX", "QAFormat", "pad_batch", "TRUTH_RATIO_MODES",
           "distinct_n", "forget_quality", "harmonic_mean", "repetition_rate", "rouge_l", "rouge_l_recall",
           "rouge_tokens", "truth_ratio_from_nll", "truth_ratio_score", "DEFAULT_MAX_NEW_TOKENS", "answer_nll",
           "evaluate_tofu", "generate_answers", "greedy_generate", "mcq_accuracy", "model_utility",
           "sequence_nll", "split_stats", "truth_ratios", "verbatim_rouge"]
