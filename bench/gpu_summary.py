#!/usr/bin/env python
"""Summary of a scripts/gpu_check.sh run: which steps passed, and every GPU target of issue 15
read from the benchmarks' JSON (each a ratio measured within one run).

    python bench/gpu_summary.py --detail OUT/detail --out OUT [--dry-run]

Reads DETAIL/steps.tsv and DETAIL/{tsallis,lm_head,asym_lora,train_step,decode}/*.json; writes
OUT/summary.json and OUT/summary.md and prints the Markdown. A target whose benchmark did not
run shows as "no data". With --dry-run (CPU, tiny shapes) the figures are shown but not judged.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import machine, md_table, write_results  # noqa: E402

# name: (what, comparison, bound); the bounds are the targets
TARGETS = {
    "tsallis_bw": ("tsallis_entropy bf16 fwd: bandwidth / torch d2d copy bandwidth", ">=", 0.8),
    "lm_head_fwd": ("lm_head_entropy bf16 fwd: time / bare GEMM time", "<=", 1.25),
    "lm_head_fwd_bwd": ("lm_head_entropy bf16 fwd+bwd: time / bare GEMM fwd+bwd time", "<=", 1.25),
    "lm_head_mem": ("lm_head_entropy bf16: peak extra memory / fp32 [N, V] logits", "info", None),
    "asym_overhead": ("asym_lora bf16 fwd+bwd: overhead over the bare base linear, %", "<=", 15.0),
    "asym_peft": ("asym_lora bf16 fwd+bwd: time / PEFT LoRA r=8 time", "<=", 1.1),
    "train_peft": ("training step: ALTER time / PEFT LoRA time", "<=", 1.2),
    "decode_loop": ("decoding: base-in-the-same-loop time / ak.generate time (decode steps)", ">=", 0.9),
    "decode_hf": ("decoding: HF generate (base model) time / ak.generate time (end to end)", "info", None),
    "decode_loop_hf": ("decoding: HF generate (base model) time / same loop on the base model (end to end)",
                       "info", None),
}


def load(detail: str, sub: str, pattern: str) -> dict | None:
    paths = sorted(glob.glob(os.path.join(detail, sub, pattern)))
    if not paths:
        return None
    with open(paths[0]) as f:
        return json.load(f)


def judge(key: str, value, dry: bool) -> str:
    _, cmp, bound = TARGETS[key]
    if value is None or value != value:
        return "no data"
    if dry:
        return "dry run"
    if cmp == "info":
        return "info"
    ok = value >= bound if cmp == ">=" else value <= bound
    return "pass" if ok else "MISS"


def row(key, impl, value, detail, dry, shape=""):
    what, cmp, bound = TARGETS[key]
    return {"check": what, "shape": shape, "impl": impl, "measured": value,
            "target": "" if cmp == "info" else f"{cmp} {bound}", "status": judge(key, value, dry), "detail": detail}


def tsallis_rows(d, dry):
    if d is None:
        return [row("tsallis_bw", "", None, "benchmark did not run", dry)]
    bars = ("softmax_pow_sum", "torch.logsumexp", "torch copy_ (d2d)")
    rs = [r for r in d["rows"] if r["op"] == "tsallis_entropy" and r["pass"] == "fwd" and r["impl"] not in bars]
    if not rs:
        return [row("tsallis_bw", "", None, "no kernel rows", dry)]
    big = max(r["N"] * r["V"] for r in rs)
    copy = (d.get("copy") or {}).get("GB_s")
    out = []
    for r in rs:
        if r["N"] * r["V"] == big:
            out.append(row("tsallis_bw", r["impl"], r.get("x_copy_bw"),
                           f"{r['GB_s']:.0f} GB/s vs copy {copy:.0f} GB/s; {r['time_ms']:.3g} ms" if copy else
                           f"{r['GB_s']:.3g} GB/s; no copy baseline", dry, f"[{r['N']}, {r['V']}]"))
    return out


def lm_head_rows(d, dry):
    if d is None:
        return [row("lm_head_fwd", "", None, "benchmark did not run", dry)]
    bars = ("gemm h @ w.T", "matmul+softmax_pow_sum")
    out = []
    for r in d["rows"]:
        if r["op"] != "lm_head_entropy" or r["impl"] in bars:
            continue
        shape = f"N {r['N']}, d {r['d']}, V {r['V']}"
        key = "lm_head_fwd" if r["pass"] == "fwd" else "lm_head_fwd_bwd"
        tf = f", {r['TFLOP_s']:.0f} TFLOP/s" if isinstance(r.get("TFLOP_s"), float) else ""
        out.append(row(key, r["impl"], r.get("x_vs_gemm"), f"{r['time_ms']:.3g} ms{tf}", dry, shape))
        mem = r.get("mem_vs_logits")
        if isinstance(mem, float):
            out.append(row("lm_head_mem", f"{r['impl']} ({r['pass']})", mem,
                           f"peak {r['peak_MiB']:.0f} MiB vs {r['N'] * r['V'] * 4 / 2**20:.0f} MiB", dry, shape))
    return out or [row("lm_head_fwd", "", None, "no kernel rows", dry)]


def asym_rows(d, dry):
    if d is None:
        return [row("asym_overhead", "", None, "benchmark did not run", dry)]
    rs = d["rows"]
    if not rs:
        return [row("asym_overhead", "", None, "no rows", dry)]
    big = max(r["N"] * r["d"] for r in rs)
    out = []
    for r in rs:
        if r["N"] * r["d"] != big or not r["impl"].startswith("alter["):
            continue
        shape = f"N {r['N']}, d {r['d']}, E {r['E']}, r {r['r']}, {r.get('dtype', '')}"
        out.append(row("asym_overhead", r["impl"], r.get("overhead_pct"), f"{r['fwd_bwd_ms']:.3g} ms", dry, shape))
        out.append(row("asym_peft", r["impl"], r.get("x_peft"), f"{r['fwd_bwd_ms']:.3g} ms", dry, shape))
    return out


def train_rows(d, dry):
    if d is None:
        return [row("train_peft", "", None, "benchmark did not run", dry)]
    for r in d["rows"]:
        if r["variant"] == "alter":
            return [row("train_peft", "alter", r["x_peft"], f"{r['step_s'] * 1e3:.3g} ms per step",
                        dry, f"{r['size']}, {r.get('dtype', '')}")]
    return [row("train_peft", "", None, "no alter row", dry)]


def _paired(a, b):
    """Median over repetitions of a[i] / b[i] (the two ran back to back)."""
    vals = [x / y for x, y in zip(a, b) if y and x == x and y == y]
    return statistics.median(vals) if vals else None


def decode_rows(d, dry):
    if d is None:
        return [row("decode_loop", "", None, "benchmark did not run", dry)]
    out = []
    by = {}
    for r in d["rows"]:
        by[(r["config"], r["batch"], r["variant"])] = r
    for (cfg, bsz, var), r in sorted(by.items()):
        if var not in ("alter_base", "alter_self", "alter_none"):    # bench/decode.py's ALTER variants
            continue
        shape = f"{cfg}, batch {bsz}"
        out.append(row("decode_loop", var, r.get("decode_x_base"),
                       f"{r.get('decode_tok_s', float('nan')):.0f} tok/s decode", dry, shape))
        hf = by.get((cfg, bsz, "hf_base"))
        base = by.get((cfg, bsz, "base"))
        if hf and "raw_seconds" in hf and "raw_seconds" in r:
            out.append(row("decode_hf", var, _paired(hf["raw_seconds"]["total"], r["raw_seconds"]["total"]),
                           "prefill included (ALTER: + the base-entropy pass)", dry, shape))
        if hf and base and "raw_seconds" in hf and "raw_seconds" in base:
            out.append(row("decode_loop_hf", "base", _paired(hf["raw_seconds"]["total"],
                                                             base["raw_seconds"]["total"]), "", dry, shape))
    return out or [row("decode_loop", "", None, "no ALTER rows", dry)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--detail", required=True, help="the run's detail folder (steps.tsv, one folder per benchmark)")
    ap.add_argument("--out", required=True, help="where summary.json / summary.md go")
    ap.add_argument("--dry-run", action="store_true", help="CPU dry run: show figures, judge no target")
    args = ap.parse_args(argv)
    steps = []
    tsv = os.path.join(args.detail, "steps.tsv")
    if os.path.exists(tsv):
        with open(tsv) as f:
            steps = list(csv.DictReader(f, delimiter="\t"))
    benches = {
        "tsallis": load(args.detail, "tsallis", "entropy*.json"),
        "lm_head": load(args.detail, "lm_head", "entropy*.json"),
        "asym_lora": load(args.detail, "asym_lora", "asym_lora*.json"),
        "train_step": load(args.detail, "train_step", "train_step*.json"),
        "decode": load(args.detail, "decode", "decode*.json"),
    }
    dry = args.dry_run
    targets = (tsallis_rows(benches["tsallis"], dry) + lm_head_rows(benches["lm_head"], dry)
               + asym_rows(benches["asym_lora"], dry) + train_rows(benches["train_step"], dry)
               + decode_rows(benches["decode"], dry))
    info = next((b["machine"] for b in benches.values() if b and "machine" in b), None) or machine()
    device = info.get("gpu") or f"CPU ({info.get('cpu', '?')})"
    all_pass = bool(steps) and all(s["status"] == "pass" for s in steps)
    results = {"device": device, "torch": info.get("torch"), "triton": info.get("triton"), "cuda": info.get("cuda"),
               "machine": info, "dry_run": dry, "steps": steps, "all_steps_passed": all_pass, "targets": targets,
               "misses": [t for t in targets if t["status"] == "MISS"]}
    md = (f"# GPU check (scripts/gpu_check.sh){' -- DRY RUN (CPU, tiny shapes)' if dry else ''}\n\n"
          f"device: {device}; torch {info.get('torch')}, CUDA {info.get('cuda')}, triton {info.get('triton')}; "
          f"python {info.get('python')}; {info.get('date')}\n\n"
          f"## Steps: {'every step passed' if all_pass else 'NOT every step passed'}\n\n"
          + md_table(steps, ["step", "status", "seconds", "timeout", "rc"])
          + "\n## Targets (issue 15)\n\n"
          + md_table(targets, ["check", "shape", "impl", "measured", "target", "status", "detail"]))
    write_results(os.path.join(args.out, "summary"), results, md)
    print(md)


if __name__ == "__main__":
    main()
