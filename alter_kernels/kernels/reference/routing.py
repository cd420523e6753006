"""Plain-PyTorch reference of threshold-based entropy routing (ALTER_SPEC section 3).

The routing plan is dense: ``expert_weights`` [N, E] fp32 with zeros for unused experts. E is
small (2..9), so a dense plan is both the simplest format and the one the grouped GEMM of
spec 1 consumes directly ((N, E*r) scaled copies of A x times [B_0 | ... | B_N]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...common.constants import TAU_HIGH, TAU_LOW, THRESHOLD, TOP_K
from ..types import RoutingPlan


def route_plan_ref(logits: torch.Tensor, entropy: torch.Tensor, threshold: float = THRESHOLD, tau_high: float = TAU_HIGH,
                   tau_low: float = TAU_LOW, top_k: int = TOP_K, labels: torch.Tensor | None = None):
    """The routing rule from router logits: the one Python statement of ALTER_SPEC section 3.

    logits [N, E] (un-tempered h W_g), entropy [N] (NaN or +inf count as high), labels [N] long or
    None (expert id per token; negative: none) -> (expert_weights [N, E], high [N] bool,
    a_grad_mask [N] bool or None, b_grad_mask [N, E] bool or None); the masks only with labels.
    High rows: the retain expert with weight 1 plus the top-k forget experts with their gate;
    low rows: one expert, the label where given, else the router's argmax.
    """
    e = logits.shape[1]
    high = ~(entropy <= threshold)                                         # NaN -> high
    tau = torch.where(high, torch.full_like(logits[:, 0], tau_high),
                      torch.full_like(logits[:, 0], tau_low))
    g = torch.softmax(logits / tau[:, None], dim=-1)
    w_high = torch.zeros_like(g)
    w_high[:, 0] = 1.0
    k = min(top_k, e - 1)
    if k > 0:
        top = g[:, 1:].topk(k, dim=-1).indices + 1
        w_high = w_high.scatter(1, top, g.gather(1, top))
    choice = g.argmax(dim=-1)
    labelled = None
    if labels is not None:
        labelled = labels >= 0
        choice = torch.where(labelled, labels, choice)
    weights = torch.where(high[:, None], w_high, F.one_hot(choice, e).to(g.dtype))
    if labels is None:
        return weights, high, None, None
    b_mask = F.one_hot(labels.clamp(min=0), e).bool() & (labelled & ~high)[:, None]
    return weights, high, high.clone(), b_mask


def route_ref(hidden: torch.Tensor, router_weight: torch.Tensor, entropy: torch.Tensor,
              threshold: float = THRESHOLD, tau_high: float = TAU_HIGH, tau_low: float = TAU_LOW,
              top_k: int = TOP_K, labels: torch.Tensor | None = None) -> RoutingPlan:
    """Routing plan for N tokens.

    hidden [N, d], router_weight W_g [d, E], entropy [N] (NaN or +inf count as high),
    labels [N] long or None: expert id per token (0 retain, d forget domain d, negative: none).

    Without labels (inference) the router decides everything and no gradient masks are made.
    With labels (unlearning) low-entropy labelled tokens are routed by their label, the masks
    of spec 4 are built, and ``router_loss`` is the cross-entropy of the un-tempered router
    logits against the labels over every labelled token.
    """
    logits = hidden.to(torch.float32) @ router_weight.to(torch.float32)   # [N, E]
    if labels is not None:
        labels = labels.to(device=hidden.device, dtype=torch.long)
    weights, high, a_mask, b_mask = route_plan_ref(logits, entropy, threshold, tau_high, tau_low, top_k, labels)
    plan = RoutingPlan(expert_weights=weights, high=high, a_grad_mask=a_mask, b_grad_mask=b_mask,
                       router_logits=logits)
    if labels is not None:
        plan.router_loss = router_ce(logits, labels)
    return plan


def router_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the router logits against the labels, mean over labelled tokens (0 when
    there are none; no data-dependent branch: compilable)."""
    labelled = labels >= 0
    ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    return torch.where(labelled, ce, torch.zeros_like(ce)).sum() / labelled.sum().clamp(min=1)
