"""Fused LM-head losses (issue 16) with Triton row kernels: tokens in chunks, one GEMM per chunk.

For each chunk of tokens the fp32 logits [chunk, V] are made by one library GEMM (cuBLAS on a
GPU), reduced by a Triton row kernel (one program per token, one sweep over V in BLOCK-wide
pieces with an online max / Z / entropy sum / largest other logit) into the per-token values
and O(1) statistics; the backward recomputes the chunk, turns it in place into dL/dlogits with
a second row kernel and forms d hidden / d weight with two GEMMs. At most one [chunk, V] fp32
tile exists at a time (two for the KL, whose base logits come from the base head weight_base /
bias_base when given, else the shared one), never the [N, V] logits. Statistics and formulas:
kernels/lm_head_losses.py and csrc/cpu/lm_head_losses.cpp. On the CPU this runs only under
TRITON_INTERPRET=1 (tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..entropy_autograd import logits_fp32, low_precision_gpu
from .lm_head_entropy import chunk_rows
from .streaming import mode, softmax_block


@triton.jit
def _store4(P0, P1, P2, P3, valid, v0, v1, v2, v3):
    """Four scalar stores, 0 where the row is not valid (ignored / masked)."""
    tl.store(P0, tl.where(valid, v0, 0.0))
    tl.store(P1, tl.where(valid, v1, 0.0))
    tl.store(P2, tl.where(valid, v2, 0.0))
    tl.store(P3, tl.where(valid, v3, 0.0))


@triton.jit
def _losses_fwd_kernel(X, LAB, NLL, IHL, ENT, LSE, ST, stride_row, V, q, ignore, MODE: tl.constexpr,
                       BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_ptr = X + row * stride_row
    y = tl.load(LAB + row)
    valid = y != ignore
    ys = tl.minimum(tl.maximum(tl.where(valid, y, 0), 0), V - 1)   # never read out of the row
    m = float("-inf")
    z = 0.0
    zq = 0.0
    za = float("-inf")
    cnt = 0
    arg = -1
    nan_cnt = 0
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        x, e, sc, m, z, zq, nan_cnt = softmax_block(x, m, z, zq, nan_cnt, q, MODE)
        # the largest logit over v != y: value, how many reach it, the first of them
        xo = tl.where(offs == ys, float("-inf"), x)
        bm = tl.max(xo, axis=0)
        hit = (xo == bm) & (xo > float("-inf"))
        c_blk = tl.sum(hit.to(tl.int32), axis=0)
        first = tl.min(tl.where(hit, offs, V), axis=0)
        upd = bm > za
        cnt = tl.where(upd, c_blk, tl.where(bm == za, cnt + c_blk, cnt))
        arg = tl.where(upd, first, arg)
        za = tl.maximum(za, bm)
    zy = tl.load(x_ptr + ys).to(tl.float32)
    logz = tl.log(z)
    lse = m + logz
    nll = (m - zy) + logz
    py = tl.exp((zy - m) - logz)
    pa = tl.where(cnt > 0, tl.exp((za - m) - logz), 0.0)
    ihl = tl.maximum(1.0 + py - pa, 0.0)
    if MODE == 0:
        ent = 0.0
        aux = 0.0
    elif MODE == 1:
        ent = logz - zq / z
        aux = ent
    else:
        aux = zq / tl.exp(q * logz)
        ent = (1.0 - aux) / (q - 1.0)
    bad = (nan_cnt > 0) | (z == 0.0)
    nll = tl.where(bad, float("nan"), nll)
    ihl = tl.where(bad, float("nan"), ihl)
    if MODE != 0:
        ent = tl.where(bad, float("nan"), ent)
    lse = tl.where(nan_cnt > 0, float("nan"), lse)
    _store4(NLL + row, IHL + row, ENT + row, LSE + row, valid, nll, ihl, ent, lse)
    m = tl.where(nan_cnt > 0, float("nan"), m)
    _store4(ST + 7 * row, ST + 7 * row + 1, ST + 7 * row + 2, ST + 7 * row + 3, valid, m, logz, aux, zy)
    _store4(ST + 7 * row + 4, ST + 7 * row + 5, ST + 7 * row + 6, ST + 7 * row + 6, valid, za,
            cnt.to(tl.float32), arg.to(tl.float32), arg.to(tl.float32))


@triton.jit
def _losses_bwd_kernel(X, OUT, LAB, ST, GN, GI, GE, GL, stride_row, stride_out, V, q, ignore,
                       HAS_GN: tl.constexpr, HAS_GI: tl.constexpr, HAS_GL: tl.constexpr, MODE: tl.constexpr,
                       BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_ptr = X + row * stride_row
    o_ptr = OUT + row * stride_out
    y = tl.load(LAB + row)
    valid = y != ignore
    ys = tl.minimum(tl.maximum(tl.where(valid, y, 0), 0), V - 1)   # never read out of the row
    s_ptr = ST + 7 * row
    m = tl.load(s_ptr)
    logz = tl.load(s_ptr + 1)
    aux = tl.load(s_ptr + 2)
    zy = tl.load(s_ptr + 3)
    za = tl.load(s_ptr + 4)
    cnt = tl.load(s_ptr + 5)
    arg = tl.load(s_ptr + 6).to(tl.int32)
    gn = 0.0
    gi = 0.0
    gl = 0.0
    ge = 0.0
    if HAS_GN:
        gn = tl.load(GN + row)
    if HAS_GI:
        gi = tl.load(GI + row)
    if HAS_GL:
        gl = tl.load(GL + row)
    if MODE != 0:
        ge = tl.load(GE + row)
    py = tl.exp((zy - m) - logz)
    pa = tl.where(cnt > 0, tl.exp((za - m) - logz), 0.0)
    alpha = gl + gn - gi * (py - pa)
    beta_y = gi * py - gn
    beta_t = tl.where(cnt > 0, -gi * pa / tl.maximum(cnt, 1.0), 0.0)
    bad = (m != m) | (m == float("-inf"))
    arg_t = tl.where(cnt > 0, arg, -1)               # the tied maxima of v != y: the first one,
    za_t = tl.where(cnt > 1, za, float("nan"))       # and (c > 1) every v with z_v == z_A
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < V
        x = tl.load(x_ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
        t = (x - m) - logz
        p = tl.exp(t)
        d = alpha * p
        if MODE == 1:
            d += -ge * tl.where(x > float("-inf"), p * (t + aux), 0.0)
        elif MODE == 2:
            d += (-ge * q / (q - 1.0)) * (p * p - p * aux)
        elif MODE == 3:
            d += (-ge * q / (q - 1.0)) * (tl.exp(q * t) - p * aux)
        d += tl.where(offs == ys, beta_y, 0.0)
        tie = (offs != ys) & ((offs == arg_t) | (x == za_t))
        d += tl.where(tie, beta_t, 0.0)
        d = tl.where(bad, float("nan"), d)
        d = tl.where(valid, d, 0.0)
        tl.store(o_ptr + offs, d.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _kl_fwd_kernel(XB, X, MASK, KL, ST, stride_b, stride_m, V, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    valid = row >= 0
    if HAS_MASK:
        valid = tl.load(MASK + row) != 0
    mb = float("-inf")
    mm = float("-inf")
    zb = 0.0
    zm = 0.0
    a = 0.0
    nan_cnt = 0
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        xb = tl.load(XB + row * stride_b + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        x = tl.load(X + row * stride_m + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        xb, eb, sb, mb, zb, _, nan_cnt = softmax_block(xb, mb, zb, 0.0, nan_cnt, 0.0, 0)   # MODE NONE
        x, _, _, mm, zm, _, nan_cnt = softmax_block(x, mm, zm, 0.0, nan_cnt, 0.0, 0)
        a = a * sb + tl.sum(tl.where(eb > 0.0, eb * (xb - x), 0.0), axis=0)
    lzb = tl.log(zb)
    lzm = tl.log(zm)
    kl = a / zb - (mb - mm) - lzb + lzm
    bad = (nan_cnt > 0) | (zb == 0.0) | (zm == 0.0)
    kl = tl.where(bad, float("nan"), kl)
    tl.store(KL + row, tl.where(valid, kl, 0.0))
    s_ptr = ST + 5 * row
    tl.store(s_ptr, tl.where(valid, tl.where(bad, float("nan"), mb), 0.0))
    tl.store(s_ptr + 1, tl.where(valid, lzb, 0.0))
    tl.store(s_ptr + 2, tl.where(valid, tl.where(bad, float("nan"), mm), 0.0))
    tl.store(s_ptr + 3, tl.where(valid, lzm, 0.0))
    tl.store(s_ptr + 4, tl.where(valid, kl, 0.0))


@triton.jit
def _kl_bwd_kernel(XB, X, G, MASK, ST, stride_b, stride_m, V, HAS_MASK: tl.constexpr, NEED_BASE: tl.constexpr,
                   BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    valid = row >= 0
    if HAS_MASK:
        valid = tl.load(MASK + row) != 0
    g = tl.load(G + row)
    s_ptr = ST + 5 * row
    mb = tl.load(s_ptr)
    lzb = tl.load(s_ptr + 1)
    mm = tl.load(s_ptr + 2)
    lzm = tl.load(s_ptr + 3)
    kl = tl.load(s_ptr + 4)
    k = (mb - mm) + (lzb - lzm) + kl      # log p_b - log p - KL = (z_b - z) - k: no cancellation
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < V
        xb = tl.load(XB + row * stride_b + offs, mask=mask, other=float("-inf")).to(tl.float32)
        x = tl.load(X + row * stride_m + offs, mask=mask, other=float("-inf")).to(tl.float32)
        tb = (xb - mb) - lzb
        t = (x - mm) - lzm
        pb = tl.exp(tb)
        d = tl.where(valid, g * (tl.exp(t) - pb), 0.0)
        if NEED_BASE:
            db = tl.where(pb > 0.0, g * pb * ((xb - x) - k), 0.0)
            db = tl.where(mb != mb, float("nan"), db)
            tl.store(XB + row * stride_b + offs, tl.where(valid, db, 0.0), mask=mask)
        tl.store(X + row * stride_m + offs, d, mask=mask)


def _block(v: int, device: torch.device) -> int:
    cap = 4096 if device.type == "cuda" else 1024
    return max(16, min(cap, triton.next_power_of_2(v)))


def _warps(block: int) -> int:
    return 8 if block >= 2048 else 4


def _grads_from(dz, hs, w, acc, s, step, low):
    """d hidden rows of the chunk and d W, d bias accumulation from dL/dz of the chunk."""
    dh, dw, db = acc
    if db is not None:
        db += dz.sum(0)
    if low:                     # tensor-core GEMMs in the input dtype, as lm_head_entropy does
        zl = dz.to(hs.dtype)
        if dh is not None:
            dh[s:s + step] += zl @ w
        if dw is not None:
            dw += zl.t() @ hs
    else:
        if dh is not None:
            dh[s:s + step] += dz @ (w if w.dtype == torch.float32 else w.float())
        if dw is not None:
            dw.addmm_(dz.t(), hs.float())


def _acc(like_h, w, bias, need_h, need_w, need_b):
    f32 = dict(dtype=torch.float32, device=like_h.device)
    return (torch.zeros(like_h.shape, **f32) if need_h else None, torch.zeros(w.shape, **f32) if need_w else None,
            torch.zeros(w.shape[0], **f32) if need_b else None)


def _cast(t, like):
    return None if t is None else t.to(like.dtype)


def losses_fwd(h, w, bias, labels, q, with_ent, ignore_index):
    n, v = h.shape[0], w.shape[0]
    f32 = dict(dtype=torch.float32, device=h.device)
    outs = [torch.empty(n, **f32) for _ in range(4)]
    stats = torch.empty((n, 7), **f32)
    step, block, md = chunk_rows(n, v, h.device), _block(v, h.device), mode(q, with_ent)
    for s in range(0, n, step):
        z = logits_fp32(h[s:s + step], w, bias)
        _losses_fwd_kernel[(z.shape[0],)](z, labels[s:s + step], *(o[s:s + step] for o in outs), stats[s:s + step],
                                          z.stride(0), v, float(q), int(ignore_index), MODE=md, BLOCK=block,
                                          num_warps=_warps(block))
    return (*outs, stats)


def losses_bwd(g_nll, g_ihl, g_ent, g_lse, h, w, bias, labels, stats, q, ignore_index, need_h, need_w, need_b):
    n, v = h.shape[0], w.shape[0]
    acc = _acc(h, w, bias, need_h, need_w, need_b)
    step, block = chunk_rows(n, v, h.device), _block(v, h.device)
    md = mode(q, g_ent is not None and q > 0)
    dummy = stats
    for s in range(0, n, step):
        hs = h[s:s + step]
        z = logits_fp32(hs, w, bias)
        sl = lambda g: dummy if g is None else g[s:s + step]  # noqa: E731
        _losses_bwd_kernel[(z.shape[0],)](z, z, labels[s:s + step], stats[s:s + step], sl(g_nll), sl(g_ihl),
                                          sl(g_ent), sl(g_lse), z.stride(0), z.stride(0), v, float(q),
                                          int(ignore_index), HAS_GN=g_nll is not None, HAS_GI=g_ihl is not None,
                                          HAS_GL=g_lse is not None, MODE=md, BLOCK=block, num_warps=_warps(block))
        _grads_from(z, hs, w, acc, s, step, low_precision_gpu(h, w))
    return _cast(acc[0], h), _cast(acc[1], w), (None if acc[2] is None else acc[2].to(bias.dtype))


def kl_fwd(hb, h, w, bias, mask, wb=None, bb=None):
    n, v = h.shape[0], w.shape[0]
    kl = torch.empty(n, dtype=torch.float32, device=h.device)
    stats = torch.empty((n, 5), dtype=torch.float32, device=h.device)
    step, block = max(1, chunk_rows(n, v, h.device) // 2), _block(v, h.device)
    wb, bb = (w, bias) if wb is None else (wb, bb)     # the base head: its own, or the shared one
    for s in range(0, n, step):
        zb, z = logits_fp32(hb[s:s + step], wb, bb), logits_fp32(h[s:s + step], w, bias)
        m = mask[s:s + step] if mask is not None else kl
        _kl_fwd_kernel[(z.shape[0],)](zb, z, m, kl[s:s + step], stats[s:s + step], zb.stride(0), z.stride(0), v,
                                      HAS_MASK=mask is not None, BLOCK=block, num_warps=_warps(block))
    return kl, stats


def kl_bwd(g, hb, h, w, bias, mask, stats, need_hb, need_h, need_w, need_b, wb=None, bb=None, need_wb=False,
           need_bb=False):
    n, v = h.shape[0], w.shape[0]
    acc_m = _acc(h, w, bias, need_h, need_w, need_b)
    two = wb is not None
    if not two:      # one shared head: the base logits' share goes into d weight / d bias too
        wb, bb, acc_b = w, bias, (None, acc_m[1], acc_m[2])
    else:
        acc_b = _acc(hb, wb, bb, False, need_wb, need_bb and bb is not None)
    acc_b = (torch.zeros(hb.shape, dtype=torch.float32, device=h.device) if need_hb else None,) + acc_b[1:]
    base_side = any(a is not None for a in acc_b)
    step, block = max(1, chunk_rows(n, v, h.device) // 2), _block(v, h.device)
    low = low_precision_gpu(h, w)
    for s in range(0, n, step):
        hbs, hs = hb[s:s + step], h[s:s + step]
        zb, z = logits_fp32(hbs, wb, bb), logits_fp32(hs, w, bias)
        m = mask[s:s + step] if mask is not None else g
        _kl_bwd_kernel[(z.shape[0],)](zb, z, g[s:s + step], m, stats[s:s + step], zb.stride(0), z.stride(0), v,
                                      HAS_MASK=mask is not None, NEED_BASE=base_side, BLOCK=block,
                                      num_warps=_warps(block))
        _grads_from(z, hs, w, acc_m, s, step, low)
        if base_side:
            _grads_from(zb, hbs, wb, acc_b, s, step, low)
    return (_cast(acc_b[0], hb), _cast(acc_m[0], h), _cast(acc_m[1], w), _cast(acc_m[2], bias),
            _cast(acc_b[1], wb) if two else None, _cast(acc_b[2], bb) if two else None)


# (fwd, bwd) pairs for kernels/lm_head_losses.py's LossKernels / KLKernels
LOSS_KERNELS = (losses_fwd, losses_bwd)
KL_KERNELS = (kl_fwd, kl_bwd)
