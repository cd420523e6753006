"""The model layer: an ALTER-patched Hugging Face model.

    layer.py      AlterLinear (a patched projection)
    router.py     LayerRouter (W_g of a decoder layer and its current plan)
    state.py      AlterState, routing inputs, plan hooks, the decode hook, accessors
    plan.py       the routing plan of each decoder layer (pre-hook, make_plan)
    prefix.py     the prefix-match router's features and per-cache state
    inject.py     patch / unpatch
    hf.py         the parts of an HF causal LM ALTER needs (backbone, LM head, positions)
    inference.py  the inference rule: routing entropies when a forward is given none
    entropy.py    token_entropy (base-model routing entropies of a batch), token_top (its greedy tokens)
    answer_keys.py the answer-key router's features (what the base model is about to state)
    params.py     adapter_parameters, adapter_state_dict
    io.py         save_adapter / load_adapter
    peft.py       init_from_peft
    experts.py    add_forget_experts (sequential unlearning)
    load.py       models by name: resolve_model, load_pretrained (GGUF files and packaged aliases converted once)

Imports only from the layers below (config, version, ops).
"""
from .entropy import token_entropy, token_top
from .experts import add_forget_experts, freeze_leading_experts, frozen_experts
from .inject import patch, unpatch
from .io import AdapterError, load_adapter, read_adapter_config, save_adapter
from .layer import AlterLinear
from .load import ALIASES, ModelNameError, load_pretrained, resolve_model
from .params import adapter_parameters, adapter_state_dict
from .peft import init_from_peft
from .router import LayerRouter
from .state import (AlterState, DecodeHook, PatchError, adapted_linears, add_plan_hook, clear_routing_inputs,
                    disable_adapters, get_state, high_entropy_fraction, install_decode_hook, is_patched,
                    last_plans, layer_routers, router_loss, routing_inputs, set_inference_entropy,
                    set_routing_inputs)

__all__ = [
    "AlterLinear", "LayerRouter", "AlterState", "PatchError", "AdapterError", "DecodeHook",
    "patch", "unpatch", "get_state", "is_patched", "layer_routers", "adapted_linears",
    "set_routing_inputs", "routing_inputs", "clear_routing_inputs", "set_inference_entropy", "disable_adapters",
    "last_plans", "router_loss", "high_entropy_fraction", "add_plan_hook", "install_decode_hook",
    "adapter_parameters", "adapter_state_dict", "token_entropy", "token_top",
    "save_adapter", "load_adapter", "read_adapter_config", "init_from_peft",
    "add_forget_experts", "frozen_experts", "freeze_leading_experts",
    "resolve_model", "load_pretrained", "ModelNameError", "ALIASES",
]
