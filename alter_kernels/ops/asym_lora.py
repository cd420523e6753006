"""Dispatch point of the asymmetric multi-expert LoRA linear ``asym_lora``."""
from __future__ import annotations

import torch

from .. import _backend
from ..reference.asym_lora import asym_lora_ref
from ._asym_lora_impl import register_backends
from ._checks import check_same_device, check_shape, check_tensor

_backend.register("asym_lora", "reference", asym_lora_ref, priority=0)
register_backends()

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
    impl = _backend.pick(OP, x.device)
    return impl.fn(x, weight, A, B, expert_weights, float(scale), a_grad_mask, b_grad_mask, bias)
