"""The one place where the unlearning engine reaches the model layer (patched layers, state,
adapter files, frozen experts).

TEMPORARY(issue 14): ``alter_kernels.patch`` is shadowed by the function ``ak.patch``, so the
module is fetched by name here, once, for the whole engine. At integration this module becomes
``from ..model import ...`` (docs/refactor_moves/unlearn.md lists every name).
"""
from __future__ import annotations

import importlib

from ..adapter_io import CONFIG_NAME, WEIGHTS_NAME, save_adapter
from .experts import freeze_leading_experts, frozen_experts

_patch = importlib.import_module("alter_kernels.patch")  # the module (ak.patch is the function)

ROUTER_ATTR = _patch.ROUTER_ATTR
patch = _patch.patch
is_patched = _patch.is_patched
get_state = _patch.get_state
adapter_parameters = _patch.adapter_parameters
adapter_state_dict = _patch.adapter_state_dict
add_plan_hook = _patch.add_plan_hook
disable_adapters = _patch.disable_adapters
last_plans = _patch.last_plans
router_loss = _patch.router_loss
routing_inputs = _patch.routing_inputs
token_entropy = _patch.token_entropy

__all__ = ["ROUTER_ATTR", "patch", "is_patched", "get_state", "adapter_parameters", "adapter_state_dict",
           "add_plan_hook", "disable_adapters", "last_plans", "router_loss", "routing_inputs", "token_entropy",
           "CONFIG_NAME", "WEIGHTS_NAME", "save_adapter", "freeze_leading_experts", "frozen_experts"]
