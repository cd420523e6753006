"""Pure-PyTorch reference implementations: the ground truth every kernel is tested against."""
from .asym_lora import asym_lora_ref
from .decode import decode_group_linear_ref, decode_linear_ref, decode_route_ref
from .entropy import acc_dtype, lm_head_entropy_ref, tsallis_entropy_ref, tsallis_from_logits
from .lm_head_losses import lm_head_kl_ref, lm_head_token_losses_ref
from .routing import route_plan_ref, route_ref, router_ce

__all__ = [
    "acc_dtype", "asym_lora_ref", "lm_head_entropy_ref", "tsallis_entropy_ref", "tsallis_from_logits",
    "lm_head_token_losses_ref", "lm_head_kl_ref", "route_ref", "route_plan_ref", "router_ce", "decode_route_ref", "decode_group_linear_ref", "decode_linear_ref",
]
