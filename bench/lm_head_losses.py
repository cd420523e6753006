#!/usr/bin/env python
"""Benchmark of the fused LM-head unlearning losses (issue 16): the loss part of a training step.

Forward + backward (to the hidden states; the LM head frozen, as in LoRA unlearning; --weight-grad
adds d weight) of
  - "nll+ihl": mean NLL + mean inverted hinge loss of the labels (ALTER's forget loss; GA / NPO
    use the NLL alone), and
  - "kl": mean KL(p_base || p_model) from two hidden-state tensors (the KL baseline),
fused (ak.lm_head_token_losses / ak.lm_head_kl, best backend on the device) against the
materialised path (logits = hidden @ W.T, then the plain-PyTorch losses of
ops/losses.py: log_softmax -> gather, softmax -> IHL; F.kl_div).

Peak memory: the extra heap bytes during one forward+backward (CPU: glibc mallinfo2 sampled
every 0.2 ms, bench/entropy.py's cpu_peak_memory; CUDA: max_memory_allocated); the inputs
exist before. Time: median of --iters runs (bench/common.py). Both paths run side by side in
one process, so ratios are what counts on a shared machine.

    python bench/lm_head_losses.py                       # V {32000, 128256}, d 1024, N 4 x 256, fp32, CPU
    python bench/lm_head_losses.py --v 32000 --iters 2 --out /tmp/b
Writes <out>/lm_head_losses.json and <out>/lm_head_losses.md.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import alter_kernels as ak  # noqa: E402
from alter_kernels import kernels  # noqa: E402
from alter_kernels.ops.losses import inverted_hinge_loss, token_nll  # noqa: E402
from common import machine, md_table, peak_memory, time_fn, write_results  # noqa: E402
from entropy import cpu_peak_memory  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def loss_fns(h, hb, w, y):
    """{(loss, path): fn() -> scalar loss, backward done inside}: each call is one forward+backward."""
    def fused_ihl():
        out = ak.lm_head_token_losses(h, w, y)
        loss = out.nll.mean() + out.ihl.mean()
        loss.backward()
        return loss.detach()

    def mat_ihl():
        z = h @ w.t()
        loss = token_nll(z, y, shift=False) + inverted_hinge_loss(z, y, shift=False)
        loss.backward()
        return loss.detach()

    def fused_kl():
        loss = ak.lm_head_kl(hb, h, w).mean()
        loss.backward()
        return loss.detach()

    def mat_kl():
        with torch.no_grad():
            lpb = F.log_softmax((hb @ w.t()).float(), -1)
        lp = F.log_softmax((h @ w.t()).float(), -1)
        loss = F.kl_div(lp, lpb, log_target=True, reduction="none").sum(-1).mean()
        loss.backward()
        return loss.detach()

    return {("nll+ihl", "fused"): fused_ihl, ("nll+ihl", "materialised"): mat_ihl,
            ("kl", "fused"): fused_kl, ("kl", "materialised"): mat_kl}


def bench_shape(args, device, dtype, v, rows):
    n, d = args.n, args.d
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(n, d, generator=g) * 1.0).to(device=device, dtype=dtype).requires_grad_()
    hb = (h.detach().float() + 0.1 * torch.randn(n, d, generator=g).to(device)).to(dtype)
    w = (torch.randn(v, d, generator=g) / d ** 0.5).to(device=device, dtype=dtype).requires_grad_(args.weight_grad)
    y = torch.randint(0, v, (n,), generator=g).to(device)
    y[::7] = -100                                   # some ignored positions (prompt / padding)
    logits_bytes = n * v * 4
    fns = loss_fns(h, hb, w, y)
    results = {}
    for (loss, path), fn in fns.items():
        def step(fn=fn):
            h.grad = None
            w.grad = None
            return fn()
        t = time_fn(step, device=device, warmup=args.warmup, iters=args.iters)
        gc.collect()
        mem = cpu_peak_memory(step) if device.type == "cpu" else peak_memory(step, device=device)
        results[(loss, path)] = (t, mem)
        print(f"{loss:8s} {path:13s} V={v}: {t * 1e3:9.1f} ms  peak {mem / 2**20:8.1f} MiB", flush=True)
    for loss in ("nll+ihl", "kl"):
        (tf, mf), (tm, mm) = results[(loss, "fused")], results[(loss, "materialised")]
        backend = kernels.pick("lm_head_token_losses" if loss == "nll+ihl" else "lm_head_kl", device, dtype).backend
        rows.append(dict(loss=loss, N=n, V=v, d=d, dtype=args.dtype, backend=backend, weight_grad=args.weight_grad,
                         fused_ms=tf * 1e3, materialised_ms=tm * 1e3, time_ratio=tf / tm,
                         fused_peak_MiB=mf / 2**20, materialised_peak_MiB=mm / 2**20,
                         mem_ratio=mf / max(mm, 1), logits_fp32_MiB=logits_bytes / 2**20,
                         mem_target_met=mf <= mm / 16, time_target_met=tf <= 1.1 * tm))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v", type=int, nargs="+", default=[32000, 128256])
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--n", type=int, default=4 * 256, help="tokens (batch x sequence)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--weight-grad", action="store_true", help="the LM head requires grad too")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    rows: list[dict] = []
    for v in args.v:
        bench_shape(args, device, dtype, v, rows)
    cols = ["loss", "N", "V", "d", "dtype", "backend", "fused_ms", "materialised_ms", "time_ratio",
            "fused_peak_MiB", "materialised_peak_MiB", "mem_ratio", "logits_fp32_MiB"]
    md = ("# Fused LM-head losses vs the materialised path (issue 16)\n\n"
          f"Machine: {machine().get('cpu', machine()['platform'])}, {torch.get_num_threads()} torch threads. "
          "Forward + backward of the loss part (d hidden; head frozen unless weight_grad). Targets (CPU): "
          "mem_ratio <= 1/16 = 0.0625 at V = 128256, time_ratio <= 1.1.\n\n" + md_table(rows, cols))
    paths = write_results(os.path.join(args.out, "lm_head_losses"), {"machine": machine(), "args": vars(args),
                                                                     "rows": rows}, md)
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
