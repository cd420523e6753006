"""The prompt side of :func:`alter_kernels.generate`: base-model entropies of the prompt (the base
pass, adapters off) and stacking the base stream's KV cache under the adapted one."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..model.base_pass import route_q
from ..model.entropy import token_entropy


def q_route(model: nn.Module, q: float | None) -> float:
    """The entropy order q: ``q`` if given, else the patched model's ``q_route`` (AlterConfig's
    default unpatched)."""
    return float(route_q(model, q))


def prompt_entropy(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   position_ids: torch.Tensor | None = None, q: float | None = None) -> torch.Tensor:
    """Routing entropies [B, T] of a (left-padded) prompt from the base model (adapters off):
    :func:`alter_kernels.token_entropy` (positions counted over real tokens, +inf where token t
    has no real predecessor)."""
    return token_entropy(model, input_ids, attention_mask, q=q_route(model, q), position_ids=position_ids)


def stack_static_caches(cache, other) -> None:
    """Append ``other``'s batch rows to ``cache`` (two prefilled StaticCaches of one length): the
    decode steps then run both streams as one batch."""
    for la, lb in zip(cache.layers, other.layers):
        if not (hasattr(la, "keys") and hasattr(lb, "keys")) or int(la.get_seq_length()) != int(lb.get_seq_length()):
            raise RuntimeError("generate: cannot stack the base and adapted KV caches (unexpected cache layout)")
        la.keys = torch.cat([la.keys, lb.keys])
        la.values = torch.cat([la.values, lb.values])
        if hasattr(la, "batch_size"):
            la.batch_size = la.keys.shape[0]
