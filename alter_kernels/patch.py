"""Patch layer: turns a Hugging Face Llama-family model into an ALTER model, and back.

Module instances are swapped, no HF forward is copied:

- every target ``nn.Linear`` is replaced by an :class:`AlterLinear` that keeps the original
  instance as ``base_layer`` and adds the shared ``lora_A`` [r, d_in] and the experts
  ``lora_B`` [E, d_out, r] (expert 0 = retain, 1..N = forget);
- every decoder layer that holds a target gets a :class:`LayerRouter` child ``alter_router``
  (W_g, [d_model, E]) and a forward pre-hook that remembers the layer's input hidden states;
  the layer's first AlterLinear makes the routing plan from them (once per forward) and all the
  layer's AlterLinears read that plan.

Routing inputs (token entropies, and domain labels while unlearning) come in through
:func:`set_routing_inputs` / :func:`routing_inputs`. A forward given none routes by the model's
inference rule (``AlterConfig.inference_entropy``, :mod:`alter_kernels.inference`): by default the
base model's entropies, computed by the model itself, in every forward and decoding path.
:func:`token_entropy` computes the same entropies for a whole batch with one base-model pass.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn as nn

from .config import INFERENCE_ENTROPY, AlterConfig
from .hf import backbone_of, lm_head_of, position_ids_from_mask
from .inference import InferenceRule, attach_cache_state, check_model, routing_from_next
from .ops.asym_lora import asym_lora
from .ops.entropy import lm_head_entropy
from .ops.routing import route
from .reference.routing import RoutingPlan

STATE_ATTR = "_alter_state"
ROUTER_ATTR = "alter_router"


class PatchError(ValueError):
    """The model cannot be patched (or unpatched) as asked."""


class AlterState:
    """Model-level ALTER state: the routing inputs of the next forward and the last plans."""

    def __init__(self, config: AlterConfig):
        self.config = config
        self.entropy: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.auto_entropy: torch.Tensor | None = None         # set by the inference rule for one forward
        self.inference = None                                # the InferenceRule (alter_kernels.inference)
        self.enabled = True
        self.plans: dict[str, RoutingPlan] = {}
        self.hooks: list = []
        self.plan_hooks: list = []                          # fn(plan, layer_name) -> plan | None
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


class LayerRouter(nn.Module):
    """W_g of one decoder layer, and that layer's current routing plan.

    router_input "token": W_g [d_model, E] reads the layer's own input h_t.
    router_input "prefix_match": W_g [K + 1, E] reads the features of :func:`prefix_match_features`
    (K key matches of the prefix, then a constant 1: the last row is a bias); ``keys`` [K, d_model]
    holds the unit-norm keys (a buffer: W_g is the only trained router tensor).
    """

    def __init__(self, hidden_size: int, num_experts: int, dtype: torch.dtype, device=None,
                 router_input: str = "token", num_keys: int = 0):
        super().__init__()
        self.router_input = router_input
        rows = hidden_size if router_input == "token" else num_keys + 1
        # zeros: every expert ties, so low-entropy tokens go to the retain expert (argmax picks
        # the first) until the router is initialised (spec 6) or trained.
        self.weight = nn.Parameter(torch.zeros(rows, num_experts, dtype=dtype, device=device))
        if router_input == "prefix_match":
            self.register_buffer("keys", torch.zeros(num_keys, hidden_size, dtype=dtype, device=device))
        self.plan: RoutingPlan | None = None
        self.pending_hidden: torch.Tensor | None = None
        self.layer_name = ""

    def extra_repr(self) -> str:
        if self.router_input == "token":
            return f"hidden_size={self.weight.shape[0]}, num_experts={self.weight.shape[1]}"
        return f"prefix_match, keys={self.keys.shape[0]}, num_experts={self.weight.shape[1]}"


class AlterLinear(nn.Module):
    """y = W0 x (+ b) + s * sum_e w_{t,e} B_e (A x) with the layer's routing plan (spec 1)."""

    def __init__(self, base_layer: nn.Linear, config: AlterConfig, router: LayerRouter | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise PatchError(f"AlterLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.config = config
        self.rank = config.rank
        self.scale = config.scale
        self.num_experts = config.num_experts
        dtype = getattr(torch, config.adapter_dtype)
        dev = base_layer.weight.device
        # LoRA's init: Kaiming-uniform A (as nn.Linear), zero B, so a fresh patch changes nothing.
        # A is drawn on the CPU so that a seeded generator gives the same A on every device.
        a = torch.empty(config.rank, base_layer.in_features, dtype=dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(dev))
        self.lora_B = nn.Parameter(torch.zeros(config.num_experts, base_layer.out_features, config.rank,
                                               dtype=dtype, device=dev))
        object.__setattr__(self, "_router", router)  # a reference, not a child module

    # nn.Linear look-alike, for code that inspects the projection
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def extra_repr(self) -> str:
        return f"rank={self.rank}, experts={self.num_experts}, scale={self.scale:g}"

    def forward(self, x: torch.Tensor, plan: RoutingPlan | None = None) -> torch.Tensor:
        router = self._router
        state = getattr(router, "_state", None) if router is not None else None
        if state is not None and not state.enabled:
            return self.base_layer(x)
        if plan is None:
            plan = current_plan(router) if router is not None else None
        if plan is None:
            raise RuntimeError(
                "AlterLinear: no routing plan. It is made by the decoder layer's pre-hook; call the "
                "patched model (or its decoder layer), or pass plan= explicitly.")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] != plan.num_tokens:
            raise RuntimeError(f"AlterLinear {getattr(router, 'layer_name', '')}: input has {x2.shape[0]} tokens "
                               f"but the layer's routing plan has {plan.num_tokens}")
        y = asym_lora(x2, self.base_layer.weight, self.lora_A, self.lora_B, plan.expert_weights, self.scale,
                      plan.a_grad_mask, plan.b_grad_mask, self.base_layer.bias)
        return y.reshape(*lead, y.shape[-1])


# --------------------------------------------------------------------------- routing hook
def _layer_pre_hook(router: LayerRouter):
    """Remember the layer's input hidden states; the plan is made on first use.

    The plan is built lazily by the first AlterLinear of the layer, not in this hook, so that
    wrappers whose own pre-hooks run later (FSDP2's unshard of the router weight, for one) have
    run by then.
    """
    def hook(module, args, kwargs):
        router.plan = None
        router.pending_hidden = None
        if not router._state.enabled:
            return None
        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is None:
            raise RuntimeError(f"ALTER: cannot find the hidden states of decoder layer {router.layer_name}")
        router.pending_hidden = hidden
        st = router._state
        if st.routers and st.routers[0] == router.layer_name:
            st.route_h0 = hidden
        return None
    return hook


def _backbone_pre_hook(state: AlterState):
    """Remember the forward's 2D attention mask and KV cache (prefix-match router: which tokens are
    real, and where the running prefix state of incremental decoding lives)."""
    def hook(module, args, kwargs):
        if not state.enabled:                   # a base-model pass (adapters off): not routed
            return None
        att = kwargs.get("attention_mask")
        state.route_mask = att if isinstance(att, torch.Tensor) and att.dim() == 2 else None
        cache = kwargs.get("past_key_values", None)
        if cache is None:
            cache = kwargs.get("cache", None)
        state.route_cache = cache if kwargs.get("use_cache", True) is not False or cache is not None else None
        past = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            try:
                past = int(cache.get_seq_length())
            except Exception:                   # noqa: BLE001 - caches that cannot tell: no history
                past = 0
        state.route_past = past
        return None
    return hook


def _backbone_post_hook(state: AlterState):
    def hook(module, args, kwargs, out):
        if not state.enabled:
            return None
        # h0 and the mask stay: gradient checkpointing re-runs the layers after this forward
        state.route_cache = None
        state.route_past = 0
        return None
    return hook


PREFIX_STATE_ATTR = "_alter_prefix_state"


class PrefixRouterState:
    """Per-cache state of the prefix-match routers while decoding: for each decoder layer, the
    running key matches of every row at every cached position ([B, L, K]); the last position
    continues the prefix, ``reorder`` follows beam search and ``crop`` follows the cache.
    Attached to the HF cache object (``cache._alter_prefix_state``)."""

    def __init__(self):
        self.hist: dict[str, torch.Tensor] = {}

    def last(self, layer: str) -> torch.Tensor | None:
        h = self.hist.get(layer)
        return None if h is None or h.shape[1] == 0 else h[:, -1]

    def append(self, layer: str, m: torch.Tensor, past: int) -> None:
        h = self.hist.get(layer)
        if h is None or past == 0:
            self.hist[layer] = m
        else:
            self.hist[layer] = torch.cat([_tile_rows(h[:, :past], m.shape[0]), m], 1)

    # mirrors of the cache's own operations (beam search, assisted decoding, contrastive search),
    # with the same semantics as the inference rule's EntropyStream beside it
    def reorder_cache(self, cache, beam_idx) -> None:
        for k, h in self.hist.items():
            self.hist[k] = h.index_select(0, beam_idx.to(h.device))

    def crop(self, cache, *args, **kwargs) -> None:
        keep = int(cache.get_seq_length())
        for k, h in self.hist.items():
            self.hist[k] = h[:, :keep]

    def batch_repeat_interleave(self, cache, repeats) -> None:
        for k, h in self.hist.items():
            self.hist[k] = h.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, cache, indices) -> None:
        for k, h in self.hist.items():
            self.hist[k] = h[indices]


def _tile_rows(t: torch.Tensor, b: int) -> torch.Tensor:
    """ak.generate's fast path decodes the base stream as extra batch rows after the adapted ones
    (the same sequences): a state of B rows continues a batch of k*B rows by tiling."""
    if t.shape[0] == b or t.shape[0] == 0 or b % t.shape[0]:
        return t
    return t.repeat(b // t.shape[0], *([1] * (t.dim() - 1)))


def prefix_state(cache, create: bool = True) -> PrefixRouterState | None:
    """The prefix-router state attached to an HF cache object (``cache._alter_prefix_state``),
    made on first use; the cache's reorder / crop / batch operations are mirrored on it."""
    st = getattr(cache, PREFIX_STATE_ATTR, None)
    if st is None and create:
        st = PrefixRouterState()
        try:
            attach_cache_state(cache, PREFIX_STATE_ATTR, st)
        except (AttributeError, TypeError):
            return None
    return st


def prefix_match_features(router: LayerRouter, hidden: torch.Tensor) -> torch.Tensor:
    """Router features of the prefix-match router: [N, K + 1] fp32 for the N tokens of ``hidden``.

    f_{t,k} = max_{s <= t, s real} relu(cos(x_s, key_k) - m) / (1 - m), x_s the first patched
    decoder layer's input at token s (for Llama: the token embedding), m = config.router_match;
    then a constant 1 (the bias row of W_g). Causal: token t depends on tokens <= t only; padding
    (attention mask 0) never matches; while decoding with a KV cache, the running maximum of the
    cached tokens is carried in the cache's :class:`PrefixRouterState`.
    """
    state: AlterState = router._state
    lead = hidden.shape[:-1]
    h0 = state.route_h0
    if h0 is None or tuple(h0.shape[:-1]) != tuple(lead):
        h0 = hidden
    keys = router.keys
    if h0.dim() == 2:
        h0 = h0.unsqueeze(0)
    b, t = h0.shape[0], h0.shape[1]
    x = h0.detach().to(torch.float32)
    x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    m_cos = float(state.config.router_match)
    a = torch.relu(x @ keys.detach().to(torch.float32).t() - m_cos) / (1.0 - m_cos)     # [B, T, K]
    mask = state.route_mask
    if mask is not None and mask.shape[0] == b and mask.shape[1] >= t:
        a = a * mask[:, -t:].to(a.dtype).unsqueeze(-1)
    if keys.shape[0] > 0 and t > 0:
        a = torch.cummax(a, dim=1).values
    cache = state.route_cache
    if cache is not None and keys.shape[0] > 0:
        ps = prefix_state(cache)
        if ps is not None:
            prev = ps.last(router.layer_name) if state.route_past > 0 else None
            if prev is not None:
                prev = _tile_rows(prev, b)
            if prev is not None and prev.shape[0] == b:
                a = torch.maximum(a, prev.unsqueeze(1).to(a.dtype))
            ps.append(router.layer_name, a.detach(), state.route_past)
    feats = torch.cat([a, torch.ones(*a.shape[:-1], 1, dtype=a.dtype, device=a.device)], -1)
    return feats.reshape(-1, feats.shape[-1])


def router_features(router: LayerRouter, hidden: torch.Tensor) -> torch.Tensor:
    """What the router's W_g multiplies: [N, rows of W_g] (see :class:`LayerRouter`)."""
    if router.router_input == "prefix_match":
        return prefix_match_features(router, hidden)
    return hidden.reshape(-1, hidden.shape[-1]).detach()


def current_plan(router: LayerRouter) -> RoutingPlan | None:
    """The layer's plan for this forward, made from the remembered hidden states on first use."""
    if router.plan is None and router.pending_hidden is not None:
        state: AlterState = router._state
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


# --------------------------------------------------------------------------- patch / unpatch
def _find_layer_path(path: str, modules: dict[str, nn.Module]) -> str | None:
    """Nearest ancestor of ``path`` whose parent is an nn.ModuleList: the decoder layer."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i - 1])
        if parts[i - 1].isdigit() and isinstance(modules.get(parent, None), nn.ModuleList):
            return ".".join(parts[:i])
    return None


def _set_child(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def is_patched(model: nn.Module) -> bool:
    return getattr(model, STATE_ATTR, None) is not None


def get_state(model: nn.Module) -> AlterState:
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        raise PatchError("this model is not patched with ALTER; call alter_kernels.patch(model, config) first")
    return state


def patch(model: nn.Module, config: AlterConfig | None = None) -> nn.Module:
    """Patch ``model`` in place (every target linear becomes an AlterLinear) and return it.

    All base parameters are frozen; only adapters (A, B) and routers (W_g) require grad.
    """
    config = config or AlterConfig()
    if not isinstance(config, AlterConfig):
        raise TypeError(f"patch: config must be an AlterConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch: model must be a torch.nn.Module, got {type(model).__name__}")
    if is_patched(model) or any(isinstance(m, AlterLinear) for m in model.modules()):
        raise PatchError("patch: this model is already patched with ALTER; call alter_kernels.unpatch(model) "
                         "before patching it again")
    modules = dict(model.named_modules())
    targets = [(p, m) for p, m in modules.items()
               if p.rpartition(".")[2] in config.target_modules and isinstance(m, nn.Linear)]
    if not targets:
        found = sorted({p.rpartition(".")[2] for p, m in modules.items() if isinstance(m, nn.Linear)})
        raise PatchError(f"patch: none of the target modules {list(config.target_modules)} is an nn.Linear in "
                         f"{type(model).__name__}; its linear layers are named {found}")
    misses = [p for p, m in modules.items() if p.rpartition(".")[2] in config.target_modules
              and not isinstance(m, nn.Linear)]
    if misses:
        raise PatchError(f"patch: target module(s) {misses[:4]} are {type(modules[misses[0]]).__name__}, "
                         "expected nn.Linear (quantised or fused layers are not supported)")
    # a rank above min(d_in, d_out) adds no capacity; refuse it before allocating anything
    max_rank = min(min(m.in_features, m.out_features) for _, m in targets)
    if config.rank > max_rank:
        p, m = min(targets, key=lambda t: min(t[1].in_features, t[1].out_features))
        err = PatchError(f"patch: rank {config.rank} is too large: expected rank <= {max_rank}, the smallest "
                         f"min(d_in, d_out) of the target linears ({p!r} is [{m.out_features}, {m.in_features}])")
        err.field = "rank"
        raise err
    hidden_size = getattr(getattr(model, "config", None), "hidden_size", None)
    why = check_model(model, config.inference_entropy)
    if why is not None:
        raise PatchError(f"patch: inference_entropy={config.inference_entropy!r} needs the model's next-token "
                         f"entropies, but {why}; patch with AlterConfig(inference_entropy='none') (every token "
                         "high entropy) or pass routing inputs to every forward")

    state = AlterState(config)
    state.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    gen = None
    if config.init_seed is not None:
        gen = torch.Generator(device="cpu").manual_seed(config.init_seed)
    dtype = getattr(torch, config.adapter_dtype)

    routers: dict[str, LayerRouter] = {}
    plan_targets = []
    for path, lin in targets:
        layer_path = _find_layer_path(path, modules)
        if layer_path is None:
            raise PatchError(f"patch: target {path!r} is not inside a decoder layer (a child of an "
                             "nn.ModuleList); ALTER routes per decoder layer")
        plan_targets.append((path, lin, layer_path))
    for p in model.parameters():
        p.requires_grad_(False)
    for path, lin, layer_path in plan_targets:
        if layer_path not in routers:
            layer = modules[layer_path]
            size = hidden_size or _guess_hidden_size(layer, lin)
            r = LayerRouter(size, config.num_experts, dtype, device=lin.weight.device,
                            router_input=config.router_input, num_keys=config.router_keys)
            r.layer_name = layer_path
            object.__setattr__(r, "_state", state)
            routers[layer_path] = r
        new = AlterLinear(lin, config, routers[layer_path], generator=gen)
        _set_child(model, path, new)
        state.replaced.append((path, new))
    for layer_path, r in routers.items():
        layer = modules[layer_path]
        if hasattr(layer, ROUTER_ATTR):
            raise PatchError(f"patch: decoder layer {layer_path} already has an attribute {ROUTER_ATTR!r}")
        layer.add_module(ROUTER_ATTR, r)
        state.hooks.append(layer.register_forward_pre_hook(_layer_pre_hook(r), with_kwargs=True))
        state.routers.append(layer_path)
    if check_model(model, "base") is None:         # the model can give entropies: install the rule
        state.inference = InferenceRule(model, state)
    # the module that owns the decoder layers' ModuleList (the backbone): its forward's 2D attention
    # mask and KV cache feed the prefix-match router (registered after the inference rule's hooks,
    # whose base pass runs first, with the adapters off, and is ignored here)
    first = state.routers[0]
    owner_path = first.rpartition(".")[0].rpartition(".")[0]
    owner = model.get_submodule(owner_path) if owner_path else model
    state.backbone_hooks = [owner.register_forward_pre_hook(_backbone_pre_hook(state), with_kwargs=True),
                            owner.register_forward_hook(_backbone_post_hook(state), with_kwargs=True)]
    setattr(model, STATE_ATTR, state)
    return model


def _guess_hidden_size(layer: nn.Module, lin: nn.Linear) -> int:
    for name in ("input_layernorm", "ln_1", "attention_norm"):
        norm = getattr(layer, name, None)
        if norm is not None and getattr(norm, "weight", None) is not None:
            return norm.weight.shape[0]
    return lin.in_features


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: the original module instances, parameters and requires_grad flags."""
    state = get_state(model)
    for h in state.hooks + getattr(state, "backbone_hooks", []):
        h.remove()
    if state.inference is not None:
        state.inference.remove()
    for path, alin in state.replaced:
        _set_child(model, path, alin.base_layer)
    for layer_path in state.routers:
        delattr(model.get_submodule(layer_path), ROUTER_ATTR)
    delattr(model, STATE_ATTR)
    for n, p in model.named_parameters():
        if n in state.requires_grad:
            p.requires_grad_(state.requires_grad[n])
    return model


# --------------------------------------------------------------------------- routing inputs
def set_routing_inputs(model: nn.Module, entropy: torch.Tensor | None = None,
                       labels: torch.Tensor | None = None) -> None:
    """Routing inputs for the following forwards of a patched model.

    entropy: [B, T] per-token routing entropies e_t (spec 2: the entropy of the distribution
        that predicted token t, +inf at the first position), or None: every token high.
    labels: [B] per-sample or [B, T] per-token expert ids while unlearning (0 retain, d forget
        domain d, negative: no label), or None at inference. With labels, low-entropy labelled
        tokens are routed by label, the gradient masks of spec 4 apply and each layer's plan
        carries a router loss (see :func:`router_loss`).
    """
    state = get_state(model)
    for name, t in (("entropy", entropy), ("labels", labels)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"set_routing_inputs: {name} must be a tensor or None, got {type(t).__name__}")
    if labels is not None and (labels.dtype.is_floating_point or labels.dtype == torch.bool):
        raise TypeError(f"set_routing_inputs: labels must be an integer tensor, got {labels.dtype}")
    if labels is not None and labels.numel() and int(labels.max()) >= state.config.num_experts:
        raise ValueError(f"set_routing_inputs: label {int(labels.max())} out of range; this adapter has "
                         f"{state.config.num_experts} experts (0 = retain, 1..{state.config.num_forget_experts} forget)")
    state.entropy, state.labels = entropy, labels


def clear_routing_inputs(model: nn.Module) -> None:
    set_routing_inputs(model, None, None)


def set_inference_entropy(model: nn.Module, mode: str) -> None:
    """Change which entropies route a forward without routing inputs: "base", "self" or "none"
    (see :mod:`alter_kernels.inference`). Saved with the adapter (it is part of the config)."""
    state = get_state(model)
    if mode not in INFERENCE_ENTROPY:
        raise ValueError(f"set_inference_entropy: got {mode!r}, expected one of "
                         f"{', '.join(map(repr, INFERENCE_ENTROPY))}")
    if mode != "none" and state.inference is None:
        from .hf import head_problem
        raise PatchError(f"set_inference_entropy: {mode!r} needs the model's next-token entropies, but "
                         f"{head_problem(model)}")
    state.config.inference_entropy = mode


@contextlib.contextmanager
def routing_inputs(model: nn.Module, entropy: torch.Tensor | None = None,
                   labels: torch.Tensor | None = None) -> Iterator[None]:
    """Context-manager form of :func:`set_routing_inputs`; restores the previous inputs on exit."""
    state = get_state(model)
    prev = (state.entropy, state.labels)
    set_routing_inputs(model, entropy, labels)
    try:
        yield
    finally:
        state.entropy, state.labels = prev


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


def adapter_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable ALTER parameters by group: "A", "B" (all experts) and "router"."""
    state = get_state(model)
    groups = {"A": [], "B": [], "router": []}
    for _, alin in state.replaced:
        groups["A"].append(alin.lora_A)
        groups["B"].append(alin.lora_B)
    for layer_path in state.routers:
        groups["router"].append(model.get_submodule(layer_path).get_submodule(ROUTER_ATTR).weight)
    return groups


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors by their path in the patched model (what save_adapter writes)."""
    state = get_state(model)
    out = {}
    for path, alin in state.replaced:
        out[f"{path}.lora_A"] = alin.lora_A
        out[f"{path}.lora_B"] = alin.lora_B
    for layer_path in state.routers:
        r = model.get_submodule(f"{layer_path}.{ROUTER_ATTR}")
        out[f"{layer_path}.{ROUTER_ATTR}.weight"] = r.weight
        if r.router_input == "prefix_match":
            out[f"{layer_path}.{ROUTER_ATTR}.keys"] = r.keys
    return out


# --------------------------------------------------------------------------- base-model entropies
@torch.no_grad()
def token_entropy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  q: float | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Routing entropies e [B, T] from the base model (adapters off), spec 2.

    e[:, t] = S_q(softmax(z_{t-1})): the entropy of the distribution that predicted token t,
    from the final hidden states and the LM head through ``lm_head_entropy`` (no [B, T, V]
    logits kept). Positions with no real predecessor (the first, and left padding) get +inf.
    Positions are counted over real tokens (``position_ids``, by default from
    ``attention_mask``), so a left-padded row gets the entropies of the row alone.
    """
    q = get_state(model).config.q_route if (q is None and is_patched(model)) else (1.5 if q is None else q)
    backbone = backbone_of(model)
    head = lm_head_of(model)
    if attention_mask is not None and position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    ctx = disable_adapters(model) if is_patched(model) else contextlib.nullcontext()
    with ctx:
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
    ent = lm_head_entropy(hidden, head.weight, q=q, bias=getattr(head, "bias", None))   # [B, T]
    return routing_from_next(ent, attention_mask)
