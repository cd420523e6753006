"""The benchmark protocol: DEV / TEST corpus seeds, the retain subset that utility is scored on,
evaluation through the default inference rule, and the hyper-parameters selected on DEV
(docs/benchmark.md, "Protocol").

- TEST: corpus seed 0 (what the demo reports) plus seeds 1 and 2 (mean and std over the three).
- DEV: corpus seed 1000, same sizes; ``bench/sweep.py`` selects every method's hyper-parameters
  there (same grid size for every method) and writes ``selected_hparams.json`` beside this file.
"""
from __future__ import annotations

import json
import math
import os
import random

DEV_SEED = 1000
TEST_SEEDS = (0, 1, 2, 3, 4)
SELECTED_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "selected_hparams.json")


def bench_for(preset: str, seed: int = 0, cache_dir: str | None = None, progress: bool = False):
    """The embedded benchmark of ``preset`` ("full"/"default" or "quick") for corpus ``seed``."""
    from ..synthetic.inject import PRESETS, build_benchmark, with_overrides
    base = PRESETS["quick" if preset == "quick" else "default"]
    cfg = base if seed == 0 else with_overrides(base, seed=seed)
    return build_benchmark(cfg, cache_dir=cache_dir, progress=progress)


def retain_eval_subset(rows: list, n: int, seed: int = 0) -> list:
    """A fixed, author-balanced subset of the retain rows for the utility evaluation (TOFU also
    evaluates utility on a retain subset of the forget set's size)."""
    if n >= len(rows):
        return list(rows)
    rng = random.Random(f"retain-eval-{seed}")
    by_author: dict = {}
    for r in rows:
        by_author.setdefault(r.get("author", ""), []).append(r)
    for v in by_author.values():
        rng.shuffle(v)
    out, i = [], 0
    authors = sorted(by_author)
    while len(out) < n:
        for a in authors:
            if i < len(by_author[a]) and len(out) < n:
                out.append(by_author[a][i])
        i += 1
    return out


def load_split(bench):
    from ..eval import load_rows
    forget = load_rows(bench.path(bench.config.forget_split))
    retain_all = load_rows(bench.path(bench.retain_split))
    return {"forget": forget, "retain": retain_all, "retain_eval": retain_eval_subset(retain_all, len(forget), 0),
            "real": load_rows(bench.path("real_authors")), "world": load_rows(bench.path("world_facts"))}


def hm_score(fq: float, mu: float, mu_ft: float) -> float:
    """Harmonic mean of (forget quality, utility / finetuned utility)."""
    a, b = fq, (mu / mu_ft if mu_ft > 0 else 0.0)
    return 0.0 if a <= 0 or b <= 0 or not math.isfinite(a) or not math.isfinite(b) else 2 * a * b / (a + b)


SCORES = ("hm", "hm_fluency")
SELECTION_SCORE = "hm_fluency"      # the DEV selection default (bench/sweep.py --score)


def selection_score(fq: float, mu: float, mu_ft: float, forget_repetition: float | None = None,
                    retain_forget_repetition: float | None = None, score: str = SELECTION_SCORE) -> float:
    """The score hyper-parameters are selected by on DEV (issue 24).

    - ``"hm"``: :func:`hm_score`, the harmonic mean of (forget quality, utility / finetuned utility);
    - ``"hm_fluency"`` (default): that HM times the fluency ratio
      :func:`~alter_kernels.eval.fluency.fluency_ratio` = (1 - r) / (1 - r_retain), capped at 1,
      where r is the mean bigram repetition of the method's greedy forget answers and r_retain the
      retain model's on the same questions.

    Why a product and not a three-way harmonic mean: forget quality (a KS p-value) rewards a looping
    forget answer as much as a fluent wrong one, so fluency needs its own term. With the ratio capped
    at 1, a method that repeats no more than the retain model keeps exactly its HM (fluent settings
    are ranked as before, on the same scale as the published HM tables), while a loop (r -> 1) pulls
    the score to 0 in proportion to its excess repetition. A three-way harmonic mean would lift
    every fluent score above its HM (HM(a, b, 1) > HM(a, b)) and change the scale of the tables.
    """
    if score not in SCORES:
        raise ValueError(f"selection_score: score must be one of {SCORES}, got {score!r}")
    hm = hm_score(fq, mu, mu_ft)
    if score == "hm":
        return hm
    if forget_repetition is None or retain_forget_repetition is None:
        raise ValueError("selection_score('hm_fluency') needs the forget-answer repetition of the method and of "
                         "the retain model")
    from ..eval.fluency import fluency_ratio
    return hm * fluency_ratio(forget_repetition, retain_forget_repetition)


def evaluate(model, tok, split: dict, ref=None, batch_size: int = 16, max_new_tokens: int = 32,
             ref_gens: dict | None = None) -> dict:
    """TOFU suite (evaluate_tofu) through the default inference rule (a patched model routes by the
    base model's entropies, ``AlterConfig.inference_entropy="base"``); returns the full result dict.
    ``ref_gens``: the retain model's forget / retain answers (degenerate shares, issue 24)."""
    from ..eval import QAFormat, evaluate_tofu
    return evaluate_tofu(model, tok, split["forget"], split["retain_eval"], split["real"], split["world"],
                         reference_truth_ratios=ref, fmt=QAFormat(), batch_size=batch_size,
                         max_new_tokens=max_new_tokens, reference_generations=ref_gens)


def load_selected(preset: str) -> dict | None:
    """{method: hparams} selected on DEV for ``preset`` by bench/sweep.py, or None."""
    if not os.path.exists(SELECTED_PATH):
        return None
    with open(SELECTED_PATH) as f:
        data = json.load(f)
    return data.get("quick" if preset == "quick" else "full")
