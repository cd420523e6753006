"""Dispatch points of the decode-shaped ops (1..16 tokens per call; alter_kernels.generate).

``decode_route``: expert weights [N, E] fp32 of the inference routing rule (no labels, no masks,
no RoutingPlan) from hidden [N, d], router_weight [d, E] and entropy [N].
``decode_group_linear``: the outputs of a group of patched linears reading the same input x
[N, d_in] (q/k/v, gate/up, ...): weights [W_k: d_out_k x d_in], biases [b_k or None], a_cat
[G*r, d_in] (the members' A stacked), b_t [B^T_k: E x r x d_out_k, pre-scaled by the LoRA
scale], expert_weights [N, E] -> [y_k]. ``decode_linear``: y = x W^T + b of one linear at these
shapes (the LM head of a two-stream step: W read once for 2-4 fp32 rows on the CPU). None is
differentiable: decoding runs without grad.
"""
from __future__ import annotations

import torch

from ..kernels import extension_error, registry
from ._checks import check_same_device, check_shape, check_tensor
from .routing import check_route_scalars

_pick_cache: dict = {}


def _pick(op: str, device: torch.device, dtype: torch.dtype):
    """registry.pick memoised: decode calls these once per layer per token."""
    if torch.compiler.is_compiling():
        return registry.pick(op, device, dtype)
    key = (op, registry.cache_key(), device, dtype)
    impl = _pick_cache.get(key)
    if impl is None:
        impl = _pick_cache[key] = registry.pick(op, device, dtype)
    return impl


def decode_route(hidden: torch.Tensor, router_weight: torch.Tensor, entropy: torch.Tensor, threshold: float,
                 tau_high: float, tau_low: float, top_k: int, check: bool = True) -> torch.Tensor:
    """check=False skips the input checks (the decode loop validated the same tensors once)."""
    if check:
        op = "decode_route"
        check_tensor(hidden, "hidden", op, ndim=2)
        check_tensor(router_weight, "router_weight", op, ndim=2)
        if router_weight.shape[0] != hidden.shape[1] or router_weight.shape[1] < 1:
            raise ValueError(f"{op}: router_weight must be [d, E] with d = hidden.shape[1] = {hidden.shape[1]} "
                             f"and E >= 1, got {tuple(router_weight.shape)}")
        check_tensor(entropy, "entropy", op)
        check_shape(entropy, "entropy", op, (hidden.shape[0],), " ([N])")
        check_same_device(op, hidden=hidden, router_weight=router_weight, entropy=entropy)
        check_route_scalars(threshold, tau_high, tau_low, top_k, op)
    return _pick("decode_route", hidden.device, hidden.dtype).fn(hidden, router_weight, entropy, threshold,
                                                                  tau_high, tau_low, top_k)


def _check_group(x, weights, biases, a_cat, b_t, expert_weights) -> None:
    op = "decode_group_linear"
    check_tensor(x, "x", op, ndim=2)
    check_tensor(a_cat, "a_cat", op, ndim=2)
    check_tensor(expert_weights, "expert_weights", op, ndim=2)
    g = len(weights)
    if g < 1 or len(biases) != g or len(b_t) != g:
        raise ValueError(f"{op}: weights, biases and b_t must be lists of one equal length >= 1, got "
                         f"{len(weights)}, {len(biases)}, {len(b_t)}")
    n, d_in = x.shape
    if a_cat.shape[1] != d_in or a_cat.shape[0] % g:
        raise ValueError(f"{op}: a_cat must be [G*r, d_in] with G = {g}, d_in = {d_in}, got {tuple(a_cat.shape)}")
    r, e = a_cat.shape[0] // g, expert_weights.shape[1]
    check_shape(expert_weights, "expert_weights", op, (n, e), f" ([N, E] with N = {n})")
    for k, (w, b, bt) in enumerate(zip(weights, biases, b_t)):
        check_tensor(w, f"weights[{k}]", op, ndim=2)
        if w.shape[1] != d_in or w.dtype != x.dtype:
            raise ValueError(f"{op}: weights[{k}] must be [d_out, {d_in}] of x's dtype {x.dtype}, "
                             f"got {tuple(w.shape)} {w.dtype}")
        check_shape(bt, f"b_t[{k}]", op, (e, r, w.shape[0]), " ([E, r, d_out])")
        if b is not None:
            check_shape(b, f"biases[{k}]", op, (w.shape[0],), " ([d_out])")


def decode_group_linear(x: torch.Tensor, weights: list, biases: list, a_cat: torch.Tensor, b_t: list,
                        expert_weights: torch.Tensor, check: bool = True) -> list:
    """check=False skips the input checks (the decode loop validated the same tensors once)."""
    if check:
        _check_group(x, weights, biases, a_cat, b_t, expert_weights)
    return _pick("decode_group_linear", x.device, x.dtype).fn(x, weights, biases, a_cat, b_t, expert_weights)


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  check: bool = True) -> torch.Tensor:
    """x [N, d_in] @ weight [d_out, d_in]^T (+ bias [d_out]) -> [N, d_out]."""
    if check:
        op = "decode_linear"
        check_tensor(x, "x", op, ndim=2)
        check_tensor(weight, "weight", op, ndim=2)
        if weight.shape[1] != x.shape[1] or weight.dtype != x.dtype:
            raise ValueError(f"{op}: weight must be [d_out, {x.shape[1]}] of x's dtype {x.dtype}, "
                             f"got {tuple(weight.shape)} {weight.dtype}")
        if bias is not None:
            check_shape(bias, "bias", op, (weight.shape[0],), " ([d_out])")
        check_same_device(op, x=x, weight=weight, bias=bias)
    return _pick("decode_linear", x.device, x.dtype).fn(x, weight, bias)


def decode_linear_kernel(device: torch.device | str, dtype: torch.dtype, compiled: bool | None = None):
    """The compiled ``decode_linear`` for a decode loop (picked once), or None where only the
    reference exists or ``compiled`` is False (the caller then runs the module's own forward)."""
    if compiled is False:
        return None
    impl = registry.pick("decode_linear", torch.device(device), dtype)
    return None if impl.backend == "reference" else impl.fn


def decode_kernels(device: torch.device | str, dtype: torch.dtype, compiled: bool | None = None):
    """The (decode_route, decode_group_linear) implementations for a decode loop, picked once.

    A decode loop calls them per layer per token with tensors it validated once, so it takes the
    registry's choice up front instead of paying for a lookup on every call. compiled: None takes
    the best backend, True requires a compiled one (RuntimeError naming why it is missing), False
    returns (None, None): the caller uses its own pure-PyTorch path.
    """
    if compiled is False:
        return None, None
    device = torch.device(device)
    route_impl = registry.pick("decode_route", device, dtype)
    group_impl = registry.pick("decode_group_linear", device, dtype)
    if route_impl.backend == "reference" or group_impl.backend == "reference":
        if compiled:
            raise RuntimeError("generate: native=True but the extension's decode ops are missing "
                               f"({extension_error() or 'not built with csrc/cpu/asym_lora_decode.cpp'})")
        return None, None
    return route_impl.fn, group_impl.fn
