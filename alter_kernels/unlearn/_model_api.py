"""The one place where the unlearning engine reaches the model layer (patched layers, state,
adapter files, frozen experts); every other engine module imports these names from here.

TEMPORARY(issue 14): the model layer is moving to ``alter_kernels/model/``; at integration the
imports below become ``from ..model... import ...`` (docs/refactor_moves/unlearn.md lists every
name). ``from ..patch import name`` reaches the module even though the package's function
``ak.patch`` shadows the attribute ``alter_kernels.patch``, so no ``import_module`` is needed.
"""
from __future__ import annotations

from ..adapter_io import CONFIG_NAME, WEIGHTS_NAME, save_adapter
from ..patch import (ROUTER_ATTR, adapter_parameters, adapter_state_dict, add_plan_hook, disable_adapters, get_state,
                     is_patched, last_plans, patch, router_loss, routing_inputs, token_entropy)
from .experts import freeze_leading_experts, frozen_experts

__all__ = ["ROUTER_ATTR", "patch", "is_patched", "get_state", "adapter_parameters", "adapter_state_dict",
           "add_plan_hook", "disable_adapters", "last_plans", "router_loss", "routing_inputs", "token_entropy",
           "CONFIG_NAME", "WEIGHTS_NAME", "save_adapter", "freeze_leading_experts", "frozen_experts"]
