"""Autograd Functions and native wrappers of the fused LM-head losses (issue 16).

A backend provides ``LossKernels`` / ``KLKernels``: a forward that returns the per-token values
plus O(N) statistics, and a backward that recomputes vocabulary tiles of the logits from those
statistics and the inputs (never from a saved [N, V] tensor):

    losses: fwd(h, w, bias, labels, q, with_entropy, ignore_index) -> (nll, ihl, ent, lse, stats [N, 7])
            bwd(g_nll?, g_ihl?, g_ent?, g_lse?, h, w, bias, labels, stats, q, ignore_index,
                need_h, need_w, need_b) -> (dh, dw, db)
    kl:     fwd(hb, h, w, bias, mask, wb, bb) -> (kl, stats [N, 5])
            bwd(g, hb, h, w, bias, mask, stats, need_hb, need_h, need_w, need_b, wb, bb, need_wb, need_bb)
                -> (dhb, dh, dw, db, dwb, dbb)

stats of the losses: [m, log Z, aux, z_y, z_A, c, a] (max logit, log sum exp(z - m), the
entropy's aux, label logit, largest logit over v != y, how many v != y reach it, the first
of them); of the KL: [m_b, log Z_b, m, log Z, KL]. The KL's base head is (wb, bb) when wb is
given, else the shared (w, bias), whose gradients then take the base side's share. What a backward was not asked for comes back
as None or a 0-element placeholder; the Functions drop it. The only tensors autograd keeps
are the inputs and these statistics.

The kernels accumulate in fp32 and take fp32 / bf16 / fp16: the table (table.py) sends float64
to the reference.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from .native import native_has_kernel, native_op
from .types import TokenLosses


@dataclasses.dataclass(frozen=True)
class LossKernels:
    fwd: Callable
    bwd: Callable


@dataclasses.dataclass(frozen=True)
class KLKernels:
    fwd: Callable
    bwd: Callable
    # optional fwd_grad(hb, h, w, bias, mask, wb, bb) -> (kl, stats, dh1 [N, d] fp32 = dKL/d hidden per
    # unit upstream gradient), used when only hidden needs a gradient: the backward is then g * dh1
    fwd_grad: Optional[Callable] = None


def _f32(g: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if g is None else g.to(torch.float32).contiguous()


class _TokenLossesFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, q: float, with_ent: bool, ignore_index: int, kern: LossKernels):
        nll, ihl, ent, lse, stats = kern.fwd(hidden, weight, bias, labels, q, with_ent, ignore_index)
        ctx.save_for_backward(hidden, weight, bias, labels, stats)
        ctx.args = (q, with_ent, ignore_index, kern)
        ctx.set_materialize_grads(False)
        if not with_ent:
            ctx.mark_non_differentiable(ent)
        return nll, ihl, ent, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_nll, g_ihl, g_ent, g_lse):
        hidden, weight, bias, labels, stats = ctx.saved_tensors
        q, with_ent, ignore_index, kern = ctx.args
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias is not None
        if not with_ent:
            g_ent = None
        grads = [_f32(g) for g in (g_nll, g_ihl, g_ent, g_lse)]
        if all(g is None for g in grads) or not (need_h or need_w or need_b):
            return (None,) * 8
        dh, dw, db = kern.bwd(*grads, hidden, weight, bias, labels, stats, q, ignore_index, need_h, need_w, need_b)
        return (dh if need_h else None, dw if need_w else None, db if need_b else None) + (None,) * 5


class _KLFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_base, hidden, weight, bias, mask, weight_base, bias_base, kern: KLKernels):
        n = ctx.needs_input_grad
        ctx.kern, ctx.flash = kern, kern.fwd_grad is not None and n[1] and not any(n[i] for i in (0, 2, 3, 5, 6))
        ctx.set_materialize_grads(False)
        if ctx.flash:   # only hidden needs a gradient: it comes with the forward (no tiles recomputed)
            kl, stats, dh1 = kern.fwd_grad(hidden_base, hidden, weight, bias, mask, weight_base, bias_base)
            ctx.save_for_backward(dh1)
            ctx.h_dtype = hidden.dtype
            return kl
        kl, stats = kern.fwd(hidden_base, hidden, weight, bias, mask, weight_base, bias_base)
        ctx.save_for_backward(hidden_base, hidden, weight, bias, mask, weight_base, bias_base, stats)
        return kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        if ctx.flash:
            dh = None if g is None else (g.to(torch.float32).unsqueeze(-1) * ctx.saved_tensors[0]).to(ctx.h_dtype)
            return None, dh, None, None, None, None, None, None
        hidden_base, hidden, weight, bias, mask, weight_base, bias_base, stats = ctx.saved_tensors
        need_hb, need_h, need_w, need_b, _, need_wb, need_bb = ctx.needs_input_grad[:7]
        need_b = need_b and bias is not None
        need_wb = need_wb and weight_base is not None
        need_bb = need_bb and bias_base is not None
        needs = (need_hb, need_h, need_w, need_b, need_wb, need_bb)
        if g is None or not any(needs):
            return (None,) * 8
        out = ctx.kern.bwd(_f32(g), hidden_base, hidden, weight, bias, mask, stats, need_hb, need_h, need_w, need_b,
                           weight_base, bias_base, need_wb, need_bb)
        dhb, dh, dw, db, dwb, dbb = (o if n else None for o, n in zip(out, needs))
        return dhb, dh, dw, db, None, dwb, dbb, None


def token_losses_with(kern: LossKernels, hidden, weight, labels, bias, q, ignore_index) -> TokenLosses:
    """hidden [N, d] (2-D), weight [V, d], labels int64 [N], bias [V] or None; q None = no entropy."""
    with_ent = q is not None
    nll, ihl, ent, lse = _TokenLossesFn.apply(hidden, weight, bias, labels, float(q) if with_ent else 0.0,
                                              with_ent, int(ignore_index), kern)
    return TokenLosses(nll, ihl, ent if with_ent else None, lse)


def kl_with(kern: KLKernels, hidden_base, hidden, weight, bias, mask, weight_base=None, bias_base=None):
    """hidden_base, hidden [N, d], weight [V, d], bias [V] or None, mask bool [N] or None, base head
    weight_base [V, d] / bias_base [V] or None (None: the shared head) -> KL [N]."""
    return _KLFn.apply(hidden_base, hidden, weight, bias, mask, weight_base, bias_base, kern)


# ---- native (C++ CPU / CUDA) kernels: torch.ops.alter_kernels.lm_head_{losses,kl}_{fwd,bwd} ----

def native_loss_kernels() -> LossKernels:
    def fwd(h, w, bias, labels, q, with_ent, ignore_index):
        return native_op("lm_head_losses_fwd")(h, w, bias, labels, q, with_ent, ignore_index)

    def bwd(g_nll, g_ihl, g_ent, g_lse, h, w, bias, labels, stats, q, ignore_index, need_h, need_w, need_b):
        return native_op("lm_head_losses_bwd")(g_nll, g_ihl, g_ent, g_lse, h, w, bias, labels, stats, q, ignore_index,
                                         need_h, need_w, need_b)
    return LossKernels(fwd, bwd)


def native_kl_kernels(device_type: str = "cpu") -> KLKernels:
    def fwd(hb, h, w, bias, mask, wb, bb):
        return native_op("lm_head_kl_fwd")(hb, h, w, bias, mask, 0, 0, wb, bb)

    def bwd(g, hb, h, w, bias, mask, stats, need_hb, need_h, need_w, need_b, wb, bb, need_wb, need_bb):
        return native_op("lm_head_kl_bwd")(g, hb, h, w, bias, mask, stats, need_hb, need_h, need_w, need_b, 0, 0,
                                           wb, bb, need_wb, need_bb)

    def fwd_grad(hb, h, w, bias, mask, wb, bb):
        return native_op("lm_head_kl_fwd_grad")(hb, h, w, bias, mask, 0, 0, wb, bb)
    flash = native_has_kernel("lm_head_kl_fwd_grad", device_type.upper())   # the C++ CPU kernel has it
    return KLKernels(fwd, bwd, fwd_grad if flash else None)


def token_losses_native(hidden, weight, labels, bias, q, ignore_index) -> TokenLosses:
    return token_losses_with(native_loss_kernels(), hidden, weight, labels, bias, q, ignore_index)


def kl_native(hidden_base, hidden, weight, bias, mask, *, weight_base=None, bias_base=None) -> torch.Tensor:
    kern = native_kl_kernels(hidden.device.type)
    return kl_with(kern, hidden_base, hidden, weight, bias, mask, weight_base, bias_base)


def token_losses_triton(hidden, weight, labels, bias, q, ignore_index) -> TokenLosses:
    from .triton import lm_head_losses as tl
    return token_losses_with(LossKernels(*tl.LOSS_KERNELS), hidden, weight, labels, bias, q, ignore_index)


def kl_triton(hidden_base, hidden, weight, bias, mask, *, weight_base=None, bias_base=None) -> torch.Tensor:
    from .triton import lm_head_losses as tl
    return kl_with(KLKernels(*tl.KL_KERNELS), hidden_base, hidden, weight, bias, mask, weight_base, bias_base)
