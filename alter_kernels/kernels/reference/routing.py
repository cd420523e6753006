"""Plain-PyTorch reference of threshold-based entropy routing (ALTER_SPEC section 3).

The routing plan is dense: ``expert_weights`` [N, E] fp32 with zeros for unused experts. E is
small (2..9), so a dense plan is both the simplest format and the one the grouped GEMM of
spec 1 consumes directly ((N, E*r) scaled copies of A x times [B_0 | ... | B_N]).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class RoutingPlan:
    """One decoder layer's routing decisions, shared by all of its patched linears.

    expert_weights  [N, E] fp32  forward mixing weights w_{t,e}
    high            [N] bool     e_t > threshold (the shared-A, multi-expert path)
    a_grad_mask     [N] bool     rows whose gradient may reach A (None: every row)
    b_grad_mask     [N, E] bool  rows whose gradient may reach B_e (None: every row)
    router_logits   [N, E] fp32  h_t W_g (un-tempered), for the router loss and for analysis
    router_loss     scalar       cross-entropy of the router against the labels (None without labels)
    """

    expert_weights: torch.Tensor
    high: torch.Tensor
    a_grad_mask: torch.Tensor | None = None
    b_grad_mask: torch.Tensor | None = None
    router_logits: torch.Tensor | None = None
    router_loss: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.expert_weights.shape[0]

    @property
    def num_experts(self) -> int:
        return self.expert_weights.shape[1]

    def high_fraction(self) -> float:
        """Share of high-entropy tokens (spec 3: watch it, 0 or 1 means theta is off for q)."""
        n = self.high.numel()
        return float(self.high.float().mean()) if n else float("nan")


def route_plan_ref(logits: torch.Tensor, entropy: torch.Tensor, threshold: float = 1.2, tau_high: float = 0.8,
                   tau_low: float = 0.01, top_k: int = 3, labels: torch.Tensor | None = None):
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
              threshold: float = 1.2, tau_high: float = 0.8, tau_low: float = 0.01,
              top_k: int = 3, labels: torch.Tensor | None = None) -> RoutingPlan:
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
