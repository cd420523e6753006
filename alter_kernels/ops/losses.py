"""The public unlearning losses (ALTER_SPEC sections 5 and 7), in plain PyTorch over materialised
logits (the fused, chunked forms over the LM head are ``lm_head_losses``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common.text import IGNORE_INDEX


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor):
    """HF causal-LM convention: position t predicts labels[t + 1]."""
    return logits[..., :-1, :], labels[..., 1:]


def inverted_hinge_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool = True,
                        reduction: str = "mean", ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """IHL_t = max(0, 1 + p(y_t) - max_{v != y_t} p(v)) over tokens whose label != ignore_index.

    logits [..., T, V], labels [..., T]. reduction: "mean" over counted tokens, "sum", or
    "none" (per-token values, 0 at ignored positions). The mean of no tokens is 0.
    """
    if shift:
        logits, labels = shift_for_next_token(logits, labels)
    p = torch.softmax(logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32), -1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    p_true = p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    p_other = p.scatter(-1, safe.unsqueeze(-1), float("-inf")).amax(-1)
    ihl = torch.clamp(1.0 + p_true - p_other, min=0.0)
    ihl = torch.where(valid, ihl, torch.zeros_like(ihl))
    return _reduce(ihl, valid, reduction)


def token_nll(logits: torch.Tensor, labels: torch.Tensor, shift: bool = True,
              reduction: str = "mean", ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Negative log-likelihood of the labels (the usual causal-LM loss), fp32 accumulation."""
    if shift:
        logits, labels = shift_for_next_token(logits, labels)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    valid = labels != ignore_index
    nll = F.cross_entropy(logits.to(acc).reshape(-1, logits.shape[-1]), labels.reshape(-1),
                          ignore_index=ignore_index, reduction="none").view(labels.shape)
    return _reduce(nll, valid, reduction)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, shift: bool = True,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """log pi(y|x): per-sequence sum of the label log-probabilities. [B, T, V], [B, T] -> [B]."""
    return -token_nll(logits, labels, shift=shift, reduction="none", ignore_index=ignore_index).sum(-1)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float = 0.1,
             reduction: str = "mean") -> torch.Tensor:
    """NPO: -(2/beta) log sigmoid(-beta (log pi(y|x) - log pi_ref(y|x))), per sequence."""
    if beta <= 0:
        raise ValueError(f"npo_loss: beta must be > 0, got {beta}")
    loss = -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp))
    if reduction == "none":
        return loss
    return loss.mean() if reduction == "mean" else loss.sum()


def _reduce(values: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.sum() / valid.sum().clamp(min=1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
