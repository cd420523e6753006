"""The honest benchmark protocol: select hyper-parameters on DEV, report on TEST.

    python bench/sweep.py --preset full --stage dev   [--methods alter,npo ...]
    python bench/sweep.py --preset full --stage select
    python bench/sweep.py --preset full --stage test
    python bench/sweep.py --preset full --stage retrain --seeds 1000,0,1,2,3,4
    python bench/sweep.py --preset full --stage table

- DEV: the embedded benchmark built from corpus seed ``DEV_SEED`` (1000), same sizes as TEST.
  Every method gets the same grid: one multiplier k of ALL of its learning rates (lr; lr_A, lr_B,
  lr_router for the adapter methods), k in GRID; the adapter methods also run with B_0 frozen
  (``<method>_frozen``, alter_kernels.unlearn.options.METHOD_VARIANTS). The selected k maximises
  the selection score (``--score``, default hm_fluency: the harmonic mean of forget quality and
  utility / finetuned utility times a fluency ratio to the retain model) on DEV, ties broken by the
  larger forget quality. ``select`` writes alter_kernels/demo/selected_hparams.json.
- TEST: corpus seeds 0 (what the demo reports) to 4, each method at its DEV-selected values;
  the table gives mean and std over the seeds and paired wins of each ALTER form against every
  other method. Nothing is ever selected on a TEST seed.
- retrain: the gold standard, on each seed given. A second retain model (the same retain data,
  another training seed: alter_kernels.synthetic.inject.build_retrain) scored like every cell:
  what exact retraining reaches, so the forget quality of a model that truly never saw the forget
  authors. The table shows it as a row of its own; it selects nothing.

Every cell (preset, seed, method, k) is cached in bench/results/sweep/<preset>_cells.json, so a
stopped sweep continues where it stopped. Training and evaluation are the demo's (run_method,
evaluate through the default inference rule); unlearning: 3 epochs, batch 4, seed 0.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from alter_kernels.demo.protocol import (DEV_SEED, SCORES, SELECTED_PATH, SELECTION_SCORE,  # noqa: E402
                                         TEST_SEEDS, bench_for, evaluate, hm_score, load_split, selection_score)
from alter_kernels.common.fsio import atomic_write, json_safe, write_json  # noqa: E402
from alter_kernels.demo import METHODS as DEMO_METHODS, method_hparams, run_method  # noqa: E402
from alter_kernels.unlearn.options import METHOD_VARIANTS, resolve_variant  # noqa: E402

GRID = (10, 30, 100)
# the demo's methods, then the other variants (dict.fromkeys: the demo already runs one of them)
RETRAIN_ROW = "retrain (gold standard: a second retain model)"
METHODS = tuple(dict.fromkeys(DEMO_METHODS + tuple(METHOD_VARIANTS)))
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sweep")


def cells_path(preset):
    return os.path.join(OUT_DIR, f"{preset}_cells.json")


def load_cells(preset) -> dict:
    p = cells_path(preset)
    return json.load(open(p)) if os.path.exists(p) else {}


def save_cells(preset, cells):
    os.makedirs(OUT_DIR, exist_ok=True)
    p = cells_path(preset)
    # merge with what another process may have written meanwhile
    cur = load_cells(preset)
    cur.update(cells)
    write_json(p, cur, sort_keys=True)
    cells.update(cur)


class Seed:
    """One benchmark seed: data, finetuned model, reference truth ratios, finetuned utility."""

    def __init__(self, preset, seed, cells):
        self.preset, self.seed = preset, seed
        self.bench = bench_for(preset, seed)
        self.tok = self.bench.tokenizer()
        self.split = load_split(self.bench)
        self.finetuned = self.bench.load_model("finetuned").eval()
        key = f"{seed}|reference"
        cell = cells.get(key, {})
        if "ref_gens" not in cell:          # also cells cached before issue 24: add the retain model's answers
            rt = self.bench.load_model("retain").eval()
            r_rt = evaluate(rt, self.tok, self.split)
            gens = {s: r_rt[s]["generations"] for s in ("forget", "retain")}
            new = {"ref": r_rt["forget"]["truth_ratios"], "mu_retain": r_rt["model_utility"], "ref_gens": gens,
                   "forget_repetition_retain": r_rt["fluency_forget"]["repetition"]}
            if "mu_ft" not in cell:
                r_ft = evaluate(self.finetuned, self.tok, self.split, new["ref"], ref_gens=gens)
                new.update(mu_ft=r_ft["model_utility"], fq_ft=r_ft["forget_quality"],
                           forget_rouge_ft=r_ft["forget_rouge"], forget_repetition_ft=r_ft["fluency_forget"]["repetition"])
            cells[key] = {**new, **cell}       # what was cached stays as it was
            save_cells(preset, cells)
        self.ref = cells[key]["ref"]
        self.ref_gens = cells[key]["ref_gens"]
        self.mu_ft = cells[key]["mu_ft"]
        self.rep_retain = cells[key]["forget_repetition_retain"]


def score_model(s: Seed, model) -> dict:
    """The protocol's numbers of one model on seed ``s``: every cell's, and the retrain model's."""
    r = evaluate(model, s.tok, s.split, s.ref, ref_gens=s.ref_gens)
    ff = r["fluency_forget"]
    return {"fq": r["forget_quality"], "mu": r["model_utility"],
            "hm": hm_score(r["forget_quality"], r["model_utility"], s.mu_ft),
            "hm_fluency": selection_score(r["forget_quality"], r["model_utility"], s.mu_ft, ff["repetition"],
                                          s.rep_retain, "hm_fluency"),
            "forget_rouge": r["forget_rouge"], "retain_rouge": r["retain_rouge"],
            "repetition": r["fluency"]["repetition_rate_2"], "forget_repetition": ff["repetition"],
            "forget_degenerate": ff["degenerate_share"],
            "retain_degenerate": r["fluency_retain"]["degenerate_share"]}


def run_cell(s: Seed, method: str, hp: dict) -> dict:
    model = copy.deepcopy(s.finetuned)
    t0 = time.perf_counter()
    res_holder = {}
    import alter_kernels as ak
    orig = ak.unlearn

    def capture(*a, **kw):                  # keep the UnlearnResult (router accuracy, threshold)
        r = orig(*a, **kw)
        res_holder["r"] = r
        return r
    ak.unlearn = capture
    try:
        model, secs = run_method(method, model, s.split["forget"], s.split["retain"], s.tok, epochs=3, seed=0,
                                 hparams=hp)
    finally:
        ak.unlearn = orig
    model.eval()
    out = score_model(s, model)
    out.update(train_s=secs, total_s=time.perf_counter() - t0, hparams=hp)
    ur = res_holder.get("r")
    if ur is not None and resolve_variant(method)[0] in ("alter", "asymlora"):
        out["threshold"] = getattr(ur.config, "threshold", None)
        out["threshold_source"] = getattr(ur, "threshold_source", None)
        ra = getattr(ur, "router_accuracy", None)
        if ra:
            out["router_accuracy"] = ra
    return json_safe(out)


def stage_retrain(preset, cells, seeds):
    """The gold standard row: on each seed, a second retain model (another training seed,
    alter_kernels.synthetic.inject.build_retrain) scored like every cell (cell "<seed>|retrain")."""
    from alter_kernels.synthetic.inject import build_retrain
    for seed in seeds:
        key = f"{seed}|retrain"
        if key in cells:
            continue
        s = Seed(preset, seed, cells)
        t0 = time.perf_counter()
        model = build_retrain(s.bench, progress=False)
        c = score_model(s, model)
        c.update(total_s=time.perf_counter() - t0, recipe_seed=s.bench.info.get("retrain_recipe_seed"))
        cells[key] = json_safe(c)
        save_cells(preset, cells)
        print(f"[{preset} retrain] seed {seed}: FQ {c['fq']:.3g} MU {c['mu']:.3f} HM {c['hm']:.3f} "
              f"forget repetition {c['forget_repetition']:.3f} ({c['total_s']:.0f}s)", flush=True)


def retrain_line(cells, score) -> str | None:
    """The TEST table's row of the retrain model (None before ``--stage retrain`` ran)."""
    cs = [(sd, c) for sd in TEST_SEEDS if (c := cells.get(f"{sd}|retrain"))]
    if not cs:
        return None
    ratio = [c["mu"] / cells[f"{sd}|reference"]["mu_ft"] for sd, c in cs]
    sc = [cell_score(cells, sd, c, score) for sd, c in cs]
    return (f"| {RETRAIN_ROW} | - | {len(cs)} | {_ms([c['fq'] for _, c in cs])} | {_ms([c['mu'] for _, c in cs])} | "
            f"{_ms(ratio)} | {_ms([c['hm'] for _, c in cs])} | {_ms(sc)} | "
            f"{_ms([c['forget_repetition'] for _, c in cs])} | - |")


def _run_and_save(preset, s: Seed, m: str, k, cells, label: str) -> None:
    """One cell (method m at lr multiplier k on seed s), unless already in ``cells``; saved at once."""
    key = f"{s.seed}|{m}|{k}"
    if key in cells:
        return
    c = run_cell(s, m, method_hparams(m, k))
    c["k"] = k
    cells[key] = c
    save_cells(preset, cells)
    print(f"[{preset} {label}] {m} x{k}: FQ {c['fq']:.3g} MU {c['mu']:.3f} HM {c['hm']:.3f} "
          f"({c['total_s']:.0f}s)", flush=True)


def stage_dev(preset, methods, cells):
    s = Seed(preset, DEV_SEED, cells)
    for m in methods:
        for k in GRID:
            _run_and_save(preset, s, m, k, cells, "dev")


def cell_score(cells, seed, c: dict, score: str) -> float:
    """A cell's selection score (alter_kernels.demo.protocol.selection_score) from its cached numbers."""
    ref = cells[f"{seed}|reference"]
    if score == "hm_fluency" and ("forget_repetition" not in c or "forget_repetition_retain" not in ref):
        raise SystemExit(f"bench/sweep.py: a seed-{seed} cell ({c.get('k')}) was cached before issue 24 and holds no "
                         "forget-answer repetition: rerun it (remove it from the cells file) or use --score hm")
    return selection_score(c["fq"], c["mu"], ref["mu_ft"], c.get("forget_repetition"),
                           ref.get("forget_repetition_retain"), score)


def select(preset, cells, score: str = SELECTION_SCORE) -> dict:
    chosen = {}
    for m in METHODS:
        rows = [(k, cells.get(f"{DEV_SEED}|{m}|{k}")) for k in GRID]
        rows = [(k, c, cell_score(cells, DEV_SEED, c, score)) for k, c in rows if c]
        if not rows:
            continue
        k, c, sc = max(rows, key=lambda r: (r[2] or 0.0, r[1]["fq"] or 0.0))
        chosen[m] = {"k": k, "hparams": method_hparams(m, k), "score": score, "dev_score": sc, "dev_hm": c["hm"],
                     "dev_fq": c["fq"], "dev_mu": c["mu"], "dev_forget_repetition": c.get("forget_repetition")}
    return chosen


def stage_select(preset, cells, score=SELECTION_SCORE):
    chosen = select(preset, cells, score)
    data = json.load(open(SELECTED_PATH)) if os.path.exists(SELECTED_PATH) else {}
    data["protocol"] = (f"bench/sweep.py: grid k in {list(GRID)} (one multiplier of all of a method's learning rates), "
                        f"selected on the DEV benchmark (corpus seed {DEV_SEED}) by the score {score!r} "
                        "(alter_kernels.demo.protocol.selection_score), ties by forget quality; reported on TEST seeds "
                        f"{list(TEST_SEEDS)}")
    data[preset] = {m: v["hparams"] for m, v in chosen.items()}
    data[f"{preset}_dev"] = chosen
    write_json(SELECTED_PATH, data, indent=1, sort_keys=True)
    print(json.dumps(chosen, indent=1))


def stage_test(preset, methods, cells, seeds, score=SELECTION_SCORE):
    chosen = select(preset, cells, score)
    for seed in seeds:
        s = Seed(preset, seed, cells)
        for m in methods:
            if m not in chosen:
                print(f"[{preset} test] {m}: nothing selected on DEV yet, skipped", flush=True)
                continue
            _run_and_save(preset, s, m, chosen[m]["k"], cells, f"test seed {seed}")


def _ms(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"


def paired_lines(cells, chosen, score) -> list[str]:
    """Paired comparisons on the TEST seeds: for each ALTER form against each other method at their
    DEV-selected values, the seeds where ALTER's selection score is higher, and the mean difference;
    then each method's retain ROUGE and forget-answer repetition against the retain model's."""
    def per_seed(m):
        k = chosen[m]["k"]
        return {sd: c for sd in TEST_SEEDS if (c := cells.get(f"{sd}|{m}|{k}"))}
    have = {m: per_seed(m) for m in METHODS if m in chosen}
    have = {m: v for m, v in have.items() if v}
    mine = [m for m in have if resolve_variant(m)[0] == "alter"]
    others = [m for m in have if m not in mine]
    if not mine or not others:
        return []
    out = ["", f"Paired on TEST seeds (score {score}): seeds where the row beats the column / seeds in common "
               "(mean score difference)", "", "| ALTER form | " + " | ".join(others) + " |",
           "|---|" + "---|" * len(others)]
    for a in mine:
        row = []
        for b in others:
            common = sorted(set(have[a]) & set(have[b]))
            d = [cell_score(cells, sd, have[a][sd], score) - cell_score(cells, sd, have[b][sd], score) for sd in common]
            row.append(f"{sum(x > 0 for x in d)}/{len(d)} ({statistics.mean(d):+.3f})" if d else "-")
        out.append(f"| {a} | " + " | ".join(row) + " |")
    out += ["", "| method | retain ROUGE | forget repetition | forget degenerate share |", "|---|---|---|---|"]
    for m, cs in have.items():
        out.append(f"| {m} | {_ms([c.get('retain_rouge') for c in cs.values()])} | "
                   f"{_ms([c.get('forget_repetition') for c in cs.values()])} | "
                   f"{_ms([c.get('forget_degenerate') for c in cs.values()])} |")
    return out


def stage_table(preset, cells, score=SELECTION_SCORE):
    chosen = select(preset, cells, score)
    lines = [f"### {preset} preset: DEV grid (corpus seed {DEV_SEED}; cells FQ / MU / HM; selected by {score})", "",
             "| method | " + " | ".join(f"x{k}" for k in GRID) + " | selected |",
             "|---|" + "---|" * (len(GRID) + 1)]
    for m in METHODS:
        row = []
        for k in GRID:
            c = cells.get(f"{DEV_SEED}|{m}|{k}")
            row.append(f"{c['fq']:.3g} / {c['mu']:.3f} / {c['hm']:.3f}" if c else "-")
        if all(r == "-" for r in row):                   # a variant not run on DEV: no row
            continue
        lines.append(f"| {m} | " + " | ".join(row) + f" | x{chosen[m]['k'] if m in chosen else '-'} |")
    seeds_done = sorted({int(k.split('|')[0]) for k in cells if k.split('|')[0] != str(DEV_SEED)})
    dev_rt = cells.get(f"{DEV_SEED}|retrain")
    if dev_rt:
        lines += ["", f"{RETRAIN_ROW} on DEV: FQ {dev_rt['fq']:.3g} / MU {dev_rt['mu']:.3f} / HM {dev_rt['hm']:.3f}"]
    lines += ["", f"### {preset} preset: TEST (corpus seeds {list(TEST_SEEDS)}, DEV-selected values; mean ± std)", "",
              f"| method | k | seeds | forget quality | model utility | MU / finetuned | HM | {score} | forget repetition | "
              "router acc (F / R) |", "|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for m in METHODS:
        if m not in chosen:
            continue
        k = chosen[m]["k"]
        cs = [(sd, cells.get(f"{sd}|{m}|{k}")) for sd in TEST_SEEDS]
        cs = [(sd, c) for sd, c in cs if c]
        if not cs:
            continue
        fq = [c["fq"] for _, c in cs]
        mu = [c["mu"] for _, c in cs]
        ratio = [c["mu"] / cells[f"{sd}|reference"]["mu_ft"] for sd, c in cs]
        hm = [c["hm"] for _, c in cs]
        ra = [c.get("router_accuracy") for _, c in cs if c.get("router_accuracy")]
        ra_s = "-"
        if ra:
            ra_s = (f"{statistics.mean(r['forget'] for r in ra):.2f} / "
                    f"{statistics.mean(r['retain'] for r in ra):.2f}")
        rep = [c.get("forget_repetition") for _, c in cs]
        sc = [cell_score(cells, sd, c, score) for sd, c in cs]
        lines.append(f"| {m} | x{k} | {len(cs)} | {_ms(fq)} | {_ms(mu)} | {_ms(ratio)} | {_ms(hm)} | {_ms(sc)} | "
                     f"{_ms(rep)} | {ra_s} |")
        summary[m] = {"k": k, "seeds": [sd for sd, _ in cs], "fq": fq, "mu": mu, "mu_ratio": ratio, "hm": hm,
                      "hm_mean": statistics.mean(hm), score: sc, f"{score}_mean": statistics.mean(sc),
                      "forget_repetition": rep}
    rl = retrain_line(cells, score)
    if rl:
        lines += [rl]
        cs = {sd: c for sd in TEST_SEEDS if (c := cells.get(f"{sd}|retrain"))}
        summary[RETRAIN_ROW] = {"seeds": sorted(cs), "fq": [c["fq"] for c in cs.values()],
                                "mu": [c["mu"] for c in cs.values()],
                                score: [cell_score(cells, sd, c, score) for sd, c in cs.items()],
                                "forget_repetition": [c["forget_repetition"] for c in cs.values()]}
    lines += paired_lines(cells, chosen, score)
    refs = [(sd, cells.get(f"{sd}|reference")) for sd in TEST_SEEDS]
    lines += ["", "finetuned model per TEST seed (FQ / MU): " +
              ", ".join(f"seed {sd}: {c['fq_ft']:.2g} / {c['mu_ft']:.3f}" for sd, c in refs if c)]
    rr = [(sd, c["forget_repetition_retain"]) for sd, c in refs if c and "forget_repetition_retain" in c]
    if rr:
        lines += ["", "retain model's forget-answer repetition per TEST seed: " +
                  ", ".join(f"seed {sd}: {r:.3f}" for sd, r in rr)]
    text = "\n".join(lines) + "\n"
    os.makedirs(OUT_DIR, exist_ok=True)
    atomic_write(os.path.join(OUT_DIR, f"{preset}_table.md"), text)
    write_json(os.path.join(OUT_DIR, f"{preset}_summary.json"),
               json_safe({"grid": list(GRID), "dev_seed": DEV_SEED, "test_seeds": list(TEST_SEEDS),
                          "selected": chosen, "test": summary, "seeds_with_cells": seeds_done}))
    print(text)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=("full", "quick"), default="full")
    ap.add_argument("--stage", choices=("dev", "select", "test", "retrain", "table", "all"), default="all",
                    help="retrain: the gold-standard row (a second retain model per seed; not part of 'all')")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default=",".join(map(str, TEST_SEEDS)))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--score", choices=SCORES, default=SELECTION_SCORE,
                    help="DEV selection score (alter_kernels.demo.protocol.selection_score)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    cells = load_cells(args.preset)
    if args.stage in ("dev", "all"):
        stage_dev(args.preset, methods, cells)
    if args.stage in ("select", "all"):
        stage_select(args.preset, cells, args.score)
    if args.stage in ("test", "all"):
        stage_test(args.preset, methods, cells, [int(x) for x in args.seeds.split(",")], args.score)
    if args.stage == "retrain":
        stage_retrain(args.preset, cells, [int(x) for x in args.seeds.split(",")])
    if args.stage in ("table", "all"):
        stage_table(args.preset, cells, args.score)


if __name__ == "__main__":
    main()
