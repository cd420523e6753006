"""The routing rule of the decode fast path, in Python: one place (ALTER_SPEC section 3).

The same rule as ``route`` with labels=None (``reference.routing.route_ref``): a token whose
entropy is above theta (NaN and +inf included) is high: the retain expert with weight 1 plus the
router's top-k forget experts with their gates at temperature tau_high; a low token goes to the
router's argmax at tau_low. Split in two so the decode loop can compute the per-token part once
per step for every layer, into static tensors (CUDA graphs): :func:`entropy_gate`, then per
layer :func:`expert_weights`. :func:`route_weights` composes them (for tests and one-off use).
"""
from __future__ import annotations

import torch


def entropy_gate(entropy: torch.Tensor, threshold: float, tau_high: torch.Tensor, tau_low: torch.Tensor,
                 out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
    """(high [N, 1] bool, tau [N, 1]) of entropies [N, 1] fp32: high = not (e <= theta).

    tau_high / tau_low: tensors shaped like ``entropy`` holding the two temperatures. out:
    (low, high, tau) tensors to write in place (their addresses stay: CUDA graph replays).
    """
    if out is None:
        high = ~(entropy <= threshold)                                   # NaN / +inf: high
        return high, torch.where(high, tau_high, tau_low)
    low, high, tau = out
    torch.le(entropy, threshold, out=low)
    torch.logical_not(low, out=high)
    torch.where(high, tau_high, tau_low, out=tau)
    return high, tau


def first_expert(num_experts: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(column-0 mask [1, E], a scalar 1): the constants of :func:`expert_weights`, made once."""
    col0 = torch.zeros(1, num_experts, dtype=torch.bool, device=device)
    col0[0, 0] = True
    return col0, torch.ones((), device=device)


def expert_weights(h: torch.Tensor, wg: torch.Tensor, high: torch.Tensor, tau: torch.Tensor, top_k: int,
                   first: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Expert weights [N, E] fp32 of router inputs h [N, d] fp32 under W_g [d, E] fp32.

    high [N, 1] / tau [N, 1] from :func:`entropy_gate`; top_k <= E - 1; first: the constants of
    :func:`first_expert` (made here when None).
    """
    e_count = wg.shape[1]
    g = torch.softmax(torch.mm(h, wg).div_(tau), dim=-1)
    col0, one = first if first is not None else first_expert(e_count, g.device)
    if top_k == e_count - 1:                      # every forget expert joins: no top-k needed
        w_high = torch.where(col0, one, g)
    else:
        w_high = torch.where(col0, one, torch.zeros_like(g))
        if top_k > 0:
            top = g[:, 1:].topk(top_k, dim=-1).indices + 1
            w_high = w_high.scatter_(1, top, g.gather(1, top))
    w_low = torch.zeros_like(g).scatter_(1, g.argmax(dim=-1, keepdim=True), 1.0)
    return torch.where(high, w_high, w_low)


def route_weights(h: torch.Tensor, wg: torch.Tensor, entropy: torch.Tensor, threshold: float,
                  tau_high: float, tau_low: float, top_k: int) -> torch.Tensor:
    """:func:`entropy_gate` then :func:`expert_weights`: the decode path's expert weights for
    hidden [N, d], W_g [d, E] and entropies [N], as ``route_ref(...).expert_weights``."""
    e = entropy.reshape(-1, 1).to(torch.float32)
    high, tau = entropy_gate(e, threshold, torch.full_like(e, tau_high), torch.full_like(e, tau_low))
    return expert_weights(h.to(torch.float32), wg.to(torch.float32), high, tau, min(top_k, wg.shape[1] - 1))
