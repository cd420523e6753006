"""Routing plans of a patched decoder layer: the layer's pre-hook remembers its input hidden
states; its first AlterLinear makes the plan from them (once per forward, through the dispatched
``route`` op) and every AlterLinear of the layer reads it.
"""
from __future__ import annotations

import math
import torch

from ..ops.routing import RoutingPlan, route
from .answer_keys import answer_key_features, prefix_answer_features
from .prefix import prefix_match_features
from .router import LayerRouter
from .state import AlterState


def layer_pre_hook(router: LayerRouter):
    """Remember the layer's input hidden states; the plan is made on first use.

    The plan is built lazily by the first AlterLinear of the layer, not in this hook, so that
    wrappers whose own pre-hooks run later (FSDP2's unshard of the router weight, for one) have
    run by then.
    """
    st = router.state

    def hook(module, args, kwargs):
        router.plan = None
        router.pending_hidden = None
        if not st.enabled:
            return None
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is None:
            raise RuntimeError(f"ALTER: cannot find the hidden states of decoder layer {router.layer_name}")
        if st.routers and st.routers[0] == router.layer_name:
            st.route_h0 = hidden
        if st.decode_hook is not None:            # a decode-shaped path routes this forward itself
            st.decode_hook.route_layer(router, hidden)
            return None
        router.pending_hidden = hidden
        return None
    return hook


def router_features(router: LayerRouter, hidden: torch.Tensor) -> torch.Tensor:
    """What the router's W_g multiplies: [N, rows of W_g] (see :class:`LayerRouter`)."""
    if router.router_input == "prefix_match":
        return prefix_match_features(router, hidden)
    if router.router_input == "key_tokens":
        return prefix_match_features(router, hidden, running=False)
    if router.router_input == "answer_keys":
        return answer_key_features(router, hidden)
    if router.router_input == "prefix_answer_keys":
        return prefix_answer_features(router, hidden)
    return hidden.reshape(-1, hidden.shape[-1]).detach()


def current_plan(router: LayerRouter) -> RoutingPlan | None:
    """The layer's plan for this forward, made from the remembered hidden states on first use."""
    if router.plan is None and router.pending_hidden is not None:
        state: AlterState = router.state
        router.plan = make_plan(state, router, router.pending_hidden)
        router.pending_hidden = None
        state.plans[router.layer_name] = router.plan
    return router.plan


def _expand_tokens(t: torch.Tensor | None, shape: torch.Size, what: str, fill) -> torch.Tensor | None:
    """Bring a per-sample [B] or per-token [B, T] tensor to the hidden states' token shape [B, T]."""
    if t is None:
        return None
    lead = tuple(shape)
    if tuple(t.shape) == lead:
        return t
    if len(lead) >= 1 and t.dim() == 1 and t.shape[0] == lead[0]:
        return t.view(-1, *([1] * (len(lead) - 1))).expand(lead)
    raise RuntimeError(f"ALTER: routing input {what} has shape {tuple(t.shape)}, but this forward's tokens are "
                       f"{lead}; expected {lead} (per token) or ({lead[0]},) (per sample)")


def make_plan(state: AlterState, router: LayerRouter, hidden: torch.Tensor) -> RoutingPlan:
    cfg = state.config
    lead = hidden.shape[:-1]
    h = router_features(router, hidden)                        # detached: the router learns from its own loss only
    n = h.shape[0]
    ent = _expand_tokens(state.entropy if state.entropy is not None else state.auto_entropy, lead, "entropy",
                         math.inf)
    if ent is None:
        ent = torch.full((n,), math.inf, device=h.device)
    ent = ent.reshape(-1).to(device=h.device, dtype=torch.float32)
    labels = _expand_tokens(state.labels, lead, "labels", -1)
    if labels is not None:
        labels = labels.reshape(-1).to(h.device)
    plan = route(h, router.weight, ent, cfg.threshold, cfg.tau_high, cfg.tau_low, cfg.top_k, labels)
    if not cfg.router_grad_from_task:
        plan.expert_weights = plan.expert_weights.detach()
    for fn in state.plan_hooks:
        plan = fn(plan, router.layer_name) or plan
    return plan


