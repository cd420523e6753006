"""Plain-PyTorch references of the decode-shaped ops (a handful of tokens per call).

``decode_route``: the expert weights of ``route_plan_ref`` for inference (no labels) from the
hidden states. ``decode_group_linear``: every member of a group of patched linears that read
the same input, y_k = x W_k^T + b_k + sum_e w_e B^T_k[e]^T (A_k x), with ``a_cat`` the members'
A stacked [G*r, d_in] and ``b_t`` each member's B^T [E, r, d_out], pre-scaled by the LoRA scale.
"""
from __future__ import annotations

import torch

from .routing import route_plan_ref


def decode_route_ref(hidden: torch.Tensor, router_weight: torch.Tensor, entropy: torch.Tensor,
                     threshold: float, tau_high: float, tau_low: float, top_k: int) -> torch.Tensor:
    logits = hidden.to(torch.float32) @ router_weight.to(torch.float32)
    return route_plan_ref(logits, entropy.to(torch.float32), threshold, tau_high, tau_low, top_k)[0]


def decode_linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W^T + b (nn.Linear's math; the decode op only changes how W is read)."""
    y = x @ weight.t()
    return y + bias if bias is not None else y


def decode_group_linear_ref(x: torch.Tensor, weights: list, biases: list, a_cat: torch.Tensor, b_t: list,
                            expert_weights: torch.Tensor) -> list:
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    g = len(weights)
    r = a_cat.shape[0] // g
    u = (x.to(acc) @ a_cat.to(acc).t()).view(x.shape[0], g, r)          # [N, G, r] shrink, fp32
    w = expert_weights.to(acc)
    out = []
    for k, (wk, bk, btk) in enumerate(zip(weights, biases, b_t)):
        y = x.to(acc) @ wk.to(acc).t()
        if bk is not None:
            y = y + bk.to(acc)
        # sum_e w[n, e] * u_k[n] @ B^T_k[e]
        y = y + torch.einsum("ne,nr,erd->nd", w, u[:, k], btk.to(acc))
        out.append(y.to(x.dtype))
    return out
