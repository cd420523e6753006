"""The adapter's tensors: the trainable parameter groups and the state dict save_adapter writes."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import KEYED_ROUTERS
from .state import ROUTER_ATTR, get_state, layer_routers


def adapter_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable ALTER parameters by group: "A", "B" (all experts) and "router"."""
    state = get_state(model)
    groups = {"A": [], "B": [], "router": []}
    for _, alin in state.replaced:
        groups["A"].append(alin.lora_A)
        groups["B"].append(alin.lora_B)
    groups["router"] = [r.weight for r in layer_routers(model).values()]
    return groups


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors by their path in the patched model (what save_adapter writes)."""
    state = get_state(model)
    out = {}
    for path, alin in state.replaced:
        out[f"{path}.lora_A"] = alin.lora_A
        out[f"{path}.lora_B"] = alin.lora_B
    for layer_path, r in layer_routers(model).items():
        out[f"{layer_path}.{ROUTER_ATTR}.weight"] = r.weight
        if r.router_input in KEYED_ROUTERS:
            out[f"{layer_path}.{ROUTER_ATTR}.keys"] = r.keys
        if r.router_input == "prefix_answer_keys":
            out[f"{layer_path}.{ROUTER_ATTR}.answer_keys"] = r.answer_keys
    return out
