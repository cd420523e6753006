"""Dispatch point of the asymmetric multi-expert LoRA linear ``asym_lora``."""
from __future__ import annotations

import math

import torch

from ..kernels import registry
from ._checks import check_same_device, check_shape, check_tensor

OP = "asym_lora"


def asym_lora(x: torch.Tensor, weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
              expert_weights: torch.Tensor, scale: float,
              a_grad_mask: torch.Tensor | None = None, b_grad_mask: torch.Tensor | None = None,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W0^T (+ bias) + scale * sum_e w_{:,e} * B_e (A x), with masked gradients.

    x [N, d_in], weight [d_out, d_in], A [r, d_in], B [E, d_out, r], expert_weights [N, E],
    a_grad_mask [N] bool (rows whose gradient reaches A), b_grad_mask [N, E] bool (rows whose
    gradient reaches B_e), bias [d_out] -> [N, d_out] in x's dtype. dx flows from every row.
    """
    if not _fast_ok(x, weight, A, B, expert_weights, a_grad_mask, b_grad_mask, bias):
        _full_checks(x, weight, A, B, expert_weights, a_grad_mask, b_grad_mask, bias)
    s = float(scale)
    if not math.isfinite(s):      # C++ gave NaN, the reference +-inf: refused in every backend
        raise ValueError(f"{OP}: scale must be a finite number, got {scale!r}")
    return _pick(x.device, x.dtype).fn(x, weight, A, B, expert_weights, s, a_grad_mask, b_grad_mask, bias)


_pick_cache: dict = {}


def _pick(device: torch.device, dtype: torch.dtype):
    """registry.pick, memoised on everything it depends on (it costs ~10 us, a decode step calls
    this once per patched linear)."""
    if torch.compiler.is_compiling():
        return registry.pick(OP, device, dtype)
    key = (registry.cache_key(), device, dtype)
    impl = _pick_cache.get(key)
    if impl is None:
        impl = _pick_cache[key] = registry.pick(OP, device, dtype)
    return impl


_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _fast_ok(x, weight, A, B, w, am, bm, bias) -> bool:
    """The common case in one cheap test (decode calls this per linear per token); any doubt
    goes to the detailed checks, which raise with a clear message."""
    try:
        n, d_in = x.shape
        d_out = weight.shape[0]
        e, _, r = B.shape
        dev = x.device
        return (weight.shape == (d_out, d_in) and A.shape == (r, d_in) and B.shape[1] == d_out
                and w.shape == (n, e) and x.dtype in _FLOATS and weight.dtype == x.dtype
                and A.dtype in _FLOATS and B.dtype in _FLOATS and w.dtype in _FLOATS
                and weight.device == dev and A.device == dev and B.device == dev and w.device == dev
                and (am is None or (am.dtype == torch.bool and am.shape == (n,) and am.device == dev))
                and (bm is None or (bm.dtype == torch.bool and bm.shape == (n, e) and bm.device == dev))
                and (bias is None or (bias.dtype == x.dtype and bias.shape == (d_out,) and bias.device == dev)))
    except (AttributeError, ValueError, TypeError):
        return False


def _full_checks(x, weight, A, B, expert_weights, a_grad_mask, b_grad_mask, bias) -> None:
    check_tensor(x, "x", OP, ndim=2)
    check_tensor(weight, "weight", OP, ndim=2)
    check_tensor(A, "A", OP, ndim=2)
    check_tensor(B, "B", OP, ndim=3)
    check_tensor(expert_weights, "expert_weights", OP, ndim=2)
    n, d_in = x.shape
    d_out = weight.shape[0]
    r, e = A.shape[0], B.shape[0]
    check_shape(weight, "weight", OP, (d_out, d_in), f" ([d_out, d_in] with d_in = x.shape[1] = {d_in})")
    check_shape(A, "A", OP, (r, d_in), f" ([r, d_in] with d_in = {d_in})")
    check_shape(B, "B", OP, (e, d_out, r), f" ([E, d_out, r] with d_out = {d_out}, r = {r})")
    check_shape(expert_weights, "expert_weights", OP, (n, e), f" ([N, E] with N = {n}, E = {e})")
    if a_grad_mask is not None:
        check_tensor(a_grad_mask, "a_grad_mask", OP, float_only=False)
        if a_grad_mask.dtype != torch.bool:
            raise TypeError(f"{OP}: a_grad_mask must be a bool tensor, got {a_grad_mask.dtype}")
        check_shape(a_grad_mask, "a_grad_mask", OP, (n,), " ([N])")
    if b_grad_mask is not None:
        check_tensor(b_grad_mask, "b_grad_mask", OP, float_only=False)
        if b_grad_mask.dtype != torch.bool:
            raise TypeError(f"{OP}: b_grad_mask must be a bool tensor, got {b_grad_mask.dtype}")
        check_shape(b_grad_mask, "b_grad_mask", OP, (n, e), " ([N, E])")
    if bias is not None:
        check_tensor(bias, "bias", OP, ndim=1)
        check_shape(bias, "bias", OP, (d_out,), " ([d_out])")
    if weight.dtype != x.dtype:
        raise TypeError(f"{OP}: weight must have x's dtype {x.dtype} (the base GEMM runs in it), got {weight.dtype}")
    if bias is not None and bias.dtype != x.dtype:
        raise TypeError(f"{OP}: bias must have x's dtype {x.dtype}, got {bias.dtype}")
    check_same_device(OP, x=x, weight=weight, A=A, B=B, expert_weights=expert_weights,
                      a_grad_mask=a_grad_mask, b_grad_mask=b_grad_mask, bias=bias)
