"""Plain-PyTorch reference of the fused LM-head unlearning losses (issue 16): the ground truth.

Per token t with logits z = hidden_t @ weight^T + bias (never kept for all tokens at once):

    nll     = lse - z_y                                  (-log p(y))
    ihl     = max(0, 1 + p(y) - max_{v != y} p(v))       (ALTER's inverted hinge loss)
    entropy = S_q(p)  (Tsallis, q = 1: Shannon; only when q is given)
    lse     = log sum_v exp(z_v)
    kl      = KL(p_base || p_model) = sum_v p_base (log p_base - log p_model)
              (p_base from the base head weight_base / bias_base when given, else the shared one)

Rows whose label is ``ignore_index`` (or whose ``mask`` is False, for the KL) give 0 and a zero
gradient. Readable, float64-capable (float64 in, float64 out; everything else accumulates in
fp32) and differentiable by autograd. Tokens go in chunks of ``chunk_rows`` (checkpointed under
autograd, so the backward recomputes a chunk's logits rather than keeping them) and, inside a
chunk, the vocabulary goes in slices of ``chunk_vocab`` with the statistics combined across
slices (log-sum-exp of slice log-sum-exps, max of slice maxima), so the largest live tensor is
[chunk_rows, chunk_vocab].

Ties: when several v != y share the largest logit, max_{v != y} p(v) is their mean, so its
gradient is split evenly among them, as ``torch.amax`` does (and as
``ops.losses.inverted_hinge_loss`` does through it). With V = 1 there is no v != y; that
maximum is taken as 0 (ihl = 2), where ``ops.losses.inverted_hinge_loss`` gives inf.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint

from ...common.constants import is_shannon
from ...common.text import IGNORE_INDEX
from ..types import TokenLosses


def _acc(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _slices(v: int, step: int):
    return [(s, min(v, s + step)) for s in range(0, v, step)]


def _logits(h, weight, bias, s, e, acc):
    z = h.to(acc) @ weight[s:e].to(acc).t()
    return z + bias[s:e].to(acc) if bias is not None else z


def _lse(h, weight, bias, acc, step):
    """log-sum-exp over the vocabulary, slice by slice (differentiable)."""
    parts = [torch.logsumexp(_logits(h, weight, bias, s, e, acc), -1) for s, e in _slices(weight.shape[0], step)]
    return torch.logsumexp(torch.stack(parts, -1), -1)


def _entropy(h, weight, bias, lse, q, acc, step):
    shannon = is_shannon(q)
    total = 0.0
    for s, e in _slices(weight.shape[0], step):
        logp = _logits(h, weight, bias, s, e, acc) - lse.unsqueeze(-1)
        p = logp.exp()
        if shannon:    # p log p = 0 where p = 0, with no 0 * inf in the backward
            total = total - (p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
        else:
            total = total + torch.exp(q * logp).sum(-1)
    return total if shannon else (1.0 - total) / (q - 1.0)


def _other_max_prob(h, weight, bias, labels, lse, acc, step):
    """max_{v != y} p(v), its gradient split evenly among tied maxima (0 if V = 1)."""
    sl = _slices(weight.shape[0], step)
    with torch.no_grad():   # the arg max set T is piecewise constant: found without gradient
        zmax = None
        for s, e in sl:
            z = _logits(h, weight, bias, s, e, acc)
            z = z.masked_fill(torch.arange(s, e, device=z.device) == labels.unsqueeze(-1), float("-inf"))
            m = z.amax(-1)
            zmax = m if zmax is None else torch.maximum(zmax, m)
    tot, cnt = 0.0, 0
    for s, e in sl:
        z = _logits(h, weight, bias, s, e, acc)
        t = (z == zmax.unsqueeze(-1)) & (torch.arange(s, e, device=z.device) != labels.unsqueeze(-1))
        t = t & (zmax > float("-inf")).unsqueeze(-1)
        tot = tot + torch.where(t, (z - lse.unsqueeze(-1)).exp(), torch.zeros_like(z)).sum(-1)
        cnt = cnt + t.sum(-1)
    return tot / torch.clamp(cnt, min=1)


def _chunk_losses(h, weight, bias, labels, valid, q, step):
    acc = _acc(h, weight, bias)
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    lse = _lse(h, weight, bias, acc, step)
    zy = (h.to(acc) * weight[safe].to(acc)).sum(-1)
    if bias is not None:
        zy = zy + bias[safe].to(acc)
    nll = lse - zy
    p_y = torch.exp(zy - lse)
    ihl = torch.clamp(1.0 + p_y - _other_max_prob(h, weight, bias, safe, lse, acc, step), min=0.0)
    out = [nll, ihl, lse]
    if q is not None:
        out.append(_entropy(h, weight, bias, lse, q, acc, step))
    zero = torch.zeros((), dtype=acc, device=h.device)
    return tuple(torch.where(valid, o, zero) for o in out)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lm_head_token_losses_ref(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                             bias: torch.Tensor | None = None, q: float | None = None,
                             ignore_index: int = IGNORE_INDEX, chunk_rows: int = 256,
                             chunk_vocab: int = 8192) -> TokenLosses:
    """hidden [N, d], weight [V, d], labels [N] (int), bias [V] or None -> TokenLosses of [N] tensors."""
    valid = labels != ignore_index
    grad = _needs_grad(hidden, weight, bias)
    outs = []
    for s in range(0, hidden.shape[0], chunk_rows) if hidden.shape[0] else [0]:
        args = (hidden[s:s + chunk_rows], weight, bias, labels[s:s + chunk_rows], valid[s:s + chunk_rows], q,
                chunk_vocab)
        outs.append(checkpoint(_chunk_losses, *args, use_reentrant=False) if grad else _chunk_losses(*args))
    cat = [torch.cat([o[i] for o in outs]) for i in range(len(outs[0]))]
    return TokenLosses(cat[0], cat[1], cat[3] if q is not None else None, cat[2])


def _chunk_kl(hb, h, weight, bias, valid, step, weight_base=None, bias_base=None):
    wb, bb = (weight, bias) if weight_base is None else (weight_base, bias_base)
    acc = _acc(hb, h, weight, bias, wb, bb)
    lse_b = _lse(hb, wb, bb, acc, step)
    lse_m = _lse(h, weight, bias, acc, step)
    kl = 0.0
    for s, e in _slices(weight.shape[0], step):
        lpb = _logits(hb, wb, bb, s, e, acc) - lse_b.unsqueeze(-1)
        lpm = _logits(h, weight, bias, s, e, acc) - lse_m.unsqueeze(-1)
        pb = lpb.exp()
        # p_b (log p_b - log p_m) = 0 where p_b = 0 (also when log p_m = -inf there)
        kl = kl + torch.where(pb > 0, pb * (lpb - lpm), torch.zeros_like(pb)).sum(-1)
    return torch.where(valid, kl, torch.zeros((), dtype=acc, device=h.device))


def lm_head_kl_ref(hidden_base: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                   chunk_rows: int = 256, chunk_vocab: int = 8192, *, weight_base: torch.Tensor | None = None,
                   bias_base: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token KL(softmax(hidden_base W_b^T + b_b) || softmax(hidden W^T + b)): [N]; 0 where mask is
    False. The base head (W_b, b_b) is (weight_base, bias_base), or (weight, bias) when weight_base
    is None (one shared head)."""
    n = hidden.shape[0]
    valid = mask.to(torch.bool) if mask is not None else torch.ones(n, dtype=torch.bool, device=hidden.device)
    grad = _needs_grad(hidden_base, hidden, weight, bias, weight_base, bias_base)
    outs = []
    for s in range(0, n, chunk_rows) if n else [0]:
        args = (hidden_base[s:s + chunk_rows], hidden[s:s + chunk_rows], weight, bias, valid[s:s + chunk_rows],
                chunk_vocab, weight_base, bias_base)
        outs.append(checkpoint(_chunk_kl, *args, use_reentrant=False) if grad else _chunk_kl(*args))
    return torch.cat(outs)
