"""Plain-PyTorch reference of the asymmetric multi-expert LoRA linear (ALTER_SPEC sections 1, 4).

    y_t = W0 x_t (+ bias) + s * sum_e w_{t,e} B_e (A x_t)

Gradient isolation (spec 4) is written with plain autograd: rows that may not update a
parameter use a detached copy of it, so their gradient still reaches x (and the other
parameters) but never that parameter. Readable and differentiable to any order; twice the
adapter FLOPs of a kernel, which is fine for a reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .entropy import acc_dtype


def asym_lora_ref(x: torch.Tensor, weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  expert_weights: torch.Tensor, scale: float,
                  a_grad_mask: torch.Tensor | None = None,
                  b_grad_mask: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [N, d_in], weight [d_out, d_in], A [r, d_in], B [E, d_out, r], expert_weights [N, E],
    a_grad_mask [N] bool, b_grad_mask [N, E] bool -> [N, d_out] in x's dtype.

    The adapter path (A x, the expert mix) is computed in fp32 (float64 for float64 input).
    An expert whose weight is 0 for a token contributes nothing to that token, even if its B (or
    A x) holds inf / NaN; non-zero weights follow IEEE arithmetic.
    """
    acc = acc_dtype(x.dtype)
    base = F.linear(x, weight, bias)
    xa = x.to(acc)
    u = xa @ A.to(acc).t()                                   # [N, r], once for all experts
    if a_grad_mask is not None:
        u_frozen_a = xa @ A.detach().to(acc).t()
        u = torch.where(a_grad_mask[:, None], u, u_frozen_a)
    w = expert_weights.to(acc)
    delta = torch.zeros(x.shape[0], weight.shape[0], dtype=acc, device=x.device)
    for e in range(B.shape[0]):
        ye = u @ B[e].to(acc).t()                            # [N, d_out]
        if b_grad_mask is not None:
            ye_frozen_b = u @ B[e].detach().to(acc).t()
            ye = torch.where(b_grad_mask[:, e, None], ye, ye_frozen_b)
        we = w[:, e:e + 1]
        # weight 0: the expert does not contribute at all (0, not 0 * inf = NaN), as in every backend;
        # finite entries keep the plain product (and its gradient w.r.t. the weights)
        delta = delta + torch.where((we != 0) | torch.isfinite(ye), we * ye,
                                    torch.zeros((), dtype=acc, device=x.device))
    return base + (scale * delta).to(base.dtype)
