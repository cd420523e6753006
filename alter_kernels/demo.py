"""End-to-end demo: ALTER and every baseline on the embedded fictitious-author benchmark.

    python -m alter_kernels.demo [--quick] [--out DIR]

Builds (first run) or loads (cached) the tokenizer and the two tiny Llama models, unlearns the
forget10 split from the "finetuned" model with ALTER and each baseline (same data, same epochs),
evaluates every model TOFU-style against the "retain" model, prints the table and a few
generations, and writes ``results.json`` and a plot of model utility against forget quality
into ``--out`` (default ``./alter_demo``). See docs/benchmark.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time

METHODS = ("alter", "asymlora", "lora", "ga", "graddiff", "kl", "npo", "npo_retain")
# The engine's defaults are the paper's learning rates for 7B models (lr 1e-5 full-parameter,
# lr_A 1e-5, lr_B 1e-3); on the tiny from-scratch models, 3 epochs at those rates change nothing.
# Every method gets the same search: one multiplier k applied to lr, lr_A and lr_B together,
# k in {3, 10, 30, 100, 300}, picked per method by the harmonic mean of (forget quality,
# utility / finetuned utility) on the quick benchmark, ties broken by the larger forget quality
# (docs/benchmark.md has the sweep table).
# Nothing else differs between methods: same data, epochs, batch size, seed.
LR_SCALE: dict[str, float] = {"alter": 30, "asymlora": 300, "lora": 10, "ga": 100, "graddiff": 100,
                              "kl": 100, "npo": 100, "npo_retain": 100}
BASE_LR = {"lr": 1e-5, "lr_A": 1e-5, "lr_B": 1e-3, "lr_router": 1e-3}
# Greedy answers for ROUGE are generated up to TOFU's 200 new tokens, as alter-eval and
# evaluate_tofu do (the models stop at eos long before on intact answers).
EVAL_MAX_NEW_TOKENS = 200


def method_hparams(name: str, scale: float | None = None, preset: str | None = None) -> dict:
    """Hyper-parameters the demo passes for ``name``: with ``preset`` ("full" / "quick"), the values
    bench/sweep.py selected on the DEV benchmark (alter_kernels/benchmark/selected_hparams.json)
    when that file has them; otherwise the engine's default learning rates (lr_router included)
    times ``scale`` or LR_SCALE[name]."""
    if scale is None and preset is not None:
        from .benchmark.protocol import load_selected
        sel = load_selected(preset) or {}
        if name in sel:
            return dict(sel[name])
    k = LR_SCALE.get(name, 1.0) if scale is None else scale
    return {key: v * k for key, v in BASE_LR.items()}


LAST_RUN: dict = {}     # run_method's last UnlearnResult ("result"), for the router accuracy and theta


def run_method(name: str, model, forget: list, retain: list, tokenizer, *, epochs: int,
               batch_size: int = 4, seed: int = 0, max_steps: int | None = None, out_dir: str | None = None,
               progress: bool = False, hparams: dict | None = None):
    """Unlearn ``forget`` from ``model`` (modified in place) with method ``name``; returns
    (model, seconds). The single point where the demo meets the unlearning engine (issue 5)."""
    import alter_kernels as ak
    unlearn = getattr(ak, "unlearn", None)
    if unlearn is None:
        raise RuntimeError("alter_kernels.unlearn is not available in this build (the unlearning "
                           "engine); the demo cannot run the methods without it")
    t0 = time.perf_counter()
    res = unlearn(model, forget, retain, method=name, tokenizer=tokenizer, epochs=epochs,
                  max_steps=max_steps, batch_size=batch_size, seed=seed, progress=progress,
                  out_dir=out_dir, **(method_hparams(name) if hparams is None else hparams))
    LAST_RUN["result"] = res
    seconds = getattr(res, "seconds", None)
    return getattr(res, "model", model), float(seconds if seconds is not None else time.perf_counter() - t0)


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


def _summary(res: dict, seconds: float) -> dict:
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


def _protocol(args) -> dict:
    """Where the hyper-parameters came from (docs/benchmark.md, "Protocol")."""
    from .benchmark.protocol import DEV_SEED, SELECTED_PATH, TEST_SEEDS, load_selected
    preset = "quick" if args.quick else "full"
    sel = load_selected(preset)
    src = ("--hparams" if args.hparams else f"--lr-scale {args.lr_scale}" if args.lr_scale is not None else
           f"selected on the DEV benchmark (corpus seed {DEV_SEED}) by bench/sweep.py (alter_kernels/benchmark/{os.path.basename(SELECTED_PATH)})" if sel
           else "LR_SCALE in alter_kernels/demo.py (no DEV selection found)")
    return {"hparams_source": src, "dev_seed": DEV_SEED, "test_seeds": list(TEST_SEEDS),
            "this_run_corpus_seed": 0, "multi_seed_table": f"bench/results/sweep/{preset}_table.md"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alter_kernels.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller corpus and models (CI smoke test, <= 3 min)")
    ap.add_argument("--out", default="alter_demo", help="output directory (results.json, plot)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods to run")
    ap.add_argument("--epochs", type=int, default=None, help="unlearning epochs (default 3, paper setting)")
    ap.add_argument("--cache", default=None, help="model cache directory (default $ALTER_CACHE or ~/.cache/alter_kernels)")
    ap.add_argument("--rebuild", action="store_true", help="retrain the tokenizer and both models")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's, or 1 when the CPUs are already busy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-runs", action="store_true",
                    help="let the engine write each method's checkpoint / adapter / history under OUT/runs/")
    ap.add_argument("--lr-scale", type=float, default=None,
                    help="one multiplier of the engine's learning rates for every method (default: per-method LR_SCALE)")
    ap.add_argument("--hparams", default=None,
                    help='JSON passed to ak.unlearn for every method instead of the learning rates, e.g. \'{"lr": 1e-4}\'')
    args = ap.parse_args(argv)

    import torch

    from .benchmark.inject import build_benchmark
    from .benchmark.plot import plot_results
    from .eval import QAFormat, evaluate_tofu, load_rows, mcq_accuracy, verbatim_rouge
    from .patch import get_state, is_patched

    if args.threads:
        torch.set_num_threads(args.threads)
    elif hasattr(os, "getloadavg") and os.getloadavg()[0] >= (os.cpu_count() or 1):
        torch.set_num_threads(1)          # oversubscribed CPUs: more threads only add contention
    t_start = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    epochs = args.epochs or 3
    os.makedirs(args.out, exist_ok=True)

    print(f"== alter_kernels demo ({'quick' if args.quick else 'full'}), torch threads {torch.get_num_threads()}")
    bench = build_benchmark("quick" if args.quick else "default", cache_dir=args.cache, rebuild=args.rebuild)
    print(f"benchmark: {bench.root}")
    tok = bench.tokenizer()
    forget = load_rows(bench.path(bench.config.forget_split))
    retain_all = load_rows(bench.path(bench.retain_split))
    retain_eval = retain_eval_subset(retain_all, len(forget), args.seed)
    real, world = load_rows(bench.path("real_authors")), load_rows(bench.path("world_facts"))
    mcq = load_rows(bench.path("mcq"), require=("question", "choices"))
    passages = load_rows(bench.path("passages"), require=("text",))
    fmt = QAFormat()
    eval_kw = dict(fmt=fmt, batch_size=16, max_new_tokens=EVAL_MAX_NEW_TOKENS)

    def evaluate(model, ref=None):
        r = evaluate_tofu(model, tok, forget, retain_eval, real, world, reference_truth_ratios=ref, **eval_kw)
        fs = bench.config.forget_split
        r["mcq_forget_accuracy"] = mcq_accuracy(model, tok, [x for x in mcq if x["split"] == fs], fmt)["accuracy"]
        r["mcq_retain_accuracy"] = mcq_accuracy(model, tok, [x for x in mcq if x["split"] != fs], fmt)["accuracy"]
        r["verbatim_forget_rouge"] = verbatim_rouge(
            model, tok, [p["text"] for p in passages if p["split"] == fs], prefix_tokens=16,
            max_new_tokens=48)["rouge_f"]
        return r

    t = time.perf_counter()
    retain_model = bench.load_model("retain")
    res_retain = evaluate(retain_model)
    ref = res_retain["forget"]["truth_ratios"]
    res_retain["forget_quality"] = 1.0          # KS of the reference against itself
    finetuned = bench.load_model("finetuned")
    res_ft = evaluate(finetuned, ref)
    print(f"evaluated finetuned and retain models in {time.perf_counter() - t:.0f}s")
    details = {"retain": res_retain, "finetuned": res_ft}
    table = {"finetuned": _summary(res_ft, bench.info.get("finetuned_train_seconds", 0.0)),
             "retain": _summary(res_retain, bench.info.get("retain_train_seconds", 0.0))}
    checks = {"finetuned_forget_rouge": res_ft["forget_rouge"], "finetuned_forget_rouge_ok": res_ft["forget_rouge"] >= 0.8,
              "finetuned_forget_quality": res_ft["forget_quality"],
              "finetuned_forget_quality_ok": res_ft["forget_quality"] < 0.01}
    print(f"check: finetuned forget ROUGE-L {res_ft['forget_rouge']:.3f} (needs >= 0.8): "
          f"{'ok' if checks['finetuned_forget_rouge_ok'] else 'FAILED'}")
    print(f"check: finetuned forget quality {res_ft['forget_quality']:.3g} (needs < 0.01): "
          f"{'ok' if checks['finetuned_forget_quality_ok'] else 'FAILED'}")

    show_f = list(range(min(3, len(forget))))
    show_r = list(range(min(3, len(retain_eval))))
    gens = {"forget": [{"question": forget[i]["question"], "answer": forget[i]["answer"],
                        "finetuned": res_ft["forget"]["generations"][i],
                        "retain": res_retain["forget"]["generations"][i]} for i in show_f],
            "retain": [{"question": retain_eval[i]["question"], "answer": retain_eval[i]["answer"],
                        "finetuned": res_ft["retain"]["generations"][i]} for i in show_r]}
    failures, hparams_used, rules, routers = [], {}, {}, {}
    for name in methods:
        model = copy.deepcopy(finetuned)
        print(f"-- {name}: unlearning {len(forget)} forget rows, {epochs} epochs")
        try:
            hp = (json.loads(args.hparams) if args.hparams else
                  method_hparams(name, args.lr_scale, "quick" if args.quick else "full"))
            hparams_used[name] = hp
            model, secs = run_method(name, model, forget, retain_all, tok, epochs=epochs, seed=args.seed,
                                     out_dir=os.path.join(args.out, "runs", name) if args.save_runs else None,
                                     hparams=hp)
        except Exception as e:      # report and go on with the other methods
            failures.append(name)
            table[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"   {name} failed: {type(e).__name__}: {e}")
            continue
        model.eval()
        ur = LAST_RUN.pop("result", None)
        if ur is not None and name in ("alter", "asymlora"):
            routers[name] = {"router_accuracy": ur.router_accuracy, "threshold": ur.threshold,
                             "threshold_source": ur.threshold_source,
                             "router_input": getattr(ur.config, "router_input", None),
                             "router_keys": getattr(ur.config, "router_keys", None)}
            ra = ur.router_accuracy or {}
            theta = "n/a" if ur.threshold is None else f"{ur.threshold:.4g}"
            print(f"   {name}: held-out routing accuracy forget {ra.get('forget', float('nan')):.3f} retain "
                  f"{ra.get('retain', float('nan')):.3f}; theta {theta} ({ur.threshold_source})")
        r = evaluate(model, ref)
        details[name] = r
        table[name] = _summary(r, secs)
        # every score and generation above went through the model's default inference rule
        rules[name] = get_state(model).config.inference_entropy if is_patched(model) else None
        for g, i in zip(gens["forget"], show_f):
            g[name] = r["forget"]["generations"][i]
        for g, i in zip(gens["retain"], show_r):
            g[name] = r["retain"]["generations"][i]
        print(f"   {name}: FQ {r['forget_quality']:.3g}  MU {r['model_utility']:.3f}  ({secs:.1f}s)")
        del model

    print()
    print(format_table(table))
    mu_ft = table["finetuned"]["model_utility"]
    scores = {n: _hm(m["forget_quality"], m["model_utility"] / mu_ft) for n, m in table.items()
              if "error" not in m and n not in ("finetuned", "retain") and mu_ft > 0}
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

    extra = {n: {k: d.get(k) for k in ("utility_parts", "fluency", "forget_probability", "forget_truth_ratio",
                                       "mcq_forget_accuracy", "mcq_retain_accuracy", "verbatim_forget_rouge")}
             for n, d in details.items()}
    out = {"methods": table, "checks": checks, "hm_fq_utility_ratio": scores, "details": extra,
           "generations": gens, "hparams": hparams_used, "router": routers, "protocol": _protocol(args),
           "inference_entropy": rules, "benchmark": {"root": bench.root, "quick": args.quick, "epochs": epochs,
                                              "forget_rows": len(forget), "retain_rows": len(retain_all),
                                              "retain_eval_rows": len(retain_eval), "build": bench.info},
           "total_seconds": time.perf_counter() - t_start, "torch_threads": torch.get_num_threads()}
    path = os.path.join(args.out, "results.json")
    from ._fsio import json_safe, write_json
    write_json(path, json_safe(out))
    plot = plot_results({n: m for n, m in table.items() if "error" not in m}, os.path.join(args.out, "utility_vs_forget_quality"))
    print(f"\nwrote {path} and {plot} in {out['total_seconds']:.0f}s total")
    if failures:
        print(f"FAILED methods: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
