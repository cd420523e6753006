"""The demo's table, generations and ``results.json`` content, and the docs' demo table made from
a ``results.json`` (:func:`markdown_table`; :mod:`.docs_table` writes it into docs/benchmark.md)."""
from __future__ import annotations

import os

from ..eval.fluency import DEGENERATE_QUANTILE, REPETITION_N

def summary(res: dict, seconds: float) -> dict:
    """The table row of one model's evaluate_tofu result (with its forget / retain answers' fluency:
    repetition and degenerate share, None when not judged against the retain model)."""
    row = {"forget_quality": float(res.get("forget_quality", float("nan"))),
           "model_utility": float(res["model_utility"]), "forget_rouge": float(res["forget_rouge"]),
           "retain_rouge": float(res["retain_rouge"]), "seconds": float(seconds)}
    for s in ("forget", "retain"):
        fl = res.get(f"fluency_{s}")
        if fl:
            row[f"{s}_repetition"], row[f"{s}_degenerate"] = fl["repetition"], fl["degenerate_share"]
    return row


BASELINE_MODELS = ("finetuned", "retain")      # rows without an HM score (the references)
RETAIN_EVAL_FILE = "retain_eval.json"           # the retain rows utility is scored on, beside results.json


def utility_split(bench_info: dict) -> str:
    """The label of the retain split the demo scores utility on (one wording: table, docs, plot)."""
    n, total = bench_info.get("retain_eval_rows"), bench_info.get("retain_rows")
    return (f"Model utility: its retain part on {n} of the {total} retain rows (an author-balanced subset, "
            f"written to {RETAIN_EVAL_FILE} beside results.json), plus real authors and world facts")


def format_table(methods: dict, scores: dict | None = None) -> str:
    """The printed table; HM = harmonic mean of (forget quality, utility / finetuned utility)."""
    scores = scores or {}
    head = (f"{'method':<12} {'forget quality':>14} {'model utility':>13} {'forget ROUGE-L':>14} "
            f"{'retain ROUGE-L':>14} {'forget rep.':>11} {'degenerate':>10} {'HM':>6} {'seconds':>8}")
    lines = [head, "-" * len(head)]
    for n, m in methods.items():
        if "error" in m:
            lines.append(f"{n:<12} failed: {m['error']}")
            continue
        hm = f"{scores[n]:.3f}" if n in scores else ""
        lines.append(f"{n:<12} {m['forget_quality']:>14.3g} {m['model_utility']:>13.3f} {m['forget_rouge']:>14.3f} "
                     f"{m['retain_rouge']:>14.3f} {_num(m.get('forget_repetition', '-')):>11} "
                     f"{_num(m.get('forget_degenerate', '-')):>10} {hm:>6} {m['seconds']:>8.1f}")
    return "\n".join(lines)


def _num(v) -> str:
    """A 3-decimal number; "n/a" for None (not judged), the text itself for a placeholder."""
    return "n/a" if v is None else v if isinstance(v, str) else f"{v:.3f}"


FLUENCY_NOTE = (f"forget rep.: mean {REPETITION_N}-gram repetition of the greedy forget answers; degenerate: share "
                f"of them above the {DEGENERATE_QUANTILE:.0%} quantile of the retain model's repetition on the same "
                "questions (docs/benchmark.md)")


def _hm(a, b):
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


def hm_scores(table: dict) -> dict:
    """Harmonic mean of (forget quality, utility / finetuned utility) of every unlearned model."""
    mu_ft = table["finetuned"]["model_utility"]
    return {n: _hm(m["forget_quality"], m["model_utility"] / mu_ft) for n, m in table.items()
            if "error" not in m and n not in BASELINE_MODELS and mu_ft > 0}


def fluency_scores(table: dict) -> dict:
    """The DEV selection score "hm_fluency" (:func:`.protocol.selection_score`: HM times the forget
    answers' fluency ratio to the retain model) of every unlearned model with fluency numbers."""
    from .protocol import selection_score
    ft, rt = table.get("finetuned", {}), table.get("retain", {})
    if "model_utility" not in ft or rt.get("forget_repetition") is None or not ft["model_utility"] > 0:
        return {}
    return {n: selection_score(m["forget_quality"], m["model_utility"], ft["model_utility"], m["forget_repetition"],
                               rt["forget_repetition"], "hm_fluency")
            for n, m in table.items() if "error" not in m and n not in BASELINE_MODELS and "forget_repetition" in m}


def winner_line(table: dict, scores: dict) -> str:
    """Which method has the best HM, by what margin over the runner-up, and on what it wins."""
    if not scores:
        return "no unlearning method finished: no winner"
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    (best, hm), rest = ranked[0], ranked[1:]
    b = table[best]
    why = f"forget quality {b['forget_quality']:.3g}, utility {b['model_utility']:.3f}"
    if not rest:
        return f"best HM: {best} {hm:.3f} ({why}; the only method run)"
    second, hm2 = rest[0]
    s = table[second]
    margin = round(hm, 3) - round(hm2, 3)            # of the numbers as printed
    return (f"best HM: {best} {hm:.3f}, ahead of {second} {hm2:.3f} by {margin:.3f} ({best}: {why}; {second}: "
            f"forget quality {s['forget_quality']:.3g}, utility {s['model_utility']:.3f}); one corpus seed, "
            "the spread over seeds is in bench/results/sweep/")


def _fq(v: float) -> str:
    return "1" if v == 1 else f"{v:.3g}"


def markdown_table(results: dict) -> str:
    """The docs' demo table, from a ``results.json`` (docs/benchmark.md holds this text between the
    demo-table markers; ``python -m alter_kernels.demo.docs_table`` rewrites it, a test compares)."""
    methods, scores = results["methods"], results["hm_fq_utility_ratio"]
    # the fluency columns (issue 24) when every row has them; a results.json from before keeps its table
    fluent = all("forget_repetition" in m for m in methods.values() if "error" not in m)
    cols = " forget repetition | degenerate |" if fluent else ""
    lines = [f"| method | forget quality | model utility | forget ROUGE-L | retain ROUGE-L |{cols} HM |",
             "|---|---|---|---|---|---|" + ("---|---|" if fluent else "")]
    for n, m in methods.items():
        if "error" in m:
            lines.append(f"| {n} | failed: {m['error']} | | | |" + (" | |" if fluent else "") + " |")
            continue
        hm = f"{scores[n]:.3f}" if n in scores else ""
        fl = f" {_num(m['forget_repetition'])} | {_num(m['forget_degenerate'])} |" if fluent else ""
        lines.append(f"| {n} | {_fq(m['forget_quality'])} | {m['model_utility']:.3f} | {m['forget_rouge']:.3f} | "
                     f"{m['retain_rouge']:.3f} |{fl} {hm} |")
    b = results.get("benchmark", {})
    extra = []
    for n, r in results.get("router", {}).items():
        ra, th = r.get("router_accuracy") or {}, r.get("threshold")
        extra.append(f"{n}: theta {'n/a' if th is None else format(th, '.3g')} ({r.get('threshold_source')}), "
                     f"{r.get('router_keys')} router keys, held-out routing accuracy forget "
                     f"{ra.get('forget', float('nan')):.2f} / retain {ra.get('retain', float('nan')):.2f}.")
    return "\n".join(lines + ["", winner_line(methods, scores) + ".", *(["", " ".join(extra)] if extra else []), "",
                              f"HM: harmonic mean of (forget quality, utility / finetuned utility). "
                              + (f"{FLUENCY_NOTE[0].upper()}{FLUENCY_NOTE[1:]}. " if fluent else "") +
                              f"{utility_split(b)}. "
                              f"Preset {'quick' if b.get('quick') else 'full'}, {b.get('epochs')} epochs, "
                              f"{b.get('forget_rows')} forget rows; {results.get('total_seconds', 0):.0f} s in total "
                              f"with {results.get('torch_threads')} torch thread(s) on the shared 2-core machine."])


def print_report(table: dict, scores: dict, gens: dict, split: str = "") -> None:
    print()
    print(format_table(table, scores))
    if split:
        print(split)
    print("HM: harmonic mean of (forget quality, utility / finetuned utility)")
    print(FLUENCY_NOTE)
    fs = fluency_scores(table)
    if fs:
        print("HM x fluency ratio (the DEV selection score, alter_kernels.demo.protocol.selection_score): "
              + ", ".join(f"{n} {v:.3f}" for n, v in fs.items()))
    print(winner_line(table, scores))
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

