"""Triton kernels of asym_lora (GPU; CI runs them under TRITON_INTERPRET=1 at tiny shapes).

The base GEMM x W0^T (+ bias) and the two wide GEMMs of the backward (g W0, and du A / duA^T x)
stay with torch (cuBLAS). Triton does the adapter part, fused:

  _shrink     u = x A^T                                   [N, r] fp32, x in any dtype
  _expand_add y += sum_e (s w[:, e] u) B_e^T              in place on the base output: the
              scaled copies of u never exist in memory; one pass over y
  _bwd_rows   G_e = g B_e per expert, du = s sum_e w_e G_e, duA = du on a_grad_mask rows,
              dw_e = s <u, G_e>                           one program per block of rows
  _bwd_b      dB_e = g^T (s w_e u on b_grad_mask[:, e] rows, 0 elsewhere), written straight
              into the [E, d_out, r] layout             one program per (d_out block, expert)

Accumulation is fp32 (tl.dot with input_precision="ieee": no TF32). The registry sends float64
input to the torch implementation (kernels/table.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..asym_lora import _Impl


@triton.jit
def _shrink(x_ptr, a_ptr, u_ptr, N, K, R,
            BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    rr = tl.arange(0, BR)
    acc = tl.zeros((BM, BR), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + tl.arange(0, BK)
        xt = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=(rows[:, None] < N) & (ks[None, :] < K),
                     other=0.0).to(tl.float32)
        at = tl.load(a_ptr + rr[None, :] * K + ks[:, None], mask=(rr[None, :] < R) & (ks[:, None] < K),
                     other=0.0).to(tl.float32)                                   # [BK, BR] = A^T tile
        acc += tl.dot(xt, at, input_precision="ieee")
    tl.store(u_ptr + rows[:, None] * R + rr[None, :], acc, mask=(rows[:, None] < N) & (rr[None, :] < R))


@triton.jit
def _expand_add(y_ptr, u_ptr, w_ptr, b_ptr, N, D, R, E, s,
                BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    rr = tl.arange(0, BR)
    rmask = rows < N
    cmask = cols < D
    u = tl.load(u_ptr + rows[:, None] * R + rr[None, :], mask=rmask[:, None] & (rr[None, :] < R), other=0.0)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for e in range(0, E):
        we = tl.load(w_ptr + rows * E + e, mask=rmask, other=0.0).to(tl.float32) * s
        bt = tl.load(b_ptr + e * D * R + cols[None, :] * R + rr[:, None],
                     mask=cmask[None, :] & (rr[:, None] < R), other=0.0).to(tl.float32)  # [BR, BN] = B_e^T
        acc += tl.dot(u * we[:, None], bt, input_precision="ieee")
    ptrs = y_ptr + rows[:, None] * D + cols[None, :]
    m2 = rmask[:, None] & cmask[None, :]
    y = tl.load(ptrs, mask=m2, other=0.0).to(tl.float32)
    tl.store(ptrs, (y + acc).to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _bwd_rows(g_ptr, u_ptr, w_ptr, b_ptr, am_ptr, du_ptr, dua_ptr, dw_ptr, N, D, R, E, s,
              HAS_AM: tl.constexpr, NEED_DW: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    rr = tl.arange(0, BR)
    rmask = rows < N
    m_ur = rmask[:, None] & (rr[None, :] < R)
    u = tl.load(u_ptr + rows[:, None] * R + rr[None, :], mask=m_ur, other=0.0)
    du = tl.zeros((BM, BR), dtype=tl.float32)
    for e in range(0, E):
        G = tl.zeros((BM, BR), dtype=tl.float32)
        for o0 in range(0, D, BN):
            cols = o0 + tl.arange(0, BN)
            gt = tl.load(g_ptr + rows[:, None] * D + cols[None, :], mask=rmask[:, None] & (cols[None, :] < D),
                         other=0.0).to(tl.float32)
            bt = tl.load(b_ptr + e * D * R + cols[:, None] * R + rr[None, :],
                         mask=(cols[:, None] < D) & (rr[None, :] < R), other=0.0).to(tl.float32)
            G += tl.dot(gt, bt, input_precision="ieee")
        we = tl.load(w_ptr + rows * E + e, mask=rmask, other=0.0).to(tl.float32) * s
        du += G * we[:, None]
        if NEED_DW:
            tl.store(dw_ptr + rows * E + e, tl.sum(G * u, axis=1) * s, mask=rmask)
    tl.store(du_ptr + rows[:, None] * R + rr[None, :], du, mask=m_ur)
    if HAS_AM:
        keep = tl.load(am_ptr + rows, mask=rmask, other=0) != 0
        tl.store(dua_ptr + rows[:, None] * R + rr[None, :], tl.where(keep[:, None], du, 0.0), mask=m_ur)


@triton.jit
def _bwd_b(g_ptr, u_ptr, w_ptr, bm_ptr, db_ptr, N, D, R, E, s,
           HAS_BM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr):
    pid_n = tl.program_id(0)
    e = tl.program_id(1)
    cols = pid_n * BN + tl.arange(0, BN)
    rr = tl.arange(0, BR)
    cmask = cols < D
    acc = tl.zeros((BN, BR), dtype=tl.float32)
    for n0 in range(0, N, BM):
        rows = n0 + tl.arange(0, BM)
        rmask = rows < N
        we = tl.load(w_ptr + rows * E + e, mask=rmask, other=0.0).to(tl.float32) * s
        if HAS_BM:
            keep = tl.load(bm_ptr + rows * E + e, mask=rmask, other=0) != 0
        else:
            keep = rmask
        u = tl.load(u_ptr + rows[:, None] * R + rr[None, :], mask=rmask[:, None] & (rr[None, :] < R), other=0.0)
        um = tl.where(keep[:, None], u * we[:, None], 0.0)                         # [BM, BR]
        gt = tl.load(g_ptr + rows[None, :] * D + cols[:, None], mask=rmask[None, :] & cmask[:, None],
                     other=0.0).to(tl.float32)                                    # [BN, BM] = g^T tile
        acc += tl.dot(gt, um, input_precision="ieee")
    tl.store(db_ptr + e * D * R + cols[:, None] * R + rr[None, :], acc, mask=cmask[:, None] & (rr[None, :] < R))


def _br(r: int) -> int:
    return max(16, triton.next_power_of_2(r))


BM, BN, BK = 32, 64, 64


def triton_fwd(x, weight, A, B, w, scale, bias):
    n, d_in = x.shape
    E, d_out, r = B.shape
    x, A, B, w = x.contiguous(), A.contiguous(), B.contiguous(), w.contiguous()
    u = torch.empty(n, r, device=x.device, dtype=torch.float32)
    y = torch.nn.functional.linear(x, weight, bias).contiguous()
    if n == 0 or r == 0 or E == 0:
        return y, u.zero_()
    br = _br(r)
    _shrink[(triton.cdiv(n, BM),)](x, A, u, n, d_in, r, BM=BM, BK=BK, BR=br)
    _expand_add[(triton.cdiv(n, BM), triton.cdiv(d_out, BN))](y, u, w, B, n, d_out, r, E, float(scale),
                                                              BM=BM, BN=BN, BR=br)
    return y, u


def triton_bwd(g, x, weight, A, B, w, u, scale, a_mask, b_mask, need_dx, need_dA, need_dB, need_dw):
    n, d_in = x.shape
    E, d_out, r = B.shape
    g, u, B, w = g.contiguous(), u.contiguous(), B.contiguous(), w.contiguous()
    dx = dA = dB = dw = None
    br = _br(r)
    dev = x.device
    if need_dx or need_dA or need_dw:
        du = torch.empty(n, r, device=dev, dtype=torch.float32)
        has_am = a_mask is not None and need_dA
        dua = torch.empty_like(du) if has_am else du
        dwa = torch.empty(n, E, device=dev, dtype=torch.float32) if need_dw else du
        am = a_mask.contiguous().view(torch.uint8) if has_am else du
        if n and r and E:
            _bwd_rows[(triton.cdiv(n, BM),)](g, u, w, B, am, du, dua, dwa, n, d_out, r, E, float(scale),
                                             HAS_AM=has_am, NEED_DW=need_dw, BM=BM, BN=BN, BR=br)
        else:
            du.zero_(), dua.zero_(), dwa.zero_()
        Aa = A.float()
        if need_dx:
            dx = g @ weight
            dx = dx.addmm_(du, Aa) if dx.dtype == torch.float32 else torch.addmm(dx.float(), du, Aa).to(x.dtype)
        if need_dA:
            dA = (dua.t() @ x.float()).to(A.dtype)
        if need_dw:
            dw = dwa.to(w.dtype)
    if need_dB:
        db = torch.empty(E, d_out, r, device=dev, dtype=torch.float32)
        has_bm = b_mask is not None
        bm = b_mask.contiguous().view(torch.uint8) if has_bm else u
        if n and r and E and d_out:
            _bwd_b[(triton.cdiv(d_out, BN), E)](g, u, w, bm, db, n, d_out, r, E, float(scale),
                                                HAS_BM=has_bm, BM=BM, BN=BN, BR=br)
        else:
            db.zero_()
        dB = db.to(B.dtype)
    return dx, dA, dB, dw


TRITON_IMPL = _Impl(triton_fwd, triton_bwd)
