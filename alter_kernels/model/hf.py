"""Access to the parts of a Hugging Face causal LM that ALTER needs: one place for all of them.

The decoder backbone (``model.model``), the LM head and whether its logits are plain
``h W^T (+ b)`` (no softcapping or logit scale, so entropies can come from the fused kernels),
the name the backbone's forward gives its KV cache argument, and positions counted over real
tokens for left-padded batches.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn

UNSUPPORTED_HEAD_ATTRS = ("final_logit_softcapping", "logit_scale")


def backbone_of(model: nn.Module) -> nn.Module:
    """The decoder stack (``LlamaModel`` of a ``LlamaForCausalLM``)."""
    bb = getattr(model, "model", None)
    if isinstance(bb, nn.Module):
        return bb
    if hasattr(model, "get_decoder"):
        dec = model.get_decoder()
        if isinstance(dec, nn.Module):
            return dec
    raise TypeError(f"{type(model).__name__}: cannot find the decoder backbone (model.model)")


def head_problem(model: nn.Module) -> str | None:
    """Why the model's next-token entropies cannot come from ``lm_head_entropy`` (None: they can)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        return f"{type(model).__name__} has no LM head (get_output_embeddings() with a weight)"
    for attr in UNSUPPORTED_HEAD_ATTRS:
        if getattr(getattr(model, "config", None), attr, None) not in (None, 1.0):
            return f"its config sets {attr} (the fused entropy kernels take plain logits h W^T + b)"
    return None


def lm_head_of(model: nn.Module) -> nn.Module:
    """The LM head, checked to produce plain logits (see :func:`head_problem`)."""
    why = head_problem(model)
    if why is not None:
        raise NotImplementedError(f"alter_kernels: cannot compute next-token entropies: {why}")
    return model.get_output_embeddings()


def cache_kwarg(backbone: nn.Module) -> str:
    """Name of the backbone forward's KV-cache argument ("cache" in transformers 5, else "past_key_values")."""
    params = inspect.signature(backbone.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (left padding: the first real token is position 0)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)
