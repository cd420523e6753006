"""patch / unpatch: turn a Hugging Face Llama-family model into an ALTER model, and back.

Module instances are swapped, no HF forward is copied: every target ``nn.Linear`` becomes an
:class:`~alter_kernels.model.layer.AlterLinear`, every decoder layer holding one gets a
:class:`~alter_kernels.model.router.LayerRouter` child and a forward pre-hook, and the backbone
gets the hooks of the inference rule and of the prefix-match router.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import AlterConfig
from .inference import InferenceRule, check_model
from .layer import AlterLinear
from .router import LayerRouter
from .plan import layer_pre_hook
from .prefix import backbone_post_hook, backbone_pre_hook
from .state import ROUTER_ATTR, STATE_ATTR, AlterState, PatchError, get_state, is_patched


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


def _guess_hidden_size(layer: nn.Module, lin: nn.Linear) -> int:
    for name in ("input_layernorm", "ln_1", "attention_norm"):
        norm = getattr(layer, name, None)
        if norm is not None and getattr(norm, "weight", None) is not None:
            return norm.weight.shape[0]
    return lin.in_features


def _check_patchable(model: nn.Module, config: AlterConfig, modules: dict) -> list[tuple[str, nn.Linear, str]]:
    """The targets as (path, linear, decoder-layer path), or PatchError before anything changes."""
    if is_patched(model) or any(isinstance(m, AlterLinear) for m in model.modules()):
        raise PatchError("patch: this model is already patched with ALTER; call alter_kernels.unpatch(model) "
                         "before patching it again")
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
    why = check_model(model, config.inference_entropy)
    if why is not None:
        raise PatchError(f"patch: inference_entropy={config.inference_entropy!r} needs the model's next-token "
                         f"entropies, but {why}; patch with AlterConfig(inference_entropy='none') (every token "
                         "high entropy) or pass routing inputs to every forward")
    out = []
    for path, lin in targets:
        layer_path = _find_layer_path(path, modules)
        if layer_path is None:
            raise PatchError(f"patch: target {path!r} is not inside a decoder layer (a child of an "
                             "nn.ModuleList); ALTER routes per decoder layer")
        out.append((path, lin, layer_path))
    return out


def _install_routers(model: nn.Module, state: AlterState, routers: dict[str, LayerRouter], modules: dict) -> None:
    for layer_path, r in routers.items():
        layer = modules[layer_path]
        if hasattr(layer, ROUTER_ATTR):
            raise PatchError(f"patch: decoder layer {layer_path} already has an attribute {ROUTER_ATTR!r}")
        layer.add_module(ROUTER_ATTR, r)
        state.hooks.append(layer.register_forward_pre_hook(layer_pre_hook(r), with_kwargs=True))
        state.routers.append(layer_path)
    if check_model(model, "base") is None:         # the model can give entropies: install the rule
        state.inference = InferenceRule(model, state)
    # the module that owns the decoder layers' ModuleList (the backbone): its forward's 2D attention
    # mask and KV cache feed the prefix-match router (registered after the inference rule's hooks,
    # whose base pass runs first, with the adapters off, and is ignored here)
    owner_path = state.routers[0].rpartition(".")[0].rpartition(".")[0]
    owner = model.get_submodule(owner_path) if owner_path else model
    state.backbone_hooks = [owner.register_forward_pre_hook(backbone_pre_hook(state), with_kwargs=True),
                            owner.register_forward_hook(backbone_post_hook(state), with_kwargs=True)]


def patch(model: nn.Module, config: AlterConfig | None = None) -> nn.Module:
    """Patch ``model`` in place (every target linear becomes an AlterLinear) and return it.

    All base parameters are frozen; only adapters (A, B) and routers (W_g) require grad.
    """
    config = config or AlterConfig()
    if not isinstance(config, AlterConfig):
        raise TypeError(f"patch: config must be an AlterConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch: model must be a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    plan_targets = _check_patchable(model, config, modules)
    hidden_size = getattr(getattr(model, "config", None), "hidden_size", None)
    state = AlterState(config)
    state.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    gen = None
    if config.init_seed is not None:
        gen = torch.Generator(device="cpu").manual_seed(config.init_seed)
    dtype = getattr(torch, config.adapter_dtype)
    routers: dict[str, LayerRouter] = {}
    for p in model.parameters():
        p.requires_grad_(False)
    for path, lin, layer_path in plan_targets:
        if layer_path not in routers:
            size = hidden_size or _guess_hidden_size(modules[layer_path], lin)
            r = LayerRouter(size, config.num_experts, dtype, device=lin.weight.device,
                            router_input=config.router_input, num_keys=config.router_keys,
                            num_answer_keys=config.router_answer_keys)
            r.layer_name = layer_path
            object.__setattr__(r, "_state", state)
            routers[layer_path] = r
        new = AlterLinear(lin, config, routers[layer_path], generator=gen)
        _set_child(model, path, new)
        state.replaced.append((path, new))
    _install_routers(model, state, routers, modules)
    setattr(model, STATE_ATTR, state)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: the original module instances, parameters and requires_grad flags."""
    state = get_state(model)
    for h in state.hooks + state.backbone_hooks:
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
