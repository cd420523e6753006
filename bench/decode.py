"""Decode throughput: gated (entropy-routed) decoding vs the unpatched base model vs the naive path.

    python bench/decode.py                 # tiny + ~100M Llama (random init), batch 1 and 8,
                                           # prompt 128, 128 new tokens -> bench/results/decode.{json,md}
    python bench/decode.py --quick         # tiny config only, fewer tokens and repetitions
    python bench/decode.py --out DIR --threads 1 --reps 5

Variants (all greedy, same prompts, one model per config; the patched copy has random B experts
and router so that routing and adapters really run, and theta at the median prompt entropy so
that both branches are taken):

    base          ak.generate on the unpatched model (same static-cache loop)
    alter_base    ak.generate on the patched model with inference_entropy="base" (the default):
                  base-model entropies for prompt and generated tokens; the base stream decodes
                  beside the adapted one as extra batch rows of the same GEMMs
    alter_self    inference_entropy="self": generated tokens routed by the adapted logits' entropy
                  (prompt by the base pass), one stream
    alter_none    inference_entropy="none": every token high entropy, no entropy work at all
    alter_base_python   alter_base with the pure-PyTorch fast path (native decode ops off)
    reference     ak.generate(fast=False) under ak.use_backend("reference"): the generic
                  AlterLinear path (one route + one asym_lora per linear), the naive baseline
    hf_base / hf_alter   transformers' model.generate (DynamicCache) on the base model, and on
                  the patched model (its default inference rule; not with --quick)

Per variant: decode tok/s = B * (new - 1) / decode seconds (steady state, the loop after the
first token; from GenerationOutput.decode_s), end-to-end tok/s = B * new / total seconds
(prefill included: the base-entropy prefill pass is paid there). Variants are interleaved
within each repetition and the median over repetitions is reported, so the ratios are measured
side by side on the same (shared, noisy) machine: x_base columns are the median over repetitions
of the paired ratio (base time / variant time of the same repetition); decode_x_base_best is
best-of-repetitions base over best variant. Peak memory: one short call per variant.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore", category=RuntimeWarning, module="alter_kernels")

import alter_kernels as ak  # noqa: E402
from alter_kernels import kernels  # noqa: E402
from bench.common import machine, md_table, peak_memory, write_results  # noqa: E402

CONFIGS = {
    "tiny": dict(vocab_size=1024, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2),
    "100m": dict(vocab_size=16384, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=12),
}


def build(name: str, device, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(max_position_embeddings=1024, **CONFIGS[name])
    base = LlamaForCausalLM(cfg).eval().to(device)
    gated = copy.deepcopy(base)
    ak.patch(gated, ak.AlterConfig(num_forget_experts=2, init_seed=seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in ak.adapter_state_dict(gated).items():
            if pname.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif pname.endswith("alter_router.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
    n_params = sum(p.numel() for p in base.parameters())
    return base, gated, n_params


def variants(base, gated, quick: bool, native_available: bool, with_hf: bool = True):
    def ak_gen(model, **kw):
        def run(ids, new):
            out = ak.generate(model, ids, new, return_dict=True, **kw)
            return out.prefill_s, out.decode_s
        return run

    def ref_gen(ids, new):
        with ak.use_backend("reference"):
            out = ak.generate(gated, ids, new, fast=False, return_dict=True)
        return out.prefill_s, out.decode_s

    def hf(model):
        def run(ids, new):
            t0 = time.perf_counter()
            with torch.inference_mode():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, pad_token_id=0, eos_token_id=None)
            return None, time.perf_counter() - t0
        return run

    out = {"base": ak_gen(base), "alter_base": ak_gen(gated, entropy="base"),
           "alter_self": ak_gen(gated, entropy="self"), "alter_none": ak_gen(gated, entropy="none")}
    if native_available:
        out["alter_base_python"] = ak_gen(gated, entropy="base", native=False)
    if not quick:
        out["reference"] = ref_gen
    if with_hf:
        out["hf_base"] = hf(base)
        out["hf_alter"] = hf(gated)
    return out


def bench_config(name, device, batches, prompt, new, reps, quick, memory, with_hf):
    base, gated, n_params = build(name, device)
    native_available = kernels.native_op("decode_group_linear") is not None and device.type == "cpu"
    runs = variants(base, gated, quick, native_available, with_hf and not quick)
    rows = []
    for bsz in batches:
        g = torch.Generator().manual_seed(bsz)
        ids = torch.randint(3, CONFIGS[name]["vocab_size"], (bsz, prompt), generator=g).to(device)
        # theta at the median base-model prompt entropy: both routing branches are exercised
        ent = ak.token_entropy(gated, ids)[:, 1:]
        ak.get_state(gated).config.threshold = float(ent.median())
        info = ak.generate(gated, ids, min(new, 16), return_dict=True)
        for fn in runs.values():                      # warm-up
            fn(ids, 4)
        times = {k: {"prefill": [], "decode": [], "total": []} for k in runs}
        for _ in range(reps):
            for k, fn in runs.items():
                pre, dec = fn(ids, new)
                times[k]["decode"].append(dec if pre is not None else float("nan"))
                times[k]["prefill"].append(pre if pre is not None else float("nan"))
                times[k]["total"].append(dec + (pre or 0.0))
        med = {k: {m: statistics.median(v) for m, v in t.items()} for k, t in times.items()}
        for k in runs:
            m = med[k]
            row = {"config": name, "params_M": round(n_params / 1e6, 1), "batch": bsz, "prompt": prompt, "new": new,
                   "variant": k,
                   "decode_tok_s": bsz * (new - 1) / m["decode"] if m["prefill"] == m["prefill"] else float("nan"),
                   "e2e_tok_s": bsz * new / m["total"],
                   "prefill_ms": m["prefill"] * 1e3 if m["prefill"] == m["prefill"] else float("nan"),
                   "decode_ms_per_step": m["decode"] / (new - 1) * 1e3 if m["prefill"] == m["prefill"] else float("nan"),
                   "reps": reps, "high_fraction_decode": info.high_fraction}
            rows.append(row)
        # ratios: median over repetitions of the paired ratio (base and variant ran back to back)
        def paired(k, ref, metric):
            return statistics.median(a / b for a, b in zip(times[ref][metric], times[k][metric]))
        for r in rows:
            if r["batch"] == bsz and r["config"] == name:
                k = r["variant"]
                r["decode_x_base"] = paired(k, "base", "decode") if r["prefill_ms"] == r["prefill_ms"] else float("nan")
                r["e2e_x_base"] = paired(k, "base", "total")
                r["decode_x_base_best"] = (min(times["base"]["decode"]) / min(times[k]["decode"])
                                           if r["prefill_ms"] == r["prefill_ms"] else float("nan"))
                if "hf_base" in times and k.startswith("hf_"):
                    r["e2e_x_hf_base"] = paired(k, "hf_base", "total")
                r["raw_seconds"] = times[k]
        if memory:
            for k, fn in runs.items():
                mem = peak_memory(lambda: fn(ids, 8), device)
                for r in rows:
                    if r["batch"] == bsz and r["variant"] == k and r["config"] == name:
                        r["peak_mem_MiB"] = mem / 2 ** 20
        print(md_table([r for r in rows if r["batch"] == bsz], COLUMNS), flush=True)
    return rows


COLUMNS = ["config", "params_M", "batch", "variant", "decode_tok_s", "decode_x_base", "decode_x_base_best",
           "e2e_tok_s", "e2e_x_base", "e2e_x_hf_base",
           "prefill_ms", "decode_ms_per_step", "peak_mem_MiB", "high_fraction_decode"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny config, prompt 32, 32 new tokens, 3 reps")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                    help="output directory (default bench/results/)")
    ap.add_argument("--configs", default=None, help="comma list of " + ",".join(CONFIGS))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt", type=int, default=None)
    ap.add_argument("--new", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--hf-configs", default="tiny", help="configs on which HF generate is also timed (slow)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configs = (args.configs or ("tiny" if args.quick else "tiny,100m")).split(",")
    prompt = args.prompt or (32 if args.quick else 128)
    new = args.new or (32 if args.quick else 128)
    reps = args.reps or (3 if args.quick else 5)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for name in configs:
        rows += bench_config(name, device, batches, prompt, new, reps if name == "tiny" else max(3, reps // 2),
                             args.quick, not args.no_memory, name in args.hf_configs.split(","))
    results = {"machine": machine(), "args": vars(args), "backends": ak.backends(),
               "native_decode_ops": kernels.native_op("decode_group_linear") is not None,
               "note": "ratios are measured side by side (interleaved repetitions, medians); the machine may be "
                       "shared and noisy", "rows": rows}
    table = ("# Decode throughput (bench/decode.py)\n\n"
             f"machine: {results['machine'].get('cpu', '')} {results['machine'].get('gpu', '')}, "
             f"torch threads {torch.get_num_threads()}, device {device}, date {results['machine']['date']}\n\n"
             + md_table(rows, COLUMNS))
    stem = os.path.join(args.out, "decode" + ("_quick" if args.quick else ""))
    paths = write_results(stem, results, table)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
