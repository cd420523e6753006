#!/usr/bin/env python
"""Few-row fp32 linears at SmolLM2-135M's decode shapes (issue 21): what a 2-row step costs
against a 1-row one, per implementation, with cold-ish weights as in real decoding.

    python bench/few_rows.py [--threads 1] [--reps 15] [--out bench/results/few_rows]
    # -> bench/results/few_rows.{json,md}

Base-entropy decoding (``ak.generate``) runs the base stream beside the adapted one: at batch 1
every linear sees 2 rows. A bandwidth-bound 2-row product reads each weight once, so it should cost
about what the 1-row GEMV does. Measured side by side in one process (round robin, medians, ratios
= median of per-repetition paired ratios against ``mm 1 row``), on random fp32 weights of the
model's shapes (30 layers x q, k, v, o, gate, up, down: 576 -> 576/192/192/576/1536/1536,
1536 -> 576; ~405 MiB) and, apart, its tied LM head (49152 x 576, ~108 MiB). One "forward" calls
each implementation once per linear over all 30 layers, so every weight is streamed from memory
(not cache) as in a decode step:

- ``mm 1 row``: ``torch.mm(x, W^T)``, x [1, d_in]: the base model's own decode GEMV (the peer).
- ``mm 2 rows``: ``torch.mm(x, W^T)``, x [2, d_in]; ``mm W x^T 2 rows``: ``torch.mm(W, x^T)``.
- ``decode_linear 2 rows`` / ``(portable)``: the extension's few-row kernel (csrc/cpu/few_rows.h:
  SIMD, and its plain-C++ fallback, the kernel before issue 21) when the extension has that op.
- ``decode_group_linear 2 rows``: the op the decode loop calls (q/k/v and gate/up grouped, o and
  down alone), with the adapter of rank 8 and 3 experts on row 0 and row 1 a base row (weights 0),
  as in base-entropy decoding at batch 1; ``decode_group_linear 1 row`` for comparison.

Columns: ms per forward, x_mm1 (time / ``mm 1 row`` time: 1.0 means the 2 rows cost what one
does), GB_s (weight bytes read per second) and GFLOP_s.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alter_kernels import kernels  # noqa: E402
from bench.common import machine, md_table, round_robin, write_results  # noqa: E402

LAYERS, D, FF, KV, VOCAB, RANK, EXPERTS = 30, 576, 1536, 192, 49152, 8, 3
GROUPS = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))
SHAPES = {"q": (D, D), "k": (KV, D), "v": (KV, D), "o": (D, D), "gate": (FF, D), "up": (FF, D), "down": (D, FF)}


def make_layers(g):
    """Per layer: {name: W [d_out, d_in]} plus, per group, the decode op's adapter tensors."""
    layers = []
    for _ in range(LAYERS):
        ws = {n: torch.randn(*s, generator=g) * 0.05 for n, s in SHAPES.items()}
        groups = []
        for names in GROUPS:
            d_in = SHAPES[names[0]][1]
            a_cat = torch.randn(len(names) * RANK, d_in, generator=g) * 0.05
            b_t = [torch.randn(EXPERTS, RANK, SHAPES[n][0], generator=g) * 0.05 for n in names]
            groups.append(([ws[n] for n in names], [None] * len(names), a_cat, b_t))
        layers.append((ws, groups))
    return layers


def variants(layers, head, g):
    xs = {m: {d: torch.randn(m, d, generator=g) for d in (D, FF)} for m in (1, 2)}
    ew = {1: torch.tensor([[1.0, 0.6, 0.0]]), 2: torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.0, 0.0]])}
    dgl = torch.ops.alter_kernels.decode_group_linear
    frl = getattr(torch.ops.alter_kernels, "decode_linear", None)

    def per_linear(fn, m):
        def run():
            for ws, _ in layers:
                for w in ws.values():
                    fn(xs[m][w.shape[1]], w)
        return run

    def group(m):
        def run():
            for _, groups in layers:
                for ws, bs, a_cat, b_t in groups:
                    dgl(xs[m][ws[0].shape[1]], ws, bs, a_cat, b_t, ew[m])
        return run

    h = {m: torch.randn(m, D, generator=g) for m in (1, 2)}
    fns = {"mm 1 row": per_linear(lambda x, w: torch.mm(x, w.t()), 1),
           "mm 2 rows": per_linear(lambda x, w: torch.mm(x, w.t()), 2),
           "mm W x^T 2 rows": per_linear(lambda x, w: torch.mm(w, x.t()), 2)}
    heads = {"mm 1 row": lambda: torch.mm(h[1], head.t()), "mm 2 rows": lambda: torch.mm(h[2], head.t()),
             "mm W x^T 2 rows": lambda: torch.mm(head, h[2].t())}
    if frl is not None:
        for name, portable in (("decode_linear 2 rows", False), ("decode_linear 2 rows (portable)", True)):
            fns[name] = per_linear(lambda x, w, p=portable: frl(x, w, None, p), 2)
            heads[name] = lambda p=portable: frl(h[2], head, None, p)
    fns["decode_group_linear 2 rows"] = group(2)
    fns["decode_group_linear 1 row"] = group(1)
    return fns, heads


def rows_of(times, bytes_, flops_1row, ref="mm 1 row"):
    out = []
    for k, v in times.items():
        med = statistics.median(v)
        m = 1 if "1 row" in k else 2
        out.append({"variant": k, "rows": m, "ms": med * 1e3, "min_ms": min(v) * 1e3,
                    "x_mm1": statistics.median(a / b for a, b in zip(v, times[ref])),
                    "GB_s": bytes_ / med / 1e9, "GFLOP_s": flops_1row * m / med / 1e9, "raw_s": v})
    return out


COLS = ["variant", "rows", "ms", "min_ms", "x_mm1", "GB_s", "GFLOP_s"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "few_rows"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if kernels.load_extension() is None:
        raise SystemExit(f"bench/few_rows.py: the extension is not built ({kernels.extension_error()})")
    g = torch.Generator().manual_seed(0)
    layers = make_layers(g)
    head = torch.randn(VOCAB, D, generator=g) * 0.05
    fns, heads = variants(layers, head, g)
    n_w = LAYERS * sum(o * i for o, i in SHAPES.values())
    load0 = list(os.getloadavg())
    t_lin = round_robin(fns, args.reps, warmup=2)
    t_head = round_robin(heads, args.reps, warmup=2)
    load1 = list(os.getloadavg())
    res = {"machine": machine(), "args": vars(args), "load_avg": [load0, load1],
           "linears": rows_of(t_lin, 4 * n_w, 2 * n_w), "head": rows_of(t_head, 4 * head.numel(), 2 * head.numel())}
    m = res["machine"]
    md = [f"# Few-row fp32 linears at SmolLM2-135M's decode shapes (bench/few_rows.py)\n",
          f"Machine: {m.get('cpu', '')}, 2-core shared VM, torch {m['torch']}, {m['cpu_threads']} torch thread(s), "
          f"{m['date']}; load averages (1, 5, 15 min) before {load0}, after {load1}. Medians of {args.reps} "
          "round-robin repetitions; x_mm1 = median paired ratio to the 1-row torch.mm.\n",
          f"## 30 layers x 7 linears ({4 * n_w / 2 ** 20:.0f} MiB of fp32 weights per forward)\n",
          md_table(res["linears"], COLS),
          f"## LM head 49152 x 576 ({4 * head.numel() / 2 ** 20:.0f} MiB)\n", md_table(res["head"], COLS)]
    print("\n".join(md))
    write_results(args.out, res, "\n".join(md))


if __name__ == "__main__":
    main()
