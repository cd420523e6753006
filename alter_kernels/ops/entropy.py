"""Dispatch point of the entropy ops: ``tsallis_entropy`` and ``lm_head_entropy``."""
from __future__ import annotations

import torch

from .. import _backend
from ..reference.entropy import lm_head_entropy_ref, tsallis_entropy_ref
from ._checks import check_q, check_same_device, check_shape, check_tensor

_backend.register("tsallis_entropy", "reference", tsallis_entropy_ref, priority=0)
_backend.register("lm_head_entropy", "reference", lm_head_entropy_ref, priority=0)


def tsallis_entropy(logits: torch.Tensor, q: float = 1.5) -> torch.Tensor:
    """Tsallis entropy S_q of softmax(logits) over the last dim (q = 1: Shannon, natural log).

    logits [..., V] (fp32, bf16, fp16 or fp64, any strides) -> [...] in fp32 (fp64 for fp64
    input), differentiable. -inf logits are probability 0; an all -inf row or NaN gives NaN.
    """
    q = check_q(q, "tsallis_entropy")
    check_tensor(logits, "logits", "tsallis_entropy", min_ndim=1)
    if logits.shape[-1] == 0:
        raise ValueError(f"tsallis_entropy: logits must have at least one entry in the last dim (V >= 1), "
                         f"got shape {tuple(logits.shape)}")
    return _backend.pick("tsallis_entropy", logits.device).fn(logits, q)


def lm_head_entropy(hidden: torch.Tensor, weight: torch.Tensor, q: float = 1.5,
                    bias: torch.Tensor | None = None, return_lse: bool = False):
    """Entropy of softmax(hidden @ weight^T + bias) without keeping the [N, V] logits.

    hidden [..., d], weight [V, d], bias [V] or None -> entropies [...] fp32 (and, with
    return_lse, the per-token log-sum-exp of the logits, also [...] fp32).
    """
    q = check_q(q, "lm_head_entropy")
    check_tensor(hidden, "hidden", "lm_head_entropy", min_ndim=1)
    check_tensor(weight, "weight", "lm_head_entropy", ndim=2)
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"lm_head_entropy: weight must be [V, d] with d = hidden.shape[-1] = "
                         f"{hidden.shape[-1]}, got {tuple(weight.shape)}")
    if weight.shape[0] == 0:
        raise ValueError("lm_head_entropy: weight has V = 0 rows; expected V >= 1")
    if bias is not None:
        check_tensor(bias, "bias", "lm_head_entropy", ndim=1)
        check_shape(bias, "bias", "lm_head_entropy", (weight.shape[0],), " (V)")
    check_same_device("lm_head_entropy", hidden=hidden, weight=weight, bias=bias)
    lead = hidden.shape[:-1]
    h2 = hidden.reshape(-1, hidden.shape[-1])
    out = _backend.pick("lm_head_entropy", hidden.device).fn(h2, weight, q, bias, return_lse)
    if return_lse:
        ent, lse = out
        return ent.reshape(lead), lse.reshape(lead)
    return out.reshape(lead)
