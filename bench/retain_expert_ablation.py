"""Ablation outside the protocol's grid: ALTER (full preset) with the retain expert B_0 frozen.

    python bench/retain_expert_ablation.py dev      # DEV seed 1000: B_0 trained at x30, frozen at x10/x30/x100
    python bench/retain_expert_ablation.py test     # TEST seeds 0, 1, 2: frozen at x30 (the DEV-best)

Prints one line per cell (forget quality, model utility, HM, ROUGE-L, repetition); results of the
session that added it are in bench/results/sweep/retain_expert_ablation.json (its DEV cells froze
router column 0 too; this script freezes B_0 only, through the engine's retain_expert option).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import sweep  # noqa: E402
from alter_kernels.demo import method_hparams  # noqa: E402


def cell(seed: int, k: float, retain_expert: str, cells) -> None:
    s = sweep.Seed("full", seed, cells)
    c = sweep.run_cell(s, "alter", dict(method_hparams("alter", k), retain_expert=retain_expert))
    print(f"seed {seed} x{k} B_0 {retain_expert}:",
          {key: c[key] for key in ("fq", "mu", "hm", "forget_rouge", "retain_rouge", "repetition")}, flush=True)


def main(argv=None) -> None:
    stage = (argv or sys.argv[1:] or ["dev"])[0]
    torch.set_num_threads(1)
    cells = sweep.load_cells("full")
    if stage == "dev":
        cell(sweep.DEV_SEED, 30, "train", cells)
        for k in (10, 30, 100):
            cell(sweep.DEV_SEED, k, "frozen", cells)
    elif stage == "test":
        for seed in sweep.TEST_SEEDS:
            cell(seed, 30, "frozen", cells)
    else:
        raise SystemExit(f"retain_expert_ablation: stage must be 'dev' or 'test', got {stage!r}")


if __name__ == "__main__":
    main()
