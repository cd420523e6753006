"""alter_kernels: ALTER (Asymmetric LoRA for Token-Entropy-Guided Unlearning) with custom kernels.

    import alter_kernels as ak
    model = ak.patch(model, ak.AlterConfig(num_forget_experts=2))
"""
from __future__ import annotations

from .kernels import backends, use_backend
from .kernels.native import warn_if_extension_missing as _warn_if_extension_missing
from .config import AlterConfig
from .generation import GatedDecoding, GenerationOutput, gated_decoding, generate, prompt_entropy
from .ops import asym_lora, lm_head_entropy, route, tsallis_entropy
from .ops.lm_head_losses import TokenLosses, lm_head_kl, lm_head_token_losses
from .ops.losses import inverted_hinge_loss, npo_loss, sequence_logprob, token_nll
from .ops.routing import RoutingPlan
from .unlearn import DataError, UnlearnDivergedError, UnlearnError, UnlearnResult, add_forget_experts, finetune, unlearn
from .version import __version__

from .model import (AdapterError, AlterLinear, LayerRouter, ModelNameError, PatchError, add_plan_hook,
                    adapter_parameters, adapter_state_dict, clear_routing_inputs, disable_adapters, get_state,
                    high_entropy_fraction, init_from_peft, is_patched, last_plans, load_adapter, load_pretrained,
                    patch, read_adapter_config, resolve_model, router_loss, routing_inputs, save_adapter,
                    set_inference_entropy, set_routing_inputs, token_entropy, unpatch)  # noqa: E402

_warn_if_extension_missing(lambda: backends('cpu'))

__all__ = [
    "AlterConfig", "AlterLinear", "LayerRouter", "RoutingPlan", "PatchError", "AdapterError",
    "patch", "unpatch", "save_adapter", "load_adapter", "read_adapter_config",
    "tsallis_entropy", "lm_head_entropy", "asym_lora", "route",
    "lm_head_token_losses", "lm_head_kl", "TokenLosses",
    "inverted_hinge_loss", "npo_loss", "sequence_logprob", "token_nll",
    "set_routing_inputs", "routing_inputs", "set_inference_entropy", "clear_routing_inputs", "disable_adapters", "token_entropy",
    "last_plans", "add_plan_hook", "router_loss", "high_entropy_fraction", "adapter_parameters", "adapter_state_dict",
    "get_state", "is_patched", "backends", "use_backend", "init_from_peft",
    "unlearn", "finetune", "UnlearnResult", "add_forget_experts", "UnlearnError", "UnlearnDivergedError", "DataError",
    "generate", "gated_decoding", "GatedDecoding", "GenerationOutput", "prompt_entropy",
    "load_pretrained", "resolve_model", "ModelNameError",
]
