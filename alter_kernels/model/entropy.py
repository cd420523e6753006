"""Base-model routing entropies of a whole batch: :func:`token_entropy` (ALTER_SPEC section 2)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .base_pass import base_entropy, route_q
from .hf import position_ids_from_mask
from .inference import routing_from_next


@torch.no_grad()
def token_entropy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  q: float | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Routing entropies e [B, T] from the base model (adapters off), spec 2.

    e[:, t] = S_q(softmax(z_{t-1})): the entropy of the distribution that predicted token t,
    from the final hidden states and the LM head through ``lm_head_entropy`` (no [B, T, V]
    logits kept). Positions with no real predecessor (the first, and left padding) get +inf.
    Positions are counted over real tokens (``position_ids``, by default from
    ``attention_mask``), so a left-padded row gets the entropies of the row alone.
    """
    if attention_mask is not None and position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    ent = base_entropy(model, route_q(model, q), input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids)                                      # [B, T]
    return routing_from_next(ent, attention_mask)


@torch.no_grad()
def token_top(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The base model's (adapters off) greedy next token at every position [B, T] long: the
    answer-key router's input (``set_routing_inputs(..., base_top=...)``). Positions are counted
    over real tokens, as in :func:`token_entropy`."""
    if attention_mask is not None and position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    return base_entropy(model, route_q(model), input_ids=input_ids, attention_mask=attention_mask,
                        position_ids=position_ids, top=True)[1]
