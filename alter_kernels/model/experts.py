"""Sequential ("continue") unlearning: grow a patched model by new forget experts.

``add_forget_experts(model, n)`` appends n zero-initialised experts to every AlterLinear's
``lora_B`` ([E, d_out, r] -> [E + n, d_out, r]) and n zero columns to every layer's router
W_g. A zero expert adds nothing, so the model computes exactly what it computed before (up to
routing: a zero router column ties with nothing that was already chosen by a larger logit).
The earlier experts are remembered as frozen: :func:`alter_kernels.unlearn` then trains only
the new experts (and the new router columns), leaving A, B_0..B_{E-1} and the old router
columns bit-identical.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from .state import get_state, layer_routers

FROZEN_ATTR = "frozen_experts"     # attribute on the AlterState: experts [0, n) are frozen


def frozen_experts(model) -> int:
    """Number of leading experts that unlearning must not change (0: train all)."""
    return int(getattr(get_state(model), FROZEN_ATTR, 0) or 0)


@torch.no_grad()
def add_forget_experts(model: nn.Module, n: int = 1) -> list[int]:
    """Add ``n`` forget experts to a patched model; returns the new experts' ids."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"add_forget_experts: n must be an int >= 1, got {n!r}")
    state = get_state(model)
    old_e = state.config.num_experts
    cfg = dataclasses.replace(state.config, num_forget_experts=state.config.num_forget_experts + n)
    for _, alin in state.replaced:
        b = alin.lora_B
        grown = torch.zeros((old_e + n,) + tuple(b.shape[1:]), dtype=b.dtype, device=b.device)
        grown[:old_e] = b.detach()
        alin.lora_B = nn.Parameter(grown, requires_grad=b.requires_grad)
        alin.config = cfg
        alin.num_experts = cfg.num_experts
    for r in layer_routers(model).values():
        w = r.weight
        grown = torch.zeros(w.shape[0], old_e + n, dtype=w.dtype, device=w.device)
        grown[:, :old_e] = w.detach()
        r.weight = nn.Parameter(grown, requires_grad=w.requires_grad)
    state.config = cfg
    setattr(state, FROZEN_ATTR, old_e)
    return list(range(old_e, old_e + n))


def freeze_leading_experts(model: nn.Module, n_frozen: int, router: bool = True) -> list:
    """Gradient hooks that zero the gradient of experts [0, n_frozen) in every lora_B and (with
    ``router``) router column (with weight decay 0, Adam then leaves them bit-identical). Returns
    the hook handles."""
    if n_frozen <= 0:
        return []
    state = get_state(model)
    handles = []

    def zero_b(g):
        g = g.clone()
        g[:n_frozen] = 0
        return g

    def zero_cols(g):
        g = g.clone()
        g[:, :n_frozen] = 0
        return g

    for _, alin in state.replaced:
        handles.append(alin.lora_B.register_hook(zero_b))
    for r in layer_routers(model).values() if router else ():
        handles.append(r.weight.register_hook(zero_cols))
    return handles
