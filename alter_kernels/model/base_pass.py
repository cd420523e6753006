"""The base pass, written once: the patched model's backbone with the adapters off, then S_q of the
base model's next-token distribution at every position, straight from the final hidden states and
the LM head (``ops.lm_head_entropy``, no [B, T, V] logits kept). Training's entropy cache
(:func:`alter_kernels.token_entropy`), the inference rule (:mod:`.inference`) and
:func:`alter_kernels.generate`'s prefill all run :func:`base_entropy`."""
from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn as nn

from ..config import AlterConfig
from ..ops.entropy import lm_head_entropy
from .hf import backbone_of, cache_kwarg, lm_head_of
from .state import disable_adapters, get_state, is_patched

_HEAD_ROWS = 64        # rows of hidden states per LM-head product in base_top


def base_top(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The base model's greedy next token at every position: argmax of ``hidden @ weight.T (+ bias)``,
    [...] long, computed in blocks of rows so no [B, T, V] logits are kept."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.long, device=hidden.device)
    w = weight.to(flat.dtype)
    for s in range(0, flat.shape[0], _HEAD_ROWS):
        z = flat[s:s + _HEAD_ROWS] @ w.t()
        if bias is not None:
            z = z + bias.to(z.dtype)
        out[s:s + _HEAD_ROWS] = z.argmax(-1)
    return out.view(hidden.shape[:-1])


# the entropy order of an unpatched model: AlterConfig's default q_route
_DEFAULT_Q = {f.name: f.default for f in dataclasses.fields(AlterConfig)}["q_route"]


def route_q(model: nn.Module, q: float | None = None) -> float:
    """The routing entropy order: ``q`` if given, else the patched model's ``q_route``, else
    AlterConfig's default."""
    if q is not None:
        return q
    return get_state(model).config.q_route if is_patched(model) else _DEFAULT_Q


def base_entropy(model: nn.Module, q: float, *, input_ids: torch.Tensor | None = None,
                 inputs_embeds: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None, cache=None, backbone: nn.Module | None = None,
                 head: nn.Module | None = None, cache_kw: str | None = None, top: bool = False):
    """S_q [B, T] of the base model's (adapters off) distribution at every position of these tokens
    (``input_ids`` or ``inputs_embeds``). ``cache``: a KV cache the pass fills (and continues);
    ``backbone`` / ``head`` / ``cache_kw``: the model's, when the caller holds them already.
    ``top``: return (S_q, the greedy next token [B, T] long) from the same pass (the answer-key
    router's input)."""
    backbone = backbone_of(model) if backbone is None else backbone
    head = lm_head_of(model) if head is None else head
    kw = {"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": cache is not None}
    if cache is not None:
        kw[cache_kw or cache_kwarg(backbone)] = cache
    if input_ids is not None:
        kw["input_ids"] = input_ids
    else:
        kw["inputs_embeds"] = inputs_embeds
    with disable_adapters(model) if is_patched(model) else contextlib.nullcontext():
        hidden = backbone(**kw).last_hidden_state
    ent = lm_head_entropy(hidden, head.weight, q=q, bias=getattr(head, "bias", None))
    return (ent, base_top(hidden, head.weight, getattr(head, "bias", None))) if top else ent
