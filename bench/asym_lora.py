#!/usr/bin/env python
"""Benchmark of ak.asym_lora: forward + backward time and peak memory of one adapted linear.

Compared side by side in one run (same x, W0, rank, device):
  base      the bare frozen linear x W0^T (+ the backward to x): the floor
  peft      PEFT's LoRA Linear at the same rank (one expert)
  naive     the HydraLoRA-style loop: A x per expert, dense softmax weights, plain autograd
  alter     ak.asym_lora with the automatic backend (and every other fast backend this
            machine runs: torch, cpp, ...), with an ALTER plan (mixed high/low tokens, masks)
Adapter overhead = time - base time. Also the decode (small N, forward only, no grad) path:
cat GEMM vs per-token gather in the C++ kernel.

    python bench/asym_lora.py [--quick] [--out DIR] [--threads T]
    # the GPU target of issue 15 (scripts/gpu_check.sh): overhead_pct <= 15, x_peft <= 1.1
    python bench/asym_lora.py --device cuda --dtype bf16 --shapes 4096:8192 --iters 20 --no-decode

--dtype sets x and the base weight (bf16: a bf16 model); --adapter-dtype the adapter parameters
(default fp32, the default of both ak.AlterConfig.adapter_dtype and PEFT's autocast of LoRA
weights). overhead_pct = (time - base time) / base time, in percent.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import machine, md_table, peak_memory, write_results  # noqa: E402

import alter_kernels as ak  # noqa: E402
from alter_kernels import kernels  # noqa: E402


def make_plan(n, E, device, seed=0):
    """A training plan like route_ref's: ~40% high tokens (retain + top-3 forget experts with
    gate weights), the rest one-hot; masks of spec 4."""
    g = torch.Generator().manual_seed(seed)
    high = torch.rand(n, generator=g) < 0.4
    gate = torch.softmax(torch.randn(n, E, generator=g), -1)
    w = torch.zeros(n, E)
    w[:, 0] = 1.0
    k = min(3, E - 1)
    if k > 0:
        top = gate[:, 1:].topk(k, -1).indices + 1
        w.scatter_(1, top, gate.gather(1, top))
    label = torch.randint(0, E, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(label, E).float()
    w = torch.where(high[:, None], w, onehot)
    b_mask = onehot.bool() & ~high[:, None]
    return w.to(device), high.to(device), b_mask.to(device)


class NaiveHydra(nn.Module):
    """HydraLoRA-style: per expert A_e x (here the same A, recomputed), dense softmax gate."""

    def __init__(self, base, r, E, scale):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.randn(r, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.randn(E, base.out_features, r) * 0.01)
        self.router = nn.Parameter(torch.randn(base.in_features, E) * 0.01)
        self.scale = scale

    def forward(self, x):
        y = self.base(x)
        gate = torch.softmax(x @ self.router, -1)
        for e in range(self.B.shape[0]):
            y = y + self.scale * gate[:, e:e + 1] * ((x @ self.A.t()) @ self.B[e].t())
        return y


def peft_linear(base, r, alpha):
    from peft import LoraConfig, get_peft_model
    wrapper = nn.Sequential()
    wrapper.add_module("proj", base)
    model = get_peft_model(wrapper, LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0))
    lin = model.base_model.model.proj
    nn.init.normal_(lin.lora_B["default"].weight, std=0.01)
    return model


def bench_shape(d, n, E, r, device, iters, warmup, backends, dtype=torch.float32, adapter_dtype=torch.float32):
    torch.manual_seed(0)
    alpha = 2 * r
    scale = alpha / r
    base = nn.Linear(d, d, bias=False).to(device=device, dtype=dtype)
    base.weight.requires_grad_(False)
    x0 = torch.randn(n, d, device=device).to(dtype)
    gy = torch.randn(n, d, device=device).to(dtype)
    rows = []

    def fwd_bwd(module_fn, params):
        def run():
            x = x0.clone().requires_grad_(True)
            y = module_fn(x)
            y.backward(gy)
            for p in params:
                p.grad = None
            return y
        return run

    def fwd_only(module_fn):
        def run():
            with torch.no_grad():
                return module_fn(x0)
        return run

    cases = []
    cases.append(("base", lambda x: base(x), []))
    pm = peft_linear(base, r, alpha).to(device)
    for p in pm.parameters():
        if p.requires_grad:
            p.data = p.data.to(adapter_dtype)
    cases.append(("peft", lambda x: pm(x), [p for p in pm.parameters() if p.requires_grad]))
    naive = NaiveHydra(base, r, E, scale).to(device=device, dtype=dtype)
    cases.append(("naive", lambda x: naive(x), [naive.A, naive.B, naive.router]))
    A = nn.Parameter((torch.randn(r, d, device=device) / math.sqrt(d)).to(adapter_dtype))
    B = nn.Parameter((torch.randn(E, d, r, device=device) * 0.01).to(adapter_dtype))
    w, high, b_mask = make_plan(n, E, device)
    for be in backends:
        def fn(x, be=be):
            with ak.use_backend(be):
                return ak.asym_lora(x, base.weight, A, B, w, scale, high, b_mask, None)
        cases.append((f"alter[{be}]", fn, [A, B]))
    # round-robin timing: every iteration runs every case once, so load changes on a shared
    # machine hit all cases alike; median and min per case
    import statistics
    from bench.common import timed_call
    runs = {name: (fwd_bwd(fn, params), fwd_only(fn)) for name, fn, params in cases}
    tfb = {name: [] for name in runs}
    tfo = {name: [] for name in runs}
    for it in range(warmup + iters):
        for name, (fb, fo) in runs.items():
            for store, f in ((tfb, fb), (tfo, fo)):
                t = timed_call(f, device)        # CUDA events on a GPU, perf_counter on the CPU
                if it >= warmup:
                    store[name].append(t)
    res = {}
    for name, fn, params in cases:
        mem = peak_memory(fwd_bwd(fn, params), device)
        res[name] = (statistics.median(tfb[name]), statistics.median(tfo[name]), mem, min(tfb[name]))
    tb = res["base"][0]
    tp = res["peft"][0]
    tn = res["naive"][0]
    for name, (t, tf, mem, tmin) in res.items():
        row = {"d": d, "N": n, "E": E, "r": r, "dtype": str(dtype).replace("torch.", ""),
               "impl": name, "fwd_bwd_ms": t * 1e3, "fwd_bwd_min_ms": tmin * 1e3,
               "fwd_ms": tf * 1e3, "overhead_pct": (t - tb) / tb * 100.0,
               "peak_MiB": mem / 2 ** 20, "x_peft": t / tp, "overhead_ms": (t - tb) * 1e3,
               "overhead_vs_naive": (t - tb) / (tn - tb) if tn > tb else float("nan")}
        rows.append(row)
    return rows


def bench_decode(d, E, r, ns, iters):
    """Forward-only small-N path of the C++ kernel: cat GEMM (mode 1) vs per-token gather (mode 2)."""
    rows = []
    if not kernels.native_has_kernel("asym_lora_fwd", "CPU"):
        return rows
    op = torch.ops.alter_kernels.asym_lora_fwd
    W = torch.randn(d, d)
    A = torch.randn(r, d) / math.sqrt(d)
    B = torch.randn(E, d, r) * 0.01
    for n in ns:
        x = torch.randn(n, d)
        w, _, _ = make_plan(n, E, "cpu", seed=n)
        fns = {"base_us": lambda: x @ W.t(), "cat_us": lambda: op(x, W, A, B, w, 2.0, None, 1),
               "gather_us": lambda: op(x, W, A, B, w, 2.0, None, 2),
               "ak_asym_lora_us": lambda: ak.asym_lora(x, W, A, B, w, 2.0)}
        ts = {k: [] for k in fns}
        for it in range(3 + iters):            # round-robin, min over iterations (noisy shared machine)
            for k, f in fns.items():
                t0 = time.perf_counter()
                for _ in range(5):
                    f()
                if it >= 3:
                    ts[k].append((time.perf_counter() - t0) / 5)
        row = {"d": d, "N": n, "E": E, "r": r}
        row.update({k: min(v) * 1e6 for k, v in ts.items()})
        row["ak_vs_base"] = row["ak_asym_lora_us"] / row["base_us"]
        rows.append(row)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small shape, few iterations")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--shapes", default="", help="d:N,d:N,... (default: the issue's grid)")
    ap.add_argument("--iters", type=int, default=0, help="timed round-robin iterations (default 7, quick 3)")
    ap.add_argument("--no-decode", action="store_true", help="skip the small-N decode table")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="x and the base weight")
    ap.add_argument("--adapter-dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--warmup", type=int, default=0, help="untimed round-robin iterations (default 2, quick 1)")
    args = ap.parse_args(argv)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    E, r = 5, 8
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
    elif args.quick:
        shapes = [(512, 256)]
    elif device.type == "cuda":
        shapes = [(2048, 512), (2048, 2048), (4096, 512), (4096, 2048), (4096, 8192)]
    else:
        shapes = [(2048, 512), (2048, 2048), (4096, 512), (4096, 2048)]
    iters, warmup = (3, 1) if args.quick else (7, 2)
    if args.iters:
        iters = args.iters
    if args.warmup:
        warmup = args.warmup
    backends = [b for b in kernels.available("asym_lora", device) if b not in ("reference",)
                and not (b == "triton" and device.type == "cpu")]
    rows = []
    for d, n in shapes:
        rows += bench_shape(d, n, E, r, device, iters, warmup, backends, dtypes[args.dtype],
                            dtypes[args.adapter_dtype])
        print(md_table([x for x in rows if x["d"] == d and x["N"] == n],
                       ["d", "N", "impl", "fwd_bwd_ms", "fwd_bwd_min_ms", "fwd_ms", "peak_MiB", "x_peft", "overhead_ms",
                        "overhead_pct", "overhead_vs_naive"]), flush=True)
    decode = []
    if device.type == "cpu" and not args.no_decode:
        decode = bench_decode(512 if args.quick else 2048, E, r, [1, 4, 8, 16, 32, 64], 5 if args.quick else 20)
        print(md_table(decode, ["d", "N", "base_us", "cat_us", "gather_us", "ak_asym_lora_us", "ak_vs_base"]))
    md = ("# asym_lora benchmark\n\n" + f"machine: {machine()}\n\nautomatic backend: {ak.backends(device)}\n\n"
          "## forward + backward (times in ms, overhead = time above the bare base linear)\n\n"
          + f"dtype {args.dtype}, adapter dtype {args.adapter_dtype}, {iters} timed round-robin iterations "
          f"after {warmup} warm-up ones\n\n"
          + md_table(rows, ["d", "N", "E", "r", "dtype", "impl", "fwd_bwd_ms", "fwd_bwd_min_ms", "fwd_ms", "peak_MiB",
                            "x_peft", "overhead_ms", "overhead_pct", "overhead_vs_naive"]))
    if decode:
        md += ("\n## decode path, forward only, no grad (C++ kernel: cat GEMM vs per-token gather; us)\n\n"
               + md_table(decode, ["d", "N", "base_us", "cat_us", "gather_us", "ak_asym_lora_us", "ak_vs_base"]))
    stem = os.path.join(args.out, "asym_lora" + ("_quick" if args.quick else "") + f"_{device.type}"
                        + (f"_{args.tag}" if args.tag else ""))
    paths = write_results(stem, {"machine": machine(), "args": vars(args), "rows": rows, "decode": decode}, md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
