"""Plain-PyTorch reference of Tsallis token entropy (ALTER_SPEC section 2).

Readable, differentiable (autograd all the way), float64-capable. Kernels are tested against it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ...common.constants import is_shannon


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tsallis_from_logits(logits: torch.Tensor, q: float) -> torch.Tensor:
    """S_q(softmax(z)) over the last dim, in the accumulation dtype of ``logits``.

    -inf logits are probability 0. A row of all -inf, or a row holding NaN, gives NaN.
    """
    z = logits.to(acc_dtype(logits.dtype))
    logp = F.log_softmax(z, dim=-1)
    if is_shannon(q):                             # Shannon: no 0/0 near q = 1
        p = logp.exp()
        # p * log p is 0 where p == 0; the `where` on logp keeps the backward free of 0 * inf.
        safe_logp = torch.where(p > 0, logp, torch.zeros_like(logp))
        return -(p * safe_logp).sum(-1)
    # p^q as exp(q log p): exact 0 (and 0 gradient) where p == 0, even for q < 1.
    sum_pq = torch.exp(q * logp).sum(-1)
    return (1.0 - sum_pq) / (q - 1.0)


def tsallis_entropy_ref(logits: torch.Tensor, q: float = 1.5) -> torch.Tensor:
    """[..., V] logits -> [...] entropies (fp32; float64 for float64 input)."""
    return tsallis_from_logits(logits, q)


def _chunk_stats(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, q: float):
    acc = acc_dtype(h.dtype)
    z = h.to(acc) @ weight.to(acc).t()
    if bias is not None:
        z = z + bias.to(acc)
    return tsallis_from_logits(z, q), torch.logsumexp(z, dim=-1)


def lm_head_entropy_ref(hidden: torch.Tensor, weight: torch.Tensor, q: float = 1.5,
                        bias: torch.Tensor | None = None, return_lse: bool = False,
                        chunk_size: int = 1024):
    """Entropy of softmax(hidden @ weight^T + bias), ``chunk_size`` rows at a time.

    Under autograd each chunk is checkpointed, so its [chunk, V] logits are recomputed in the
    backward instead of being kept: memory stays O(chunk * V), never O(N * V).
    """
    n = hidden.shape[0]
    ents, lses = [], []
    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    for s in range(0, n, chunk_size) if n else [0]:      # 0 rows: one empty chunk, still in the graph
        h = hidden[s:s + chunk_size]
        if needs_grad:
            e, l = checkpoint(_chunk_stats, h, weight, bias, q, use_reentrant=False)
        else:
            e, l = _chunk_stats(h, weight, bias, q)
        ents.append(e)
        lses.append(l)
    ent = torch.cat(ents)
    return (ent, torch.cat(lses)) if return_lse else ent
