"""Base-model routing entropies of a whole batch: :func:`token_entropy` (ALTER_SPEC section 2)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from ..ops.entropy import lm_head_entropy
from .hf import backbone_of, lm_head_of, position_ids_from_mask
from .inference import routing_from_next
from .state import disable_adapters, get_state, is_patched


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
    q = get_state(model).config.q_route if (q is None and is_patched(model)) else (1.5 if q is None else q)
    backbone = backbone_of(model)
    head = lm_head_of(model)
    if attention_mask is not None and position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
    ctx = disable_adapters(model) if is_patched(model) else contextlib.nullcontext()
    with ctx:
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
    ent = lm_head_entropy(hidden, head.weight, q=q, bias=getattr(head, "bias", None))   # [B, T]
    return routing_from_next(ent, attention_mask)
