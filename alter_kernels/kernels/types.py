"""The result types of the ops, shared by every backend: ``RoutingPlan`` (``route``) and
``TokenLosses`` (``lm_head_token_losses``). They hold results only; no rule lives here."""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import torch


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


class TokenLosses(NamedTuple):
    """Per-token losses of ``lm_head_token_losses``: fp32 [N] tensors (float64 for float64 input).
    ``entropy`` is None unless q was given."""
    nll: torch.Tensor
    ihl: torch.Tensor
    entropy: Optional[torch.Tensor]
    lse: torch.Tensor
