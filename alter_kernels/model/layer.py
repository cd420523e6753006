""":class:`AlterLinear`, the patched projection (the decoder layers' :class:`LayerRouter` is in
router.py):

- every target ``nn.Linear`` is replaced by an :class:`AlterLinear` that keeps the original
  instance as ``base_layer`` and adds the shared ``lora_A`` [r, d_in] and the experts
  ``lora_B`` [E, d_out, r] (expert 0 = retain, 1..N = forget);
- every decoder layer that holds a target gets a :class:`LayerRouter` child ``alter_router``
  (see :mod:`alter_kernels.model.plan` for how its plan is made and shared).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from ..config import AlterConfig
from ..ops.asym_lora import asym_lora
from ..ops.routing import RoutingPlan
from .plan import current_plan
from .router import LayerRouter
from .state import PatchError


class AlterLinear(nn.Module):
    """y = W0 x (+ b) + s * sum_e w_{t,e} B_e (A x) with the layer's routing plan (spec 1)."""

    def __init__(self, base_layer: nn.Linear, config: AlterConfig, router: LayerRouter | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise PatchError(f"AlterLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.config = config
        self.rank = config.rank
        self.scale = config.scale
        self.num_experts = config.num_experts
        dtype = getattr(torch, config.adapter_dtype)
        dev = base_layer.weight.device
        # LoRA's init: Kaiming-uniform A (as nn.Linear), zero B, so a fresh patch changes nothing.
        # A is drawn on the CPU so that a seeded generator gives the same A on every device.
        a = torch.empty(config.rank, base_layer.in_features, dtype=dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(dev))
        self.lora_B = nn.Parameter(torch.zeros(config.num_experts, base_layer.out_features, config.rank,
                                               dtype=dtype, device=dev))
        object.__setattr__(self, "_router", router)  # a reference, not a child module

    @property
    def router(self) -> LayerRouter | None:
        """The decoder layer's router whose plan this projection reads (a reference, not a child)."""
        return self._router

    def set_forward_override(self, fn: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Run ``fn(x)`` instead of the generic forward until called with None (see
        :func:`alter_kernels.model.state.install_decode_hook`, which calls this)."""
        if fn is None:
            self.__dict__.pop("forward", None)
        else:
            object.__setattr__(self, "forward", fn)

    # nn.Linear look-alike, for code that inspects the projection
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def extra_repr(self) -> str:
        return f"rank={self.rank}, experts={self.num_experts}, scale={self.scale:g}"

    def forward(self, x: torch.Tensor, plan: RoutingPlan | None = None) -> torch.Tensor:
        router = self.router
        state = router.state if router is not None else None
        if state is not None and not state.enabled:
            return self.base_layer(x)
        if plan is None:
            plan = current_plan(router) if router is not None else None
        if plan is None:
            raise RuntimeError(
                "AlterLinear: no routing plan. It is made by the decoder layer's pre-hook; call the "
                "patched model (or its decoder layer), or pass plan= explicitly.")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] != plan.num_tokens:
            raise RuntimeError(f"AlterLinear {getattr(router, 'layer_name', '')}: input has {x2.shape[0]} tokens "
                               f"but the layer's routing plan has {plan.num_tokens}")
        y = asym_lora(x2, self.base_layer.weight, self.lora_A, self.lora_B, plan.expert_weights, self.scale,
                      plan.a_grad_mask, plan.b_grad_mask, self.base_layer.bias)
        return y.reshape(*lead, y.shape[-1])

