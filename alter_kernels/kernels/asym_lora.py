"""Fast implementations of ``asym_lora`` behind one autograd.Function.

Every fast backend (torch, cpp, cuda, triton) provides the same two pieces:

    fwd(x, weight, A, B, w, scale, bias)                       -> (y [N, d_out], u [N, r] fp32)
    bwd(g, x, weight, A, B, w, u, scale, a_mask, b_mask,
        need_dx, need_dA, need_dB, need_dw)                    -> (dx, dA, dB, dw), None where not needed

:class:`AsymLoraFunction` wraps them: it saves only x, the parameters, the plan tensors and the
[N, r] shrink output u (no [N, E*r] or [N, d_out] intermediates), and adds dW0 / dbias only
when the base weight / bias require grad. Without autograd (inference, decoding), the
backend's forward is called directly: one native op call on the C++ backends.

The formulation (spec 1): u = x A^T once; U_cat = s * (w[:, e] * u) laid out [N, E*r];
y = x W0^T + bias + U_cat @ B_cat^T with B_cat = [B_0 | ... | B_{E-1}] ([d_out, E*r]): one GEMM.
Backward (spec 4): with V = g @ B_cat, du = s * sum_e w_e V_e (all rows, for dx), dA from the
rows of du in a_grad_mask, dB_cat = g^T (U_cat with rows outside b_grad_mask[:, e] zeroed),
dw_e = s * <u, V_e>.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from .reference.asym_lora import asym_lora_ref

OP = "asym_lora"


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _b_cat(B: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    E, d_out, r = B.shape
    return B.to(acc).permute(1, 0, 2).reshape(d_out, E * r)


# --------------------------------------------------------------------------- torch backend
def torch_fwd(x, weight, A, B, w, scale, bias):
    acc = _acc(x.dtype)
    n = x.shape[0]
    E, d_out, r = B.shape
    xa = x if x.dtype == acc else x.to(acc)
    u = xa @ A.to(acc).t()
    U = (w.to(acc) * scale).unsqueeze(2).mul(u.unsqueeze(1)).view(n, E * r)
    Bc = _b_cat(B, acc)
    if x.dtype == acc:
        y = torch.addmm(bias, x, weight.t()) if bias is not None else x @ weight.t()
        y.addmm_(U, Bc.t())
    else:
        y = torch.addmm(F.linear(x, weight, bias).to(acc), U, Bc.t()).to(x.dtype)
    return y, u


def torch_bwd(g, x, weight, A, B, w, u, scale, a_mask, b_mask, need_dx, need_dA, need_dB, need_dw):
    acc = _acc(x.dtype)
    n = x.shape[0]
    E, d_out, r = B.shape
    same = x.dtype == acc
    gf = g if same else g.to(acc)
    Aa = A.to(acc)
    wa = w.to(acc)
    dx = dA = dB = dw = None
    if need_dx or need_dA or need_dw:
        V = (gf @ _b_cat(B, acc)).view(n, E, r)
        if need_dx or need_dA:
            du = torch.bmm(wa.unsqueeze(1), V).squeeze(1).mul_(scale)           # [N, r]
            if need_dx:
                dx = g @ weight
                if same:
                    dx.addmm_(du, Aa)
                else:
                    dx = torch.addmm(dx.to(acc), du, Aa).to(x.dtype)
            if need_dA:
                duA = du if a_mask is None else torch.where(a_mask.unsqueeze(1), du, 0.0)
                dA = (duA.t() @ (x if same else x.to(acc))).to(A.dtype)
        if need_dw:
            dw = torch.bmm(V, u.unsqueeze(2)).squeeze(2).mul_(scale).to(w.dtype)  # [N, E]
    if need_dB:
        Um = (wa * scale).unsqueeze(2) * u.unsqueeze(1)                         # [N, E, r]
        if b_mask is not None:
            Um = torch.where(b_mask.unsqueeze(2), Um, 0.0)
        dB = (gf.t() @ Um.view(n, E * r)).view(d_out, E, r).permute(1, 0, 2).to(B.dtype).contiguous()
    return dx, dA, dB, dw


# --------------------------------------------------------------------------- native (C++ / CUDA) backend
_ops: list = []


def _native_ops():
    if not _ops:
        _ops.extend((torch.ops.alter_kernels.asym_lora_fwd.default, torch.ops.alter_kernels.asym_lora_bwd.default))
    return _ops


def native_fwd(x, weight, A, B, w, scale, bias, mode: int = 0):
    return _native_ops()[0](x, weight, A, B, w, scale, bias, mode)


def native_bwd(g, x, weight, A, B, w, u, scale, a_mask, b_mask, need_dx, need_dA, need_dB, need_dw):
    return _native_ops()[1](g, x, weight, A, B, w, u, scale, a_mask, b_mask, need_dx, need_dA, need_dB, need_dw)


class _Impl:
    __slots__ = ("fwd", "bwd")

    def __init__(self, fwd, bwd):
        self.fwd, self.bwd = fwd, bwd


class AsymLoraFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, impl, x, weight, A, B, w, scale, a_mask, b_mask, bias):
        y, u = impl.fwd(x, weight, A, B, w, scale, bias)
        ctx.impl, ctx.scale = impl, scale
        ctx.save_for_backward(x, weight, A, B, w, u, a_mask, b_mask)
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, A, B, w, u, a_mask, b_mask = ctx.saved_tensors
        _, n_x, n_W, n_A, n_B, n_w, _, _, _, n_bias = ctx.needs_input_grad
        g = g.contiguous()
        dx, dA, dB, dw = ctx.impl.bwd(g, x, weight, A, B, w, u, ctx.scale, a_mask, b_mask,
                                      n_x, n_A, n_B, n_w)
        dW = (g.t() @ x).to(weight.dtype) if n_W else None
        dbias = g.sum(0) if n_bias else None
        # a kernel may return a placeholder for a gradient nobody asked for: drop it
        return (None, dx if n_x else None, dW, dA if n_A else None, dB if n_B else None,
                dw if n_w else None, None, None, None, dbias)


_finite_seen: dict = {}     # id(tensor) -> (weakref, (data_ptr, version), all finite)


def params_finite(*ts) -> bool:
    """Whether every tensor is finite, remembered per tensor until it changes (a parameter is
    checked once per optimizer step, not once per call; keyed on the object, its data pointer and
    its version counter). Skipped (True) while torch.compile traces."""
    if torch.compiler.is_compiling():
        return True
    for t in ts:
        try:
            sig = (t.data_ptr(), t._version)
        except RuntimeError:                    # inference tensors have no version counter
            if not bool(torch.isfinite(t).all()):
                return False
            continue
        key = id(t)
        hit = _finite_seen.get(key)
        if hit is None or hit[0]() is not t or hit[1] != sig:
            ok = bool(torch.isfinite(t).all())
            _finite_seen[key] = (weakref.ref(t, lambda _, k=key: _finite_seen.pop(k, None)), sig, ok)
        elif not hit[2]:
            return False
        else:
            continue
        if not ok:
            return False
    return True


def make_backend(impl: _Impl):
    def run(x, weight, A, B, w, scale, a_mask=None, b_mask=None, bias=None):
        if not params_finite(A, B):
            # inf/NaN in A or B: the fused GEMMs would turn an expert of weight 0 into 0 * inf = NaN;
            # the reference skips experts of weight 0 exactly (docs/DESIGN.md, "inf / NaN")
            return asym_lora_ref(x, weight, A, B, w, scale, a_mask, b_mask, bias)
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or A.requires_grad or
                                        B.requires_grad or w.requires_grad or
                                        (bias is not None and bias.requires_grad)):
            return AsymLoraFunction.apply(impl, x, weight, A, B, w, scale, a_mask, b_mask, bias)
        return impl.fwd(x, weight, A, B, w, scale, bias)[0]
    return run


TORCH_IMPL = _Impl(torch_fwd, torch_bwd)
NATIVE_IMPL = _Impl(native_fwd, native_bwd)
