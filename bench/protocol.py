"""Shared pieces of the benchmark protocol (bench/sweep.py, bench/router_probe.py, the demo).

- ``bench_for(preset, seed)``: the embedded benchmark of a preset ("full" / "quick") for a corpus
  seed (seed 0 is the TEST benchmark the demo reports; DEV_SEED selects hyper-parameters; the
  extra TEST seeds are TEST_SEEDS[1:]).
- ``evaluate(bench, model, ref)``: forget quality, model utility and the harmonic mean of
  (forget quality, utility / finetuned utility), TOFU style, through the default inference
  rule (a patched model routes by the base model's entropies).
- ``selection_score(..., score)``: the DEV selection score, "hm" or "hm_fluency" (the HM times
  the forget answers' fluency ratio to the retain model; the default, issue 24).
"""
from __future__ import annotations

from alter_kernels.demo.protocol import (DEV_SEED, SCORES, SELECTION_SCORE, TEST_SEEDS,  # noqa: F401
                                         bench_for, evaluate, hm_score, load_split, selection_score)
