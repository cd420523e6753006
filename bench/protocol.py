"""Shared pieces of the benchmark protocol (bench/sweep.py, bench/router_probe.py, the demo).

- ``bench_for(preset, seed)``: the embedded benchmark of a preset ("full" / "quick") for a corpus
  seed (seed 0 is the TEST benchmark the demo reports; DEV_SEED selects hyper-parameters; the
  extra TEST seeds are TEST_SEEDS[1:]).
- ``evaluate(bench, model, ref)``: forget quality, model utility and the harmonic mean of
  (forget quality, utility / finetuned utility), TOFU style, through the default inference
  rule (a patched model routes by the base model's entropies).
"""
from __future__ import annotations

from alter_kernels.demo.protocol import (DEV_SEED, TEST_SEEDS, bench_for, evaluate,  # noqa: F401
                                         hm_score, load_split)
