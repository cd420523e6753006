"""Autograd wrappers shared by every entropy backend (cpp, triton, cuda).

A backend provides ``Kernels``: a forward that returns (entropy [N], lse [N], stats [N, 3]) and
a backward that recomputes the gradient from those statistics and the inputs, never from a
saved [N, V] tensor. ``stats`` = [m, log Z, aux] per row: the max logit, log sum exp(z - m), and
aux = sum_i p_i^q (q != 1) or S_1 itself (q = 1). The backward recomputes log p = (z - m) - log Z,
which keeps full fp32 precision where z - lse (lse = m + log Z rounded to fp32) would not.

Layout: ``tsallis_entropy`` works on a 2-D [N, V] view of the logits whose last dim is
unit-stride. ``logits.reshape(-1, V)`` is a view whenever the leading dims can be flattened;
a copy is made only when they cannot, or when the last dim is not unit-stride (e.g. a
transposed tensor). The backward remakes that view from the saved input (the input itself is
kept by autograd anyway; nothing [N, V]-sized is added).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch


@dataclasses.dataclass(frozen=True)
class TsallisKernels:
    fwd: Callable  # (x2d, q) -> (ent [N], lse [N], stats [N, 3]) fp32
    bwd: Callable  # (grad fp32 [N], x2d, stats, q) -> grad_x [N, V] in x's dtype


@dataclasses.dataclass(frozen=True)
class LMHeadKernels:
    fwd: Callable  # (h [N,d], w [V,d], bias|None, q) -> (ent, lse, stats)
    # (g_ent [N], g_lse [N]|None, h, w, bias|None, stats, q, need_h, need_w, need_b) -> (dh, dw, db)
    bwd: Callable


def rows_view(logits: torch.Tensor) -> torch.Tensor:
    """[..., V] -> [N, V] with a unit-stride last dim; copies only when a view cannot do it."""
    v = logits.shape[-1]
    x = logits.reshape(-1, v)
    if v > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    return x


class _TsallisFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, q: float, kern: TsallisKernels):
        x = rows_view(logits)
        ent, _, stats = kern.fwd(x, q)
        ctx.save_for_backward(logits, stats)
        ctx.q, ctx.kern = q, kern
        return ent.reshape(logits.shape[:-1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        logits, stats = ctx.saved_tensors
        x = rows_view(logits)
        g = grad.reshape(-1).to(torch.float32).contiguous()
        gx = ctx.kern.bwd(g, x, stats, ctx.q)
        return gx.reshape(logits.shape), None, None


def tsallis_entropy_with(kern: TsallisKernels, logits: torch.Tensor, q: float) -> torch.Tensor:
    return _TsallisFn.apply(logits, q, kern)


class _LMHeadFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, q: float, kern: LMHeadKernels):
        ent, lse, stats = kern.fwd(hidden, weight, bias, q)
        ctx.save_for_backward(hidden, weight, bias, stats)
        ctx.q, ctx.kern = q, kern
        ctx.set_materialize_grads(False)
        return ent, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_ent: Optional[torch.Tensor], g_lse: Optional[torch.Tensor]):
        hidden, weight, bias, stats = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias is not None
        if g_ent is None and g_lse is None:
            return None, None, None, None, None
        n = hidden.shape[0]
        g_ent = (torch.zeros(n, dtype=torch.float32, device=hidden.device) if g_ent is None
                 else g_ent.to(torch.float32).contiguous())
        if g_lse is not None:
            g_lse = g_lse.to(torch.float32).contiguous()
        dh, dw, db = ctx.kern.bwd(g_ent, g_lse, hidden, weight, bias, stats, ctx.q, need_h, need_w, need_b)
        return (dh if need_h else None, dw if need_w else None, db if need_b else None, None, None)


def lm_head_entropy_with(kern: LMHeadKernels, hidden, weight, bias, q: float, return_lse: bool):
    """hidden [N, d] (2-D), weight [V, d], bias [V] or None. The lse output is differentiable."""
    ent, lse = _LMHeadFn.apply(hidden, weight, bias, q, kern)
    return (ent, lse) if return_lse else ent


def low_precision_gpu(h: torch.Tensor, w: torch.Tensor) -> bool:
    """bf16 / fp16 on a GPU: the logits GEMM can write fp32 straight from low-precision inputs."""
    return h.is_cuda and h.dtype in (torch.bfloat16, torch.float16) and w.dtype == h.dtype


def logits_fp32(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """fp32 logits of a chunk of tokens, h @ w^T (+ bias): one GEMM with fp32 output where torch
    has it (bf16 / fp16 on a GPU), else in fp32. Shared by every chunked (GPU) LM-head backend."""
    if low_precision_gpu(h, w):
        try:
            z = torch.mm(h, w.t(), out_dtype=torch.float32)
        except (RuntimeError, TypeError):
            z = torch.mm(h, w.t()).float()
    else:
        z = h.float() @ w.float().t()
    if bias is not None:
        z += bias.float()
    return z


def chunked_lm_head_kernels(tsallis_fwd: Callable, grad_inplace: Callable, chunk_rows: Callable) -> LMHeadKernels:
    """LM-head entropy from a row kernel: tokens in chunks, each chunk's fp32 logits made by one GEMM,
    reduced by ``tsallis_fwd`` (forward) or turned in place into dL/dlogits by
    ``grad_inplace(z, stats, g_ent, g_lse, q)`` (backward), then dH / dW from two GEMMs.
    Only a [chunk, V] tile exists at a time (chunk_rows(N, V, device) rows). Used by the GPU
    backends, where one big GEMM per chunk runs at the library's full speed."""

    def fwd(h, w, bias, q):
        n = h.shape[0]
        out = [torch.empty(n, dtype=torch.float32, device=h.device) for _ in range(2)]
        out.append(torch.empty((n, 3), dtype=torch.float32, device=h.device))
        step = chunk_rows(n, w.shape[0], h.device)
        for s in range(0, n, step):
            z = logits_fp32(h[s:s + step], w, bias)
            e, l, st = tsallis_fwd(z, q)
            out[0][s:s + step], out[1][s:s + step], out[2][s:s + step] = e, l, st
        return tuple(out)

    def bwd(g_ent, g_lse, h, w, bias, stats, q, need_h, need_w, need_b):
        n = h.shape[0]
        dh = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if need_h else None
        dw = torch.zeros(w.shape, dtype=torch.float32, device=h.device) if need_w else None
        db = torch.zeros(w.shape[0], dtype=torch.float32, device=h.device) if need_b else None
        step = chunk_rows(n, w.shape[0], h.device)
        # bf16/fp16 on a GPU: tensor-core GEMMs in the input dtype (dL/dlogits rounded to it, fp32
        # accumulation), as the CUDA backend does; elsewhere fp32 GEMMs (no fp32 copy of W kept).
        low = h.is_cuda and h.dtype in (torch.bfloat16, torch.float16) and w.dtype == h.dtype
        for s in range(0, n, step):
            hs = h[s:s + step]
            z = logits_fp32(hs, w, bias)
            grad_inplace(z, stats[s:s + step], g_ent[s:s + step],
                         None if g_lse is None else g_lse[s:s + step], q)
            if need_b:
                db += z.sum(0)
            if low:
                zl = z.to(h.dtype)
                if need_h:
                    dh[s:s + step] = zl @ w
                if need_w:
                    dw += zl.t() @ hs
            else:
                if need_h:
                    dh[s:s + step] = z @ w.float() if w.dtype != torch.float32 else z @ w
                if need_w:
                    dw.addmm_(z.t(), hs.float())
        return (dh.to(h.dtype) if need_h else None, dw.to(w.dtype) if need_w else None,
                db.to(bias.dtype) if need_b else None)

    return LMHeadKernels(fwd, bwd)
