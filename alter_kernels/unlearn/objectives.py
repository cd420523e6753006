"""Loss terms of ALTER (spec 5) and of the baselines (spec 7), as functions of tensors.

Conventions: ``logits`` [B, T, V] and ``labels`` [B, T] are already shifted (position t's
logits predict labels[t]); -100 marks tokens without a target (prompt, padding). Everything
accumulates in fp32. These functions call only the public ops of alter_kernels, so they get
faster when a kernel backend registers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops.entropy import tsallis_entropy
from ..common.constants import is_shannon
from ..common.text import IGNORE_INDEX
from ..ops.losses import inverted_hinge_loss, npo_loss, token_nll


def shift(logits: torch.Tensor, labels: torch.Tensor, *per_token: torch.Tensor):
    """HF convention: logits[:, t] predicts labels[:, t + 1]. Per-token tensors indexed by the
    predicted token (entropies e_t, base S_qs) are shifted like the labels."""
    return (logits[:, :-1], labels[:, 1:]) + tuple(x[:, 1:] for x in per_token)


def tsallis_max(q: float, vocab: int) -> float:
    """Largest S_q over V outcomes (the uniform distribution); log V for q within SHANNON_TOL of 1."""
    if is_shannon(q):
        return math.log(vocab)
    return (1.0 - vocab ** (1.0 - q)) / (q - 1.0)


def domain_ihl(logits: torch.Tensor, labels: torch.Tensor, token_mask: torch.Tensor,
               domains: torch.Tensor, denoms: dict[int, float] | None = None
               ) -> tuple[torch.Tensor, dict[int, int]]:
    """sum_d mean_{t in mask, domain d} IHL_t  (spec 5, first term, without beta).

    token_mask [B, T] bool: forget answer tokens to count (ALTER: the low-entropy ones);
    domains [B] long: each row's forget domain (expert id >= 1; rows with domain <= 0 are
    ignored). Returns the loss and the number of counted tokens per domain.
    denoms: {domain: token count} to divide by instead of this batch's own counts (data-parallel
    training passes the counts of the global batch, so that the shards' losses sum to it).
    """
    ihl = inverted_hinge_loss(logits, labels, shift=False, reduction="none")        # [B, T], 0 at -100
    return domain_ihl_tokens(ihl, labels, token_mask, domains, denoms)


def domain_ihl_tokens(ihl: torch.Tensor, labels: torch.Tensor, token_mask: torch.Tensor, domains: torch.Tensor,
                      denoms: dict[int, float] | None = None) -> tuple[torch.Tensor, dict[int, int]]:
    """:func:`domain_ihl` from per-token IHL values [B, T] (0 where the label is ignored)."""
    valid = token_mask & (labels != IGNORE_INDEX)
    total = ihl.sum() * 0.0
    counts: dict[int, int] = {}
    doms = set(int(x) for x in domains.tolist() if int(x) > 0)
    if denoms is not None:
        doms |= {int(d) for d, n in denoms.items() if n}
    for d in sorted(doms):
        m = valid & (domains == d)[:, None]
        n = int(m.sum())
        counts[d] = n
        den = n if denoms is None else denoms.get(d, 0)
        if den:
            total = total + (ihl * m).sum() / den
    return total, counts


def generic_kl(z: torch.Tensor, lse: torch.Tensor, alt_ids: torch.Tensor, alt_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(p_gen || p_model) [n] of ``forget_loss="generic"``.

    ``alt_ids``, ``alt_logp`` [n, k + 1]: the k most likely other next tokens of the generic
    prediction and, last, the row's own next token, with their log-probs; p_gen is that
    distribution renormalised over these k + 1 tokens. The model's side: z [n, k + 1] its logits
    at the same ids and ``lse`` [n] its logsumexp over the whole vocabulary, so mass outside the
    k + 1 is pushed down too. Positions without any finite target get 0."""
    ok = torch.isfinite(alt_logp)
    tgt = torch.log_softmax(torch.where(ok, alt_logp.float(), torch.full_like(alt_logp.float(), -math.inf)), -1)
    tgt = torch.where(ok, tgt, torch.zeros_like(tgt))
    p = torch.where(ok, tgt.exp(), torch.zeros_like(tgt))
    kl = (p * (tgt - (z.float() - lse.float()[:, None]))).sum(-1)
    return torch.where(ok.any(-1), kl, torch.zeros_like(kl))


def masked_nll(logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None = None,
               denom: float | None = None) -> torch.Tensor:
    """Mean token NLL over the answer tokens of the selected rows (0 if there are none).
    denom: divide the sum by this count instead (the global batch's count, data-parallel)."""
    return masked_mean(token_nll(logits, labels, shift=False, reduction="none"), labels, rows, denom)


def masked_mean(per_token: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None = None,
                denom: float | None = None) -> torch.Tensor:
    """Mean of a per-token term [B, T] over the answer tokens of the selected rows (0 if none);
    denom: divide the sum by this count instead (the global batch's count, data-parallel)."""
    keep = labels != IGNORE_INDEX
    if rows is not None:
        keep = keep & rows[:, None]
    s = torch.where(keep, per_token, torch.zeros_like(per_token)).sum()
    if denom is not None:
        return s / denom if denom else s * 0.0
    return s / keep.sum().clamp(min=1)


def struct_drift(logits: torch.Tensor, base_sq: torch.Tensor, mask: torch.Tensor, q: float = 0.5,
                 denom: float | None = None) -> torch.Tensor:
    """R_struct, "drift" form: mean over masked tokens of ((S_q(adapted) - S_q(base)) / S_max)^2.

    logits [B, T, V] adapted (shifted), base_sq [B, T] the base model's S_q of the same
    distributions, mask [B, T] bool (high-entropy answer tokens). 0 if the mask is empty.
    denom: divide the sum by this count instead of the mask's (global batch, data-parallel).
    """
    m = mask & torch.isfinite(base_sq)
    if not bool(m.any()) or denom == 0:
        return logits.sum() * 0.0
    s = tsallis_entropy(logits[m], q=q)                     # only the masked rows
    return _drift(s, base_sq[m], tsallis_max(q, logits.shape[-1]), denom)


def struct_drift_tokens(entropy: torch.Tensor, base_sq: torch.Tensor, mask: torch.Tensor, vocab: int,
                        q: float = 0.5, denom: float | None = None) -> torch.Tensor:
    """:func:`struct_drift` from the adapted model's per-token S_q [B, T] (fused LM-head path)."""
    m = mask & torch.isfinite(base_sq)
    if not bool(m.any()) or denom == 0:
        return entropy.sum() * 0.0
    return _drift(entropy[m], base_sq[m], tsallis_max(q, vocab), denom)


def _drift(s: torch.Tensor, base: torch.Tensor, s_max: float, denom: float | None) -> torch.Tensor:
    d2 = ((s - base.to(s.dtype)) / s_max) ** 2
    return d2.mean() if denom is None else d2.sum() / denom


def struct_entropy_mean(logits: torch.Tensor, mask: torch.Tensor, q: float = 0.5) -> torch.Tensor:
    """mean_{t in mask} S_q(adapted) / S_max: the quantity whose A-gradient norm is the paper's
    R_struct (see :func:`struct_grad_norm`)."""
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return tsallis_entropy(logits[mask], q=q).mean() / tsallis_max(q, logits.shape[-1])


def struct_grad_norm(mean_entropy: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """R_struct, paper form: || grad_A mean_{t in H} S_q ||^2, differentiable (double backward)."""
    params = [p for p in params if p.requires_grad]
    if not params or not mean_entropy.requires_grad:
        return mean_entropy.new_zeros(())
    grads = torch.autograd.grad(mean_entropy, params, create_graph=True, allow_unused=True)
    return sum((g.float() ** 2).sum() for g in grads if g is not None)


def retain_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor,
              denom: float | None = None) -> torch.Tensor:
    """KL(pi_ref || pi) per answer token, averaged over answer tokens (the KL baseline's retain term).
    denom: divide the sum by this count instead (global batch, data-parallel)."""
    valid = labels != IGNORE_INDEX
    if not bool(valid.any()) or denom == 0:
        return logits.sum() * 0.0
    lp = F.log_softmax(logits[valid].float(), -1)
    lq = F.log_softmax(ref_logits[valid].float(), -1)
    kl = (lq.exp() * (lq - lp)).sum(-1)
    return kl.mean() if denom is None else kl.sum() / denom


def npo_forget(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float = 0.1,
               denom: float | None = None) -> torch.Tensor:
    """NPO on forget sequences: mean of -(2/beta) log sigmoid(-beta (log pi - log pi_ref)).
    denom: divide the sum by this number of sequences instead (global batch, data-parallel)."""
    if denom is None:
        return npo_loss(logp, ref_logp, beta=beta, reduction="mean")
    s = npo_loss(logp, ref_logp, beta=beta, reduction="sum")
    return s / denom if denom else s * 0.0
