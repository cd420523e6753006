#!/usr/bin/env python
"""Benchmark of the fused entropy kernels (issue 3): time and peak extra memory, side by side.

tsallis_entropy on [N, V] logits, every backend that runs on the device, against
  - the PyTorch reference chain  (1 - softmax(z).pow(q).sum(-1)) / (q - 1)   ("softmax_pow_sum"),
  - torch.logsumexp(z, -1) on the same logits (one exp pass: the bar for a fused kernel);
lm_head_entropy on hidden [N, d] x weight [V, d] against the materialised path
  (logits = hidden @ weight.T, then the reference chain).

    python bench/entropy.py                 # N {512, 2048, 8192} x V {32000, 128256}; lm-head d {1024, 4096}
    python bench/entropy.py --quick         # small sizes, a few seconds
    python bench/entropy.py --n 2048 --v 32000 --d 1024 --out /tmp/b
    # the GPU targets of issue 15 (scripts/gpu_check.sh runs these):
    python bench/entropy.py --device cuda --dtype bf16 --n 8192 --v 128256 --no-lm-head --max-logits-gb 8
    python bench/entropy.py --device cuda --dtype bf16 --lm-n 8192 --lm-v 128256 --d 4096 --no-tsallis

On CUDA, tsallis_entropy is also compared with torch's device-to-device copy (``--copy-baseline``,
on by default there): x_copy_bw = the kernel's bandwidth (logits bytes read once / time) over the
copy's (bytes read + written / time); target >= 0.8. lm_head_entropy is compared with the bare
[N, d] x [d, V] GEMM in the input dtype (x_vs_gemm; fwd+bwd: against the GEMM's forward and
its two backward GEMMs, dH = G W and dW = G^T H); target <= 1.25. mem_vs_logits: peak extra
memory / the fp32 [N, V] logits that a materialised path would hold.

Shapes whose fp32 logits exceed --max-logits-gb are skipped (and listed as skipped): the
reference needs several copies of them. Writes <out>/entropy.json and <out>/entropy.md.
Timings are medians (bench/common.py); on a shared CPU they are noisy, ratios within one run
are what counts.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import alter_kernels as ak  # noqa: E402
from alter_kernels import kernels  # noqa: E402
from common import copy_bandwidth, machine, md_table, peak_memory, time_fn, write_results  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def softmax_pow_sum(z: torch.Tensor, q: float) -> torch.Tensor:
    p = torch.softmax(z.float(), dim=-1)
    if q == 1.0:
        return -(p * torch.log(p.clamp_min(1e-45))).sum(-1)
    return (1.0 - p.pow(q).sum(-1)) / (q - 1.0)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _libc_used():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def used():
        m = libc.mallinfo2()
        return m.uordblks + m.hblkhd
    return used


_USED = _libc_used()


def cpu_peak_memory(fn, interval=2e-4) -> int:
    """Peak extra heap bytes during fn(), from glibc's mallinfo2 sampled by a thread every 0.2 ms.

    bench/common.py's profiler walk books a C++ op's internal buffers as that op's net self
    memory, so a tile allocated and freed inside the op is invisible there; sampling the
    allocator sees it (torch ops release the GIL, so the sampler runs during the kernel).
    Falls back to bench/common.peak_memory where mallinfo2 is missing."""
    if _USED is None:
        return peak_memory(fn, device="cpu")
    stop = [False]
    base = _USED()
    peak = [base]

    def poll():
        while not stop[0]:
            peak[0] = max(peak[0], _USED())
            time.sleep(interval)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        out = fn()
        peak[0] = max(peak[0], _USED())
        del out
    finally:
        stop[0] = True
        th.join()
    return int(peak[0] - base)


def measure(fn, device, warmup, iters):
    t = time_fn(fn, device=device, warmup=warmup, iters=iters)
    gc.collect()
    mem = cpu_peak_memory(fn) if device.type == "cpu" else peak_memory(fn, device=device)
    return t, mem


def backend_fn(op, backend, *args, **kw):
    def f():
        with ak.use_backend(backend):
            return getattr(ak, op)(*args, **kw)
    return f


def bench_tsallis(args, device, dtype, rows, skipped, copy=None):
    backends = [b for b in kernels.available("tsallis_entropy", device) if b != "reference"]
    if device.type == "cpu":
        backends = [b for b in backends if b != "triton"]  # interpreted on the CPU: not a benchmark
    for n in args.n:
        for v in args.v:
            gb = n * v * 4 / 2**30
            if gb > args.max_logits_gb:
                skipped.append({"op": "tsallis_entropy", "N": n, "V": v,
                                "why": f"fp32 logits {gb:.1f} GiB > --max-logits-gb {args.max_logits_gb}"})
                continue
            z = (torch.randn(n, v, device=device) * 2.0).to(dtype)
            base = dict(op="tsallis_entropy", N=n, V=v, d="", dtype=args.dtype, q=args.q, pass_="fwd")
            t_ref, m_ref = measure(lambda: softmax_pow_sum(z, args.q), device, args.warmup, args.iters)
            t_lse, m_lse = measure(lambda: torch.logsumexp(z.float() if dtype != torch.float32 else z, -1),
                                   device, args.warmup, args.iters)
            rows.append({**base, "impl": "softmax_pow_sum", "time_ms": t_ref * 1e3, "peak_MiB": m_ref / 2**20,
                         "x_vs_ref": 1.0, "x_vs_logsumexp": t_ref / t_lse})
            rows.append({**base, "impl": "torch.logsumexp", "time_ms": t_lse * 1e3, "peak_MiB": m_lse / 2**20,
                         "x_vs_ref": t_lse / t_ref, "x_vs_logsumexp": 1.0})
            if copy is not None:
                rows.append({**base, "impl": "torch copy_ (d2d)", "time_ms": copy["time_ms"], "peak_MiB": "",
                             "copy_GB_s": copy["GB_s"], "x_copy_bw": 1.0,
                             "note": f"{copy['bytes'] / 2**30:.1f} GiB copied; GB_s counts bytes read + written"})
            for b in backends:
                t, m = measure(backend_fn("tsallis_entropy", b, z, args.q), device, args.warmup, args.iters)
                rows.append({**base, "impl": b, "time_ms": t * 1e3, "peak_MiB": m / 2**20,
                             "x_vs_ref": t / t_ref, "x_vs_logsumexp": t / t_lse})
            if args.backward and n * v <= args.backward_max_elems:
                zg = z.detach().clone().requires_grad_()
                g = torch.randn(n, device=device)

                def ref_fb():
                    zg.grad = None
                    softmax_pow_sum(zg, args.q).backward(g)

                t_ref_b = time_fn(ref_fb, device=device, warmup=1, iters=args.iters)
                rows.append({**base, "pass_": "fwd+bwd", "impl": "softmax_pow_sum", "time_ms": t_ref_b * 1e3,
                             "x_vs_ref": 1.0})
                for b in backends:
                    def fb(b=b):
                        zg.grad = None
                        with ak.use_backend(b):
                            ak.tsallis_entropy(zg, args.q).backward(g)
                    t = time_fn(fb, device=device, warmup=1, iters=args.iters)
                    rows.append({**base, "pass_": "fwd+bwd", "impl": b, "time_ms": t * 1e3, "x_vs_ref": t / t_ref_b})
            del z
            gc.collect()
            print(f"tsallis_entropy N={n} V={v} done", flush=True)


def bench_lm_head(args, device, dtype, rows, skipped):
    """Against the materialised path (x_vs_ref, mem_vs_ref) and the bare GEMM (x_vs_gemm)."""
    backends = [b for b in kernels.available("lm_head_entropy", device) if b != "reference"]
    if device.type == "cpu":
        backends = [b for b in backends if b != "triton"]
    n, v = args.lm_n, args.lm_v
    for d in args.d:
        h = torch.randn(n, d, device=device).to(dtype)
        w = (torch.randn(v, d, device=device) / d ** 0.5 * 2).to(dtype)
        base = dict(op="lm_head_entropy", N=n, V=v, d=d, dtype=args.dtype, q=args.q, pass_="fwd")
        logits_bytes = n * v * 4      # the fp32 [N, V] logits a materialised path holds

        t_gemm = time_fn(lambda: torch.mm(h, w.t()), device=device, warmup=1, iters=args.lm_iters)
        rows.append({**base, "impl": "gemm h @ w.T", "time_ms": t_gemm * 1e3, "x_vs_gemm": 1.0})

        def materialised():
            return softmax_pow_sum(h.float() @ w.float().t() if dtype != torch.float32 else h @ w.t(), args.q)

        t_mat, m_mat = measure(materialised, device, 1, args.lm_iters)
        rows.append({**base, "impl": "matmul+softmax_pow_sum", "time_ms": t_mat * 1e3, "peak_MiB": m_mat / 2**20,
                     "x_vs_ref": 1.0, "mem_vs_ref": 1.0, "mem_vs_logits": m_mat / logits_bytes,
                     "x_vs_gemm": t_mat / t_gemm})
        for b in backends:
            t, m = measure(backend_fn("lm_head_entropy", b, h, w, args.q), device, 1, args.lm_iters)
            rows.append({**base, "impl": b, "time_ms": t * 1e3, "peak_MiB": m / 2**20,
                         "x_vs_ref": t / t_mat, "mem_vs_ref": m / max(m_mat, 1), "mem_vs_logits": m / logits_bytes,
                         "x_vs_gemm": t / t_gemm})
        if args.backward:
            hg, wg = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
            g = torch.randn(n, device=device)

            def mat_fb():
                hg.grad = wg.grad = None
                softmax_pow_sum(hg @ wg.t(), args.q).backward(g)

            gz = torch.randn(n, v, device=device).to(dtype)

            def gemm_fb():                     # forward GEMM + dH = G W and dW = G^T H
                hg.grad = wg.grad = None
                torch.mm(hg, wg.t()).backward(gz)

            t_gfb = time_fn(gemm_fb, device=device, warmup=1, iters=args.lm_iters)
            del gz
            rows.append({**base, "pass_": "fwd+bwd", "impl": "gemm h @ w.T", "time_ms": t_gfb * 1e3, "x_vs_gemm": 1.0})
            t_mb = time_fn(mat_fb, device=device, warmup=1, iters=args.lm_iters)
            rows.append({**base, "pass_": "fwd+bwd", "impl": "matmul+softmax_pow_sum", "time_ms": t_mb * 1e3,
                         "x_vs_ref": 1.0, "x_vs_gemm": t_mb / t_gfb})
            for b in backends:
                def fb(b=b):
                    hg.grad = wg.grad = None
                    with ak.use_backend(b):
                        ak.lm_head_entropy(hg, wg, args.q).backward(g)
                t = time_fn(fb, device=device, warmup=1, iters=args.lm_iters)
                gc.collect()
                m = peak_memory(fb, device=device) if device.type == "cuda" else ""
                rows.append({**base, "pass_": "fwd+bwd", "impl": b, "time_ms": t * 1e3, "x_vs_ref": t / t_mb,
                             "x_vs_gemm": t / t_gfb, "peak_MiB": m / 2**20 if m != "" else "",
                             "mem_vs_logits": m / logits_bytes if m != "" else ""})
        del h, w
        gc.collect()
        print(f"lm_head_entropy N={n} V={v} d={d} done", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (N 256, V 32000; lm-head N 256, d 256)")
    ap.add_argument("--n", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--v", type=int, nargs="+", default=[32000, 128256])
    ap.add_argument("--d", type=int, nargs="+", default=[1024, 4096], help="lm-head hidden sizes")
    ap.add_argument("--lm-n", type=int, default=2048)
    ap.add_argument("--lm-v", type=int, default=32000)
    ap.add_argument("--q", type=float, default=1.5)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--lm-iters", type=int, default=3)
    ap.add_argument("--max-logits-gb", type=float, default=1.5,
                    help="skip tsallis shapes whose fp32 logits exceed this (the reference needs ~4 copies)")
    ap.add_argument("--no-backward", dest="backward", action="store_false", help="forward only")
    ap.add_argument("--backward-max-elems", type=int, default=2048 * 32000,
                    help="time fwd+bwd of tsallis_entropy only up to N*V of this size")
    ap.add_argument("--no-tsallis", dest="tsallis", action="store_false")
    ap.add_argument("--no-lm-head", dest="lm_head", action="store_false")
    ap.add_argument("--copy-baseline", dest="copy_baseline", action="store_true", default=None,
                    help="also time torch's d2d copy of as many bytes as the largest logits (default: on CUDA)")
    ap.add_argument("--no-copy-baseline", dest="copy_baseline", action="store_false")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                    help="output directory (entropy.json, entropy.md)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.v, args.d, args.lm_n, args.lm_v = [256], [32000], [256], [256][0], 32000
        args.iters, args.lm_iters = 3, 2
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    rows, skipped = [], []
    copy = None
    if args.copy_baseline is None:
        args.copy_baseline = device.type == "cuda"
    if args.tsallis and args.copy_baseline:
        esz = torch.tensor([], dtype=dtype).element_size()
        copy = copy_bandwidth(device, nbytes=min(4 << 30, max(n * v for n in args.n for v in args.v) * esz),
                              iters=max(args.iters, 5))
        print(f"torch d2d copy: {copy['GB_s']:.0f} GB/s (read + write)", flush=True)
    if args.tsallis:
        bench_tsallis(args, device, dtype, rows, skipped, copy)
    if args.lm_head:
        bench_lm_head(args, device, dtype, rows, skipped)
    esize = torch.tensor([], dtype=dtype).element_size()
    for r in rows:
        r["pass"] = r.pop("pass_")
        if r["op"] == "tsallis_entropy" and r["impl"] != "torch copy_ (d2d)":
            # forward: the logits read once; fwd+bwd: read by the forward, read again and the
            # gradient written by the backward (three passes)
            passes = 1 if r["pass"] == "fwd" else 3
            r["GB_s"] = passes * r["N"] * r["V"] * esize / (r["time_ms"] * 1e-3) / 1e9
            if copy is not None:
                r["x_copy_bw"] = r["GB_s"] / copy["GB_s"]
        if r["pass"] == "fwd" and r["op"] == "lm_head_entropy":  # the GEMM's work
            r["TFLOP_s"] = 2.0 * r["N"] * r["V"] * r["d"] / (r["time_ms"] * 1e-3) / 1e12
    cols = ["op", "pass", "N", "V", "d", "dtype", "impl", "time_ms", "peak_MiB", "x_vs_ref", "x_vs_logsumexp",
            "mem_vs_ref", "GB_s", "TFLOP_s"]
    if copy is not None:
        cols += ["x_copy_bw"]
    if any("x_vs_gemm" in r for r in rows):
        cols += ["x_vs_gemm", "mem_vs_logits"]
    info = machine()
    where = info["gpu"] if device.type == "cuda" else info.get("cpu", "")
    md = (f"# bench/entropy.py\n\n{where}, torch {info['torch']} (CUDA {info['cuda']}), triton {info['triton']}, "
          f"{info['cpu_threads']} threads, device {device}, q = {args.q}, {info['date']}\n\n"
          "x_vs_ref: time / time of the reference (softmax_pow_sum, or matmul+softmax_pow_sum for the LM head); "
          "x_vs_logsumexp: time / torch.logsumexp on the same logits; mem_vs_ref: peak extra memory / the "
          "materialised path's; GB_s: logits bytes read once / time (fwd+bwd: three passes); TFLOP_s: 2 N V d / time; "
          "x_copy_bw: GB_s / torch d2d copy GB/s (read + write); x_vs_gemm: time / the bare h @ w.T GEMM's "
          "(fwd+bwd: with its two backward GEMMs); mem_vs_logits: peak extra memory / fp32 [N, V] logits.\n\n"
          + md_table(rows, cols))
    if skipped:
        md += "\nSkipped:\n\n" + md_table(skipped, ["op", "N", "V", "why"])
    results = {"machine": info, "args": {k: v for k, v in vars(args).items()}, "device": str(device),
               "backends": kernels.backends(device), "rows": rows, "skipped": skipped, "copy": copy}
    paths = write_results(os.path.join(args.out, "entropy"), results, md)
    print(md)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
