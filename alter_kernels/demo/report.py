"""The demo's table, generations and ``results.json`` content."""
from __future__ import annotations

import os


def summary(res: dict, seconds: float) -> dict:
    """The table row of one model's evaluate_tofu result."""
    return {"forget_quality": float(res.get("forget_quality", float("nan"))),
            "model_utility": float(res["model_utility"]), "forget_rouge": float(res["forget_rouge"]),
            "retain_rouge": float(res["retain_rouge"]), "seconds": float(seconds)}


def format_table(methods: dict) -> str:
    head = f"{'method':<12} {'forget quality':>14} {'model utility':>13} {'forget ROUGE-L':>14} {'retain ROUGE-L':>14} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for n, m in methods.items():
        if "error" in m:
            lines.append(f"{n:<12} failed: {m['error']}")
            continue
        fq = m["forget_quality"]
        lines.append(f"{n:<12} {fq:>14.3g} {m['model_utility']:>13.3f} {m['forget_rouge']:>14.3f} "
                     f"{m['retain_rouge']:>14.3f} {m['seconds']:>8.1f}")
    return "\n".join(lines)


def _hm(a, b):
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


def hm_scores(table: dict) -> dict:
    """Harmonic mean of (forget quality, utility / finetuned utility) of every unlearned model."""
    mu_ft = table["finetuned"]["model_utility"]
    return {n: _hm(m["forget_quality"], m["model_utility"] / mu_ft) for n, m in table.items()
            if "error" not in m and n not in ("finetuned", "retain") and mu_ft > 0}


def print_report(table: dict, scores: dict, gens: dict) -> None:
    print()
    print(format_table(table))
    if scores:
        print("\nharmonic mean of (forget quality, utility / finetuned utility): " +
              ", ".join(f"{n} {v:.3f}" for n, v in sorted(scores.items(), key=lambda kv: -kv[1])))
    print("\n== generations (greedy)")
    for kind in ("forget", "retain"):
        for g in gens[kind]:
            print(f"[{kind}] Q: {g['question']}\n   truth:     {g['answer']}")
            for k, v in g.items():
                if k not in ("question", "answer"):
                    print(f"   {k + ':':<10} {v}")


def protocol_info(args) -> dict:
    """Where the hyper-parameters came from (docs/benchmark.md, "Protocol")."""
    from .protocol import DEV_SEED, SELECTED_PATH, TEST_SEEDS, load_selected
    preset = "quick" if args.quick else "full"
    sel = load_selected(preset)
    src = ("--hparams" if args.hparams else f"--lr-scale {args.lr_scale}" if args.lr_scale is not None else
           f"selected on the DEV benchmark (corpus seed {DEV_SEED}) by bench/sweep.py (alter_kernels/demo/{os.path.basename(SELECTED_PATH)})" if sel
           else "LR_SCALE in alter_kernels/demo/methods.py (no DEV selection found)")
    return {"hparams_source": src, "dev_seed": DEV_SEED, "test_seeds": list(TEST_SEEDS),
            "this_run_corpus_seed": 0, "multi_seed_table": f"bench/results/sweep/{preset}_table.md"}
