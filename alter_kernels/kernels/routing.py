"""Compiled backends of the routing ops: ``route`` (plan for a forward), ``route_plan`` (the rule
from router logits), and the decode-shaped ``decode_route`` / ``decode_group_linear``.

The C++ kernels share one per-token rule (csrc/cpu/route_rule.h); the Python statement of the
rule is ``reference/routing.py::route_plan_ref``.
"""
from __future__ import annotations

import torch

from ..common.constants import TAU_HIGH, TAU_LOW, THRESHOLD, TOP_K
from .native import native_op
from .reference.routing import route_ref, router_ce
from .types import RoutingPlan


def route_plan_native(logits, entropy, threshold, tau_high, tau_low, top_k, labels=None):
    w, high, am, bm = native_op("route_plan")(logits, entropy, float(threshold), float(tau_high),
                                              float(tau_low), int(top_k), labels)
    return w, high, am, bm


def route_native(hidden, router_weight, entropy, threshold=THRESHOLD, tau_high=TAU_HIGH, tau_low=TAU_LOW, top_k=TOP_K, labels=None):
    """C++ plan kernel. The logits come from one GEMM here; when they carry autograd (training:
    W_g requires grad), the whole plan goes through the differentiable reference instead, so
    expert_weights keeps its gradient path to W_g (router_grad_from_task) exactly as before.
    Decoding (no grad) costs 3 calls instead of ~30. Under torch.compile the (traceable)
    reference is used too."""
    logits = hidden.to(torch.float32) @ router_weight.to(torch.float32)
    if logits.requires_grad or torch.compiler.is_compiling():
        return route_ref(hidden, router_weight, entropy, threshold, tau_high, tau_low, top_k, labels)
    w, high, am, bm = route_plan_native(logits, entropy, threshold, tau_high, tau_low, top_k, labels)
    plan = RoutingPlan(expert_weights=w, high=high, a_grad_mask=am, b_grad_mask=bm, router_logits=logits)
    if labels is not None:
        plan.router_loss = router_ce(logits, labels.to(device=hidden.device, dtype=torch.long))
    return plan


_handles: dict = {}


def _overload(name: str):
    """The op's default overload, looked up once (decode calls these per layer per token, and a
    torch.ops attribute lookup costs microseconds)."""
    h = _handles.get(name)
    if h is None:
        h = _handles[name] = native_op(name).default
    return h


def decode_route_native(hidden, router_weight, entropy, threshold, tau_high, tau_low, top_k):
    return _overload("decode_route")(hidden, router_weight, entropy, float(threshold), float(tau_high),
                                     float(tau_low), int(top_k))


def decode_group_linear_native(x, weights, biases, a_cat, b_t, expert_weights):
    return _overload("decode_group_linear")(x, weights, biases, a_cat, b_t, expert_weights)


def decode_linear_native(x, weight, bias=None):
    return _overload("decode_linear")(x, weight, bias, False)
