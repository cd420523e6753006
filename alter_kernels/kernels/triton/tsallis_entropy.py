"""Triton kernels of the Tsallis entropy (ALTER_SPEC section 2): one program per row.

Forward: one sweep over the row in BLOCK-wide chunks (streaming.softmax_block: an online max,
Z = sum exp(z - m) and Q = sum exp(q (z - m)), Shannon: sum exp(z - m) (z - m)); writes the
entropy, the log-sum-exp and stats [m, log Z, aux] (aux = sum p^q, or S_1). Backward: one sweep
recomputing log p = (z - m) - log Z from the saved statistics. Loads any float dtype and accumulates in fp32. On the CPU these kernels only
run under TRITON_INTERPRET=1 (tests); on CUDA they are the default backend.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .streaming import mode, softmax_block


@triton.jit
def _tsallis_fwd_kernel(X, ENT, LSE, ST, stride_row, V, q, MODE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_ptr = X + row * stride_row
    m = float("-inf")
    z = 0.0
    zq = 0.0
    nan_cnt = 0
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        x, e, sc, m, z, zq, nan_cnt = softmax_block(x, m, z, zq, nan_cnt, q, MODE)
    logz = tl.log(z)
    lse = m + logz
    if MODE == 1:     # streaming.SHANNON
        ent = logz - zq / z
        aux = ent
    else:
        spq = zq / tl.exp(q * logz)
        ent = (1.0 - spq) / (q - 1.0)
        aux = spq
    bad = (nan_cnt > 0) | (z == 0.0)
    ent = tl.where(bad, float("nan"), ent)
    aux = tl.where(bad, float("nan"), aux)
    m = tl.where(nan_cnt > 0, float("nan"), m)
    lse = tl.where(nan_cnt > 0, float("nan"), lse)
    tl.store(ENT + row, ent)
    tl.store(LSE + row, lse)
    tl.store(ST + 3 * row, m)
    tl.store(ST + 3 * row + 1, logz)
    tl.store(ST + 3 * row + 2, aux)


@triton.jit
def _tsallis_bwd_kernel(X, OUT, G, GL, ST, stride_row, stride_out, V, q, HAS_GL: tl.constexpr,
                        MODE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_ptr = X + row * stride_row
    o_ptr = OUT + row * stride_out
    g = tl.load(G + row)
    m = tl.load(ST + 3 * row)
    logz = tl.load(ST + 3 * row + 1)
    aux = tl.load(ST + 3 * row + 2)
    if HAS_GL:
        gl = tl.load(GL + row)
    else:
        gl = 0.0
    bad = (m != m) | (m == float("-inf"))
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < V
        x = tl.load(x_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
        t = (x - m) - logz
        p = tl.exp(t)
        if MODE == 1:     # streaming.SHANNON
            d = -g * tl.where(x > float("-inf"), p * (t + aux), 0.0)
        elif MODE == 2:   # streaming.Q2
            d = (-g * q / (q - 1.0)) * (p * p - p * aux)
        else:
            d = (-g * q / (q - 1.0)) * (tl.exp(q * t) - p * aux)
        d = d + gl * p
        d = tl.where(bad, float("nan"), d)  # NaN input or all -inf row (m NaN / -inf)
        tl.store(o_ptr + offs, d.to(OUT.dtype.element_ty), mask=mask)


def _block(v: int, device: torch.device) -> int:
    cap = 4096 if device.type == "cuda" else 1024
    return max(16, min(cap, triton.next_power_of_2(v)))


def tsallis_fwd(x: torch.Tensor, q: float):
    """x [N, V] with unit-stride last dim -> (ent [N], lse [N], stats [N, 3]) fp32."""
    n, v = x.shape
    ent, lse = (torch.empty(n, dtype=torch.float32, device=x.device) for _ in range(2))
    st = torch.empty((n, 3), dtype=torch.float32, device=x.device)
    if n:
        block = _block(v, x.device)
        _tsallis_fwd_kernel[(n,)](x, ent, lse, st, x.stride(0), v, float(q), MODE=mode(q), BLOCK=block,
                                  num_warps=8 if block >= 2048 else 4)
    return ent, lse, st


def tsallis_bwd(grad: torch.Tensor, x: torch.Tensor, stats: torch.Tensor, q: float,
                out: torch.Tensor | None = None, grad_lse: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of sum(grad * S_q + grad_lse * lse) w.r.t. x; out may be x itself (in place)."""
    n, v = x.shape
    if out is None:
        out = torch.empty((n, v), dtype=x.dtype, device=x.device)
    if n:
        block = _block(v, x.device)
        _tsallis_bwd_kernel[(n,)](x, out, grad, grad_lse if grad_lse is not None else grad, stats,
                                  x.stride(0), out.stride(0), v, float(q), HAS_GL=grad_lse is not None,
                                  MODE=mode(q), BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return out
