"""LayerRouter: W_g of one decoder layer, and that layer's current routing plan."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import EMBEDDING_KEY_ROUTERS
from ..ops.routing import RoutingPlan
from .state import AlterState


class LayerRouter(nn.Module):
    """W_g of one decoder layer, and that layer's current routing plan.

    router_input "token": W_g [d_model, E] reads the layer's own input h_t.
    router_input "prefix_match": W_g [K + 1, E] reads the features of :func:`prefix_match_features`
    (K key matches of the prefix, then a constant 1: the last row is a bias); ``keys`` [K, d_model]
    holds the unit-norm keys (a buffer: W_g is the only trained router tensor).
    router_input "answer_keys": W_g [K + 1, E] reads the features of :func:`.answer_keys.answer_key_features`
    (which of the K key tokens the base model is about to state, then a constant 1); ``keys`` [K]
    holds the key token ids as float32 (a buffer, saved with the adapter).
    router_input "prefix_answer_keys": the prefix-match features, zero except where the base model is
    about to state one of the ``answer_keys`` [K2] (token ids as float32).
    """

    def __init__(self, hidden_size: int, num_experts: int, dtype: torch.dtype, device=None,
                 router_input: str = "token", num_keys: int = 0, num_answer_keys: int = 0):
        super().__init__()
        self.router_input = router_input
        rows = hidden_size if router_input == "token" else num_keys + 1
        # zeros: every expert ties, so low-entropy tokens go to the retain expert (argmax picks
        # the first) until the router is initialised (spec 6) or trained.
        self.weight = nn.Parameter(torch.zeros(rows, num_experts, dtype=dtype, device=device))
        if router_input in EMBEDDING_KEY_ROUTERS:
            self.register_buffer("keys", torch.zeros(num_keys, hidden_size, dtype=dtype, device=device))
        if router_input == "prefix_answer_keys":
            self.register_buffer("answer_keys", torch.zeros(num_answer_keys, dtype=torch.float32, device=device))
        elif router_input == "answer_keys":
            self.register_buffer("keys", torch.zeros(num_keys, dtype=torch.float32, device=device))
        self.plan: RoutingPlan | None = None
        self.pending_hidden: torch.Tensor | None = None
        self.layer_name = ""

    @property
    def state(self) -> AlterState | None:
        """The model-level :class:`AlterState` this router belongs to (None before patch sets it)."""
        return getattr(self, "_state", None)

    def extra_repr(self) -> str:
        if self.router_input == "token":
            return f"hidden_size={self.weight.shape[0]}, num_experts={self.weight.shape[1]}"
        return f"{self.router_input}, keys={self.keys.shape[0]}, num_experts={self.weight.shape[1]}"
