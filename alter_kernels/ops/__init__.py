"""Public ops: input checks, then the registry's pick (kernels/registry.py) by device and dtype."""
from .asym_lora import asym_lora
from .decode import decode_group_linear, decode_linear, decode_route
from .entropy import lm_head_entropy, tsallis_entropy
from .lm_head_losses import TokenLosses, lm_head_kl, lm_head_token_losses
from .losses import inverted_hinge_loss, npo_loss, sequence_logprob, token_nll
from .routing import RoutingPlan, route, route_plan

__all__ = ["asym_lora", "lm_head_entropy", "tsallis_entropy", "route", "route_plan", "RoutingPlan", "decode_route",
           "decode_group_linear", "decode_linear", "lm_head_token_losses", "lm_head_kl", "TokenLosses",
           "inverted_hinge_loss", "npo_loss", "sequence_logprob", "token_nll"]
