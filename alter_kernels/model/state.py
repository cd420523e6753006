"""Model-level ALTER state and its public API: the routing inputs of the next forward, the plans
of the last one, plan hooks, the decode hook, and accessors for the patched layers and routers.

Routing inputs (token entropies, and domain labels while unlearning) come in through
:func:`set_routing_inputs` / :func:`routing_inputs`. A forward given none routes by the model's
inference rule (``AlterConfig.inference_entropy``, :mod:`alter_kernels.model.inference`).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator, Protocol

import torch
import torch.nn as nn

from ..config import INFERENCE_ENTROPY, AlterConfig
from ..ops.routing import RoutingPlan
from .hf import head_problem

STATE_ATTR = "_alter_state"
ROUTER_ATTR = "alter_router"


class PatchError(ValueError):
    """The model cannot be patched (or unpatched) as asked."""


class DecodeHook(Protocol):
    """A decode-shaped ALTER path (``alter_kernels.generate``'s fast path), installed with
    :func:`install_decode_hook`. While installed:

    - each decoder layer's pre-hook calls ``route_layer(router, hidden)`` instead of leaving the
      hidden states for the generic routing plan (only while the adapters are on);
    - every AlterLinear runs ``linear_forward(alin)(x)`` instead of its generic forward.
    """

    def route_layer(self, router: nn.Module, hidden: torch.Tensor) -> None: ...      # router: a LayerRouter

    def linear_forward(self, alin: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]: ...  # an AlterLinear


class AlterState:
    """Model-level ALTER state: the routing inputs of the next forward and the last plans."""

    def __init__(self, config: AlterConfig):
        self.config = config
        self.entropy: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.auto_entropy: torch.Tensor | None = None         # set by the inference rule for one forward
        # answer-key router (config.router_input == "answer_keys"): the base model's greedy next token
        # at each position, given (base_top, a routing input) or from the inference rule (auto_top)
        self.base_top: torch.Tensor | None = None
        self.auto_top: torch.Tensor | None = None
        self.route_ids: torch.Tensor | None = None           # this forward's input ids (backbone pre-hook)
        self.route_hits: tuple | None = None                # (token shape, answer-key hits) of this forward
        self.inference = None                                # the InferenceRule (model/inference.py)
        self.enabled = True
        self.plans: dict[str, RoutingPlan] = {}
        self.hooks: list = []
        self.backbone_hooks: list = []
        self.plan_hooks: list = []                          # fn(plan, layer_name) -> plan | None
        self.decode_hook: DecodeHook | None = None          # see install_decode_hook
        self.replaced: list[tuple[str, nn.Module]] = []      # (path, AlterLinear)
        self.routers: list[str] = []                         # decoder-layer paths
        self.requires_grad: dict[str, bool] = {}             # original flags of base params
        # prefix-match router (config.router_input == "prefix_match"): the first patched layer's
        # input of this forward, the forward's 2D attention mask and KV cache (from the backbone's
        # pre-hook), and the per-cache running state while decoding
        self.route_h0: torch.Tensor | None = None
        self.route_mask: torch.Tensor | None = None
        self.route_cache = None
        self.route_past: int = 0


def is_patched(model: nn.Module) -> bool:
    return getattr(model, STATE_ATTR, None) is not None


def get_state(model: nn.Module) -> AlterState:
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        raise PatchError("this model is not patched with ALTER; call alter_kernels.patch(model, config) first")
    return state


# --------------------------------------------------------------------------- accessors
def layer_routers(model: nn.Module) -> dict[str, nn.Module]:
    """The LayerRouter of each patched decoder layer, by the layer's path (in layer order)."""
    return {p: model.get_submodule(f"{p}.{ROUTER_ATTR}") for p in get_state(model).routers}


def adapted_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, AlterLinear) of every patched projection, in patch order."""
    return list(get_state(model).replaced)


# --------------------------------------------------------------------------- plan hooks
class _PlanHookHandle:
    def __init__(self, hooks: list, fn):
        self._hooks, self._fn = hooks, fn

    def remove(self) -> None:
        if self._fn in self._hooks:
            self._hooks.remove(self._fn)


def add_plan_hook(model: nn.Module, fn) -> _PlanHookHandle:
    """Call ``fn(plan, layer_name)`` on every routing plan right after it is made; it may edit the
    plan in place or return a replacement. Used by methods that change the routing rules (e.g.
    AsymLoRA opens A's gradient mask to every row). Returns a handle with ``remove()``."""
    state = get_state(model)
    state.plan_hooks.append(fn)
    return _PlanHookHandle(state.plan_hooks, fn)


# --------------------------------------------------------------------------- decode hook
class _DecodeHookHandle:
    def __init__(self, state: AlterState, hook: DecodeHook):
        self._state, self._hook = state, hook

    def remove(self) -> None:
        st = self._state
        if st.decode_hook is not self._hook:
            return
        st.decode_hook = None
        for _, alin in st.replaced:
            alin.set_forward_override(None)


def install_decode_hook(model: nn.Module, hook: DecodeHook) -> _DecodeHookHandle:
    """Install a decode-shaped ALTER path (see :class:`DecodeHook`) until ``handle.remove()``.
    One at a time: a second install before the first is removed is refused."""
    state = get_state(model)
    if state.decode_hook is not None:
        raise RuntimeError("install_decode_hook: a decode hook is already installed on this model")
    state.decode_hook = hook
    handle = _DecodeHookHandle(state, hook)
    try:
        for _, alin in state.replaced:
            alin.set_forward_override(hook.linear_forward(alin))
    except BaseException:
        handle.remove()
        raise
    return handle
# --------------------------------------------------------------------------- routing inputs
def set_routing_inputs(model: nn.Module, entropy: torch.Tensor | None = None,
                       labels: torch.Tensor | None = None, base_top: torch.Tensor | None = None) -> None:
    """Routing inputs for the following forwards of a patched model.

    entropy: [B, T] per-token routing entropies e_t (spec 2: the entropy of the distribution
        that predicted token t, +inf at the first position), or None: every token high.
    labels: [B] per-sample or [B, T] per-token expert ids while unlearning (0 retain, d forget
        domain d, negative: no label), or None at inference. With labels, low-entropy labelled
        tokens are routed by label, the gradient masks of spec 4 apply and each layer's plan
        carries a router loss (see :func:`router_loss`).
    base_top: [B, T] the base model's greedy next token at each position (the answer-key router's
        input, :mod:`alter_kernels.model.answer_keys`), or None: the inference rule computes it.
    """
    state = get_state(model)
    for name, t in (("entropy", entropy), ("labels", labels), ("base_top", base_top)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"set_routing_inputs: {name} must be a tensor or None, got {type(t).__name__}")
    if labels is not None and (labels.dtype.is_floating_point or labels.dtype == torch.bool):
        raise TypeError(f"set_routing_inputs: labels must be an integer tensor, got {labels.dtype}")
    if labels is not None and labels.numel() and int(labels.max()) >= state.config.num_experts:
        raise ValueError(f"set_routing_inputs: label {int(labels.max())} out of range; this adapter has "
                         f"{state.config.num_experts} experts (0 = retain, 1..{state.config.num_forget_experts} forget)")
    if base_top is not None and (base_top.dtype.is_floating_point or base_top.dtype == torch.bool):
        raise TypeError(f"set_routing_inputs: base_top must be an integer tensor, got {base_top.dtype}")
    state.entropy, state.labels, state.base_top = entropy, labels, base_top


def clear_routing_inputs(model: nn.Module) -> None:
    set_routing_inputs(model, None, None)


def set_inference_entropy(model: nn.Module, mode: str) -> None:
    """Change which entropies route a forward without routing inputs: "base", "self" or "none"
    (see :mod:`alter_kernels.model.inference`). Saved with the adapter (it is part of the config)."""
    state = get_state(model)
    if mode not in INFERENCE_ENTROPY:
        raise ValueError(f"set_inference_entropy: got {mode!r}, expected one of "
                         f"{', '.join(map(repr, INFERENCE_ENTROPY))}")
    if mode != "none" and state.inference is None:
        raise PatchError(f"set_inference_entropy: {mode!r} needs the model's next-token entropies, but "
                         f"{head_problem(model)}")
    state.config = dataclasses.replace(state.config, inference_entropy=mode)   # a new value, never an edit
    # (replace re-validates: the answer-key router refuses any mode but "base")


@contextlib.contextmanager
def routing_inputs(model: nn.Module, entropy: torch.Tensor | None = None,
                   labels: torch.Tensor | None = None, base_top: torch.Tensor | None = None) -> Iterator[None]:
    """Context-manager form of :func:`set_routing_inputs`; restores the previous inputs on exit."""
    state = get_state(model)
    prev = (state.entropy, state.labels, state.base_top)
    set_routing_inputs(model, entropy, labels, base_top)
    try:
        yield
    finally:
        state.entropy, state.labels, state.base_top = prev


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[None]:
    """Inside the block the patched model computes exactly the base model (no routing either)."""
    state = get_state(model)
    prev = state.enabled
    state.enabled = False
    try:
        yield
    finally:
        state.enabled = prev


def last_plans(model: nn.Module) -> dict[str, RoutingPlan]:
    """The routing plan of each decoder layer from the last forward."""
    return dict(get_state(model).plans)


def router_loss(model: nn.Module) -> torch.Tensor | None:
    """Mean over layers of the router cross-entropy of the last forward (None without labels)."""
    losses = [p.router_loss for p in get_state(model).plans.values() if p.router_loss is not None]
    return torch.stack(losses).mean() if losses else None


def high_entropy_fraction(model: nn.Module) -> float:
    """Share of high-entropy tokens in the last forward (spec 3: 0 or 1 means theta is off for q)."""
    plans = list(get_state(model).plans.values())
    return plans[0].high_fraction() if plans else float("nan")

