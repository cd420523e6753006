"""Dispatch point of the routing plan ``route`` (ALTER_SPEC section 3)."""
from __future__ import annotations

import math

import torch

from .. import _backend
from ..reference.routing import RoutingPlan, route_ref
from ._checks import check_shape, check_tensor

_backend.register("route", "reference", route_ref, priority=0)


def route_cpp(hidden, router_weight, entropy, threshold=1.2, tau_high=0.8, tau_low=0.01, top_k=3, labels=None):
    """C++ plan kernel. The logits come from one GEMM here; when they carry autograd (training:
    W_g requires grad), the whole plan goes through the differentiable reference instead, so
    expert_weights keeps its gradient path to W_g (router_grad_from_task) exactly as before.
    Decoding (no grad) costs 3 calls instead of ~30. Under torch.compile the (traceable)
    reference is used too."""
    logits = hidden.to(torch.float32) @ router_weight.to(torch.float32)
    if logits.requires_grad or torch.compiler.is_compiling():
        return route_ref(hidden, router_weight, entropy, threshold, tau_high, tau_low, top_k, labels)
    w, high, am, bm = _backend.native_op("route_plan")(logits, entropy, float(threshold), float(tau_high),
                                                      float(tau_low), int(top_k), labels)
    plan = RoutingPlan(expert_weights=w, high=high, a_grad_mask=am, b_grad_mask=bm, router_logits=logits)
    if labels is not None:
        labels = labels.to(device=hidden.device, dtype=torch.long)
        labelled = labels >= 0
        ce = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        plan.router_loss = torch.where(labelled, ce, torch.zeros_like(ce)).sum() / labelled.sum().clamp(min=1)
    return plan


_backend.register("route", "cpp", route_cpp,
                  supports=lambda d: d.type == "cpu" and _backend.native_has_kernel("route_plan", "CPU"),
                  priority={"cpu": 10, "default": -1})

OP = "route"


def _check_scalars(threshold, tau_high, tau_low, top_k) -> None:
    """threshold: a number, +-inf allowed (every token low / high), NaN never; temperatures finite
    > 0; top_k an int >= 0 (0: high-entropy tokens use the retain expert only)."""
    for name, v in (("threshold", threshold), ("tau_high", tau_high), ("tau_low", tau_low)):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise TypeError(f"{OP}: {name} must be a number, got {type(v).__name__}") from None
        if math.isnan(f):
            raise ValueError(f"{OP}: {name} is NaN; expected a number")
        if name != "threshold" and not (math.isfinite(f) and f > 0):
            raise ValueError(f"{OP}: {name} must be a finite number > 0, got {v!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"{OP}: top_k must be an int, got {type(top_k).__name__}")
    if top_k < 0:
        raise ValueError(f"{OP}: top_k must be >= 0 (the number of forget experts mixed into high-entropy "
                         f"tokens), got {top_k}")


def route(hidden: torch.Tensor, router_weight: torch.Tensor, entropy: torch.Tensor,
          threshold: float = 1.2, tau_high: float = 0.8, tau_low: float = 0.01, top_k: int = 3,
          labels: torch.Tensor | None = None) -> RoutingPlan:
    """Routing plan for N tokens: hidden [N, d], router_weight [d, E], entropy [N],
    labels [N] (expert id per token, negative for none) or None. See RoutingPlan."""
    check_tensor(hidden, "hidden", OP, ndim=2)
    check_tensor(router_weight, "router_weight", OP, ndim=2)
    n, d = hidden.shape
    if router_weight.shape[0] != d:
        raise ValueError(f"{OP}: router_weight must be [d, E] with d = hidden.shape[1] = {d}, "
                         f"got {tuple(router_weight.shape)}")
    if router_weight.shape[1] < 1:
        raise ValueError(f"{OP}: router_weight must have at least one expert column, got {tuple(router_weight.shape)}")
    check_tensor(entropy, "entropy", OP)
    check_shape(entropy, "entropy", OP, (n,), " ([N])")
    if labels is not None:
        check_tensor(labels, "labels", OP, float_only=False)
        check_shape(labels, "labels", OP, (n,), " ([N])")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"{OP}: labels must be an integer tensor, got {labels.dtype}")
        e = router_weight.shape[1]
        # a data-dependent check: skipped while torch.compile traces (set_routing_inputs checks too)
        if not torch.compiler.is_compiling() and labels.numel() and int(labels.max()) >= e:
            raise ValueError(f"{OP}: label {int(labels.max())} out of range for {e} experts (0..{e - 1})")
    _check_scalars(threshold, tau_high, tau_low, top_k)
    return _backend.pick(OP, hidden.device).fn(hidden, router_weight, entropy, threshold, tau_high,
                                               tau_low, top_k, labels)
