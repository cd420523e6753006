"""``python -m alter_kernels.demo``: the steps of the demo run (see the package docstring)."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time

from .methods import LAST_RUN, METHODS, method_hparams, run_method
from .protocol import retain_eval_subset
from .report import (RETAIN_EVAL_FILE, fluency_scores, hm_scores, print_report, protocol_info, summary,
                     utility_split)

# Greedy answers for ROUGE are generated up to TOFU's 200 new tokens, as alter-eval and
# evaluate_tofu do (the models stop at eos long before on intact answers).
EVAL_MAX_NEW_TOKENS = 200
DESCRIPTION = "End-to-end demo: ALTER and every baseline on the embedded fictitious-author benchmark."


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m alter_kernels.demo", description=DESCRIPTION)
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
    ap.add_argument("--model", default=None,
                    help="a pretrained chat model (e.g. smollm2-135m-instruct): run the real-knowledge benchmark "
                         "(alter_kernels.realknow, small size) instead of the synthetic one")
    ap.add_argument("--realknow-selection", default=None,
                    help="with --model: a selection.json of python -m alter_kernels.realknow (its DEV-selected lr scales)")
    ap.add_argument("--hparams", default=None,
                    help='JSON passed to ak.unlearn for every method instead of the learning rates, e.g. \'{"lr": 1e-4}\'')
    return ap


@dataclasses.dataclass
class _Run:
    """What the run collects, method by method."""

    table: dict
    details: dict
    checks: dict
    gens: dict
    show_f: list
    show_r: list
    failures: list = dataclasses.field(default_factory=list)
    hparams: dict = dataclasses.field(default_factory=dict)
    rules: dict = dataclasses.field(default_factory=dict)
    routers: dict = dataclasses.field(default_factory=dict)


def _set_threads(threads) -> None:
    import torch
    if threads:
        torch.set_num_threads(threads)
    elif hasattr(os, "getloadavg") and os.getloadavg()[0] >= (os.cpu_count() or 1):
        torch.set_num_threads(1)          # oversubscribed CPUs: more threads only add contention


def _load_data(bench, seed: int) -> dict:
    from ..eval import load_rows
    forget = load_rows(bench.path(bench.config.forget_split))
    retain_all = load_rows(bench.path(bench.retain_split))
    return {"forget": forget, "retain_all": retain_all, "retain_eval": retain_eval_subset(retain_all, len(forget), seed),
            "real": load_rows(bench.path("real_authors")), "world": load_rows(bench.path("world_facts")),
            "mcq": load_rows(bench.path("mcq"), require=("question", "choices")),
            "passages": load_rows(bench.path("passages"), require=("text",))}


def _evaluator(bench, tok, data: dict):
    """evaluate(model, ref=None): the TOFU suite plus MCQ accuracy and verbatim ROUGE."""
    from ..eval import QAFormat, evaluate_tofu, mcq_accuracy, verbatim_rouge
    fmt = QAFormat()
    eval_kw = dict(fmt=fmt, batch_size=16, max_new_tokens=EVAL_MAX_NEW_TOKENS)
    mcq, fs = data["mcq"], bench.config.forget_split

    def evaluate(model, ref=None, ref_gens=None):
        r = evaluate_tofu(model, tok, data["forget"], data["retain_eval"], data["real"], data["world"],
                          reference_truth_ratios=ref, reference_generations=ref_gens, **eval_kw)
        r["mcq_forget_accuracy"] = mcq_accuracy(model, tok, [x for x in mcq if x["split"] == fs], fmt)["accuracy"]
        r["mcq_retain_accuracy"] = mcq_accuracy(model, tok, [x for x in mcq if x["split"] != fs], fmt)["accuracy"]
        r["verbatim_forget_rouge"] = verbatim_rouge(
            model, tok, [p["text"] for p in data["passages"] if p["split"] == fs], prefix_tokens=16,
            max_new_tokens=48)["rouge_f"]
        return r
    return evaluate


def _baselines(bench, data: dict, evaluate):
    """Evaluate the retain and finetuned models; returns (finetuned model, the retain model's reference
    {"truth_ratios", "generations"}, run)."""
    from ..eval.fluency import split_results
    t = time.perf_counter()
    res_retain = evaluate(bench.load_model("retain"))
    ref = {"truth_ratios": res_retain["forget"]["truth_ratios"],
           "generations": {s: res_retain[s]["generations"] for s in ("forget", "retain")}}
    res_retain["forget_quality"] = 1.0          # KS of the reference against itself
    res_retain.update(split_results(ref["generations"], ref["generations"]))   # its own degenerate rate
    finetuned = bench.load_model("finetuned")
    res_ft = evaluate(finetuned, ref["truth_ratios"], ref["generations"])
    print(f"evaluated finetuned and retain models in {time.perf_counter() - t:.0f}s")
    table = {"finetuned": summary(res_ft, bench.info.get("finetuned_train_seconds", 0.0)),
             "retain": summary(res_retain, bench.info.get("retain_train_seconds", 0.0))}
    checks = {"finetuned_forget_rouge": res_ft["forget_rouge"], "finetuned_forget_rouge_ok": res_ft["forget_rouge"] >= 0.8,
              "finetuned_forget_quality": res_ft["forget_quality"],
              "finetuned_forget_quality_ok": res_ft["forget_quality"] < 0.01}
    print(f"check: finetuned forget ROUGE-L {res_ft['forget_rouge']:.3f} (needs >= 0.8): "
          f"{'ok' if checks['finetuned_forget_rouge_ok'] else 'FAILED'}")
    print(f"check: finetuned forget quality {res_ft['forget_quality']:.3g} (needs < 0.01): "
          f"{'ok' if checks['finetuned_forget_quality_ok'] else 'FAILED'}")
    forget, retain_eval = data["forget"], data["retain_eval"]
    show_f, show_r = list(range(min(3, len(forget)))), list(range(min(3, len(retain_eval))))
    gens = {"forget": [{"question": forget[i]["question"], "answer": forget[i]["answer"],
                        "finetuned": res_ft["forget"]["generations"][i],
                        "retain": res_retain["forget"]["generations"][i]} for i in show_f],
            "retain": [{"question": retain_eval[i]["question"], "answer": retain_eval[i]["answer"],
                        "finetuned": res_ft["retain"]["generations"][i]} for i in show_r]}
    run = _Run(table=table, details={"retain": res_retain, "finetuned": res_ft}, checks=checks, gens=gens,
               show_f=show_f, show_r=show_r)
    return finetuned, ref, run


def _note_router(name: str, run: _Run) -> None:
    ur = LAST_RUN.pop("result", None)
    if ur is None or name not in ("alter", "asymlora"):
        return
    run.routers[name] = {"router_accuracy": ur.router_accuracy, "threshold": ur.threshold,
                         "threshold_source": ur.threshold_source,
                         "router_input": getattr(ur.config, "router_input", None),
                         "router_keys": getattr(ur.config, "router_keys", None)}
    ra = ur.router_accuracy or {}
    theta = "n/a" if ur.threshold is None else f"{ur.threshold:.4g}"
    print(f"   {name}: held-out routing accuracy forget {ra.get('forget', float('nan')):.3f} retain "
          f"{ra.get('retain', float('nan')):.3f}; theta {theta} ({ur.threshold_source})")


def _run_method(name: str, args, epochs: int, finetuned, data: dict, tok, evaluate, ref, run: _Run) -> None:
    import alter_kernels as ak
    model = copy.deepcopy(finetuned)
    print(f"-- {name}: unlearning {len(data['forget'])} forget rows, {epochs} epochs")
    try:
        hp = (json.loads(args.hparams) if args.hparams else
              method_hparams(name, args.lr_scale, "quick" if args.quick else "full"))
        run.hparams[name] = hp
        model, secs = run_method(name, model, data["forget"], data["retain_all"], tok, epochs=epochs, seed=args.seed,
                                 out_dir=os.path.join(args.out, "runs", name) if args.save_runs else None,
                                 hparams=hp)
    except Exception as e:      # report and go on with the other methods
        run.failures.append(name)
        run.table[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"   {name} failed: {type(e).__name__}: {e}")
        return
    model.eval()
    _note_router(name, run)
    r = evaluate(model, ref["truth_ratios"], ref["generations"])
    run.details[name] = r
    run.table[name] = summary(r, secs)
    # every score and generation above went through the model's default inference rule
    run.rules[name] = ak.get_state(model).config.inference_entropy if ak.is_patched(model) else None
    for g, i in zip(run.gens["forget"], run.show_f):
        g[name] = r["forget"]["generations"][i]
    for g, i in zip(run.gens["retain"], run.show_r):
        g[name] = r["retain"]["generations"][i]
    print(f"   {name}: FQ {r['forget_quality']:.3g}  MU {r['model_utility']:.3f}  ({secs:.1f}s)")


def _results(args, run: _Run, scores: dict, bench, data: dict, epochs: int, t_start: float) -> dict:
    import torch
    extra = {n: {k: d.get(k) for k in ("utility_parts", "fluency", "fluency_forget", "fluency_retain",
                                       "forget_probability", "forget_truth_ratio",
                                       "mcq_forget_accuracy", "mcq_retain_accuracy", "verbatim_forget_rouge")}
             for n, d in run.details.items()}
    return {"methods": run.table, "checks": run.checks, "hm_fq_utility_ratio": scores,
            "hm_fluency": fluency_scores(run.table), "details": extra,
            "generations": run.gens, "hparams": run.hparams, "router": run.routers, "protocol": protocol_info(args),
            "inference_entropy": run.rules, "benchmark": {"root": bench.root, "quick": args.quick, "epochs": epochs,
                                                  "forget_rows": len(data["forget"]),
                                                  "retain_rows": len(data["retain_all"]),
                                                  "retain_eval_rows": len(data["retain_eval"]), "build": bench.info},
            "total_seconds": time.perf_counter() - t_start, "torch_threads": torch.get_num_threads()}


def _write(args, out: dict, table: dict, retain_eval: list) -> str:
    from ..common.fsio import json_safe, write_json
    from ..synthetic.plot import plot_results
    # the retain rows utility was scored on, for alter-eval on the same split (docs/benchmark.md)
    write_json(os.path.join(args.out, RETAIN_EVAL_FILE), retain_eval)
    path = os.path.join(args.out, "results.json")
    write_json(path, json_safe(out))
    b = out["benchmark"]
    plot = plot_results({n: m for n, m in table.items() if "error" not in m},
                        os.path.join(args.out, "utility_vs_forget_quality"),
                        ylabel=f"model utility (retain part: {b['retain_eval_rows']}-row subset)")
    print(f"\nwrote {path}, {RETAIN_EVAL_FILE} and {plot} in {out['total_seconds']:.0f}s total")
    return path


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    import torch

    from ..synthetic.inject import build_benchmark

    _set_threads(args.threads)
    t_start = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    epochs = args.epochs or 3
    os.makedirs(args.out, exist_ok=True)
    if args.model:
        from .realknow import DEMO_METHODS, run_realknow_demo
        chosen = methods if args.methods != ",".join(METHODS) else list(DEMO_METHODS)
        return run_realknow_demo(args.model, args.out, chosen, seed=args.seed, selection=args.realknow_selection)

    print(f"== alter_kernels demo ({'quick' if args.quick else 'full'}), torch threads {torch.get_num_threads()}")
    bench = build_benchmark("quick" if args.quick else "default", cache_dir=args.cache, rebuild=args.rebuild)
    print(f"benchmark: {bench.root}")
    tok = bench.tokenizer()
    data = _load_data(bench, args.seed)
    evaluate = _evaluator(bench, tok, data)
    finetuned, ref, run = _baselines(bench, data, evaluate)
    for name in methods:
        _run_method(name, args, epochs, finetuned, data, tok, evaluate, ref, run)

    scores = hm_scores(run.table)
    out = _results(args, run, scores, bench, data, epochs, t_start)
    print_report(run.table, scores, run.gens, utility_split(out["benchmark"]))
    _write(args, out, run.table, data["retain_eval"])
    if run.failures:
        print(f"FAILED methods: {run.failures}", file=sys.stderr)
        return 1
    return 0
