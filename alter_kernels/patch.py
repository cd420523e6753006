"""Old path of the patch layer, now alter_kernels/model/ (issue 14)."""
# SHIM(issue 14): removed at integration
from .model.entropy import token_entropy  # noqa: F401
from .model.hf import backbone_of, lm_head_of, position_ids_from_mask  # noqa: F401
from .model.inference import InferenceRule, attach_cache_state, check_model, routing_from_next  # noqa: F401
from .model.inject import _find_layer_path, _guess_hidden_size, _set_child, patch, unpatch  # noqa: F401
from .model.layer import AlterLinear  # noqa: F401
from .model.router import LayerRouter  # noqa: F401
from .model.params import adapter_parameters, adapter_state_dict  # noqa: F401
from .model.plan import _expand_tokens, current_plan, make_plan, router_features  # noqa: F401
from .model.plan import layer_pre_hook as _layer_pre_hook  # noqa: F401
from .model.prefix import (PREFIX_STATE_ATTR, PrefixRouterState, _tile_rows, prefix_match_features,  # noqa: F401
                           prefix_state)
from .model.prefix import backbone_post_hook as _backbone_post_hook  # noqa: F401
from .model.prefix import backbone_pre_hook as _backbone_pre_hook  # noqa: F401
from .model.state import (ROUTER_ATTR, STATE_ATTR, AlterState, PatchError, _PlanHookHandle,  # noqa: F401
                          add_plan_hook, clear_routing_inputs, disable_adapters, get_state, high_entropy_fraction,
                          is_patched, last_plans, router_loss, routing_inputs, set_inference_entropy,
                          set_routing_inputs)
from .ops.asym_lora import asym_lora  # noqa: F401
from .ops.entropy import lm_head_entropy  # noqa: F401
from .ops.routing import RoutingPlan, route  # noqa: F401
