"""The one place where the unlearning engine reaches the model layer (patched layers, state,
adapter files, frozen experts); every other engine module imports these names from here.
"""
from __future__ import annotations

from ..model import (adapter_parameters, adapter_state_dict, add_plan_hook, disable_adapters, freeze_leading_experts,
                     frozen_experts, get_state, is_patched, last_plans, layer_routers, patch, router_loss,
                     routing_inputs, save_adapter, token_entropy, token_top)
from ..model.answer_keys import key_experts, key_hits
from ..model.io import CONFIG_NAME, WEIGHTS_NAME

__all__ = ["patch", "is_patched", "get_state", "layer_routers", "adapter_parameters", "adapter_state_dict",
           "add_plan_hook", "disable_adapters", "last_plans", "router_loss", "routing_inputs", "token_entropy", "token_top",
           "key_hits", "key_experts",
           "CONFIG_NAME", "WEIGHTS_NAME", "save_adapter", "freeze_leading_experts", "frozen_experts"]
