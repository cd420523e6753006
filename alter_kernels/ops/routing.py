"""Dispatch points of the routing ops ``route`` and ``route_plan`` (ALTER_SPEC section 3)."""
from __future__ import annotations

import math

import torch

from ..common.constants import TAU_HIGH, TAU_LOW, THRESHOLD, TOP_K
from ..kernels import registry
from ..kernels.types import RoutingPlan
from ._checks import check_same_device, check_shape, check_tensor

OP = "route"


def check_route_scalars(threshold, tau_high, tau_low, top_k, OP: str = OP) -> None:
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
          threshold: float = THRESHOLD, tau_high: float = TAU_HIGH, tau_low: float = TAU_LOW, top_k: int = TOP_K,
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
        check_labels(labels, router_weight.shape[1], n)
    check_same_device(OP, hidden=hidden, router_weight=router_weight, entropy=entropy, labels=labels)
    check_route_scalars(threshold, tau_high, tau_low, top_k)
    return registry.pick(OP, hidden.device).fn(hidden, router_weight, entropy, threshold, tau_high,
                                               tau_low, top_k, labels)


def check_labels(labels: torch.Tensor, e: int, n: int, OP: str = OP) -> None:
    check_tensor(labels, "labels", OP, float_only=False)
    check_shape(labels, "labels", OP, (n,), " ([N])")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{OP}: labels must be an integer tensor, got {labels.dtype}")
    # a data-dependent check: skipped while torch.compile traces (set_routing_inputs checks too)
    if not torch.compiler.is_compiling() and labels.numel() and int(labels.max()) >= e:
        raise ValueError(f"{OP}: label {int(labels.max())} out of range for {e} experts (0..{e - 1})")


def route_plan(logits: torch.Tensor, entropy: torch.Tensor, threshold: float = THRESHOLD, tau_high: float = TAU_HIGH,
               tau_low: float = TAU_LOW, top_k: int = TOP_K, labels: torch.Tensor | None = None):
    """The routing rule from router logits: logits [N, E] (h W_g, un-tempered), entropy [N],
    labels [N] or None -> (expert_weights [N, E] fp32, high [N] bool, a_grad_mask [N] bool | None,
    b_grad_mask [N, E] bool | None); the masks only with labels. Not differentiable (``route``
    is, through the reference, when W_g requires grad)."""
    op = "route_plan"
    check_tensor(logits, "logits", op, ndim=2)
    n, e = logits.shape
    if e < 1:
        raise ValueError(f"{op}: logits must have at least one expert column, got {tuple(logits.shape)}")
    check_tensor(entropy, "entropy", op)
    check_shape(entropy, "entropy", op, (n,), " ([N])")
    if labels is not None:
        check_labels(labels, e, n, op)
        labels = labels.to(torch.long)
    check_same_device(op, logits=logits, entropy=entropy, labels=labels)
    check_route_scalars(threshold, tau_high, tau_low, top_k, op)
    return registry.pick(op, logits.device).fn(logits.to(torch.float32), entropy.to(torch.float32), float(threshold),
                                               float(tau_high), float(tau_low), int(top_k), labels)
