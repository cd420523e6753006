"""Dispatch point of the entropy ops: ``tsallis_entropy`` and ``lm_head_entropy``."""
from __future__ import annotations

import torch

from ..kernels import registry
from ._checks import check_features, check_q, check_same_device, check_shape, check_tensor


def _key_dtype(*tensors) -> torch.dtype:
    """The dtype the backend choice depends on: float64 if any input is (it stays on the
    reference: the kernels accumulate in fp32), else the first tensor's."""
    present = [t for t in tensors if t is not None]
    return torch.float64 if any(t.dtype == torch.float64 for t in present) else present[0].dtype


def tsallis_entropy(logits: torch.Tensor, q: float = 1.5) -> torch.Tensor:
    """Tsallis entropy S_q of softmax(logits) over the last dim (q = 1: Shannon, natural log).

    logits [..., V] (fp32, bf16, fp16 or fp64, any strides) -> [...] in fp32 (fp64 for fp64
    input), differentiable (the backward recomputes from saved per-row statistics [m, log Z,
    sum p^q]). -inf logits are probability 0; an all -inf row or NaN gives NaN. Non-contiguous
    input is read in place when its last dim is unit-stride and its leading dims flatten to one
    stride; otherwise one contiguous copy is made. See docs/entropy.md.
    """
    q = check_q(q, "tsallis_entropy")
    check_tensor(logits, "logits", "tsallis_entropy", min_ndim=1)
    if logits.shape[-1] == 0:
        raise ValueError(f"tsallis_entropy: logits must have at least one entry in the last dim (V >= 1), "
                         f"got shape {tuple(logits.shape)}")
    return registry.pick("tsallis_entropy", logits.device, logits.dtype).fn(logits, q)


def lm_head_entropy(hidden: torch.Tensor, weight: torch.Tensor, q: float = 1.5,
                    bias: torch.Tensor | None = None, return_lse: bool = False):
    """Entropy of softmax(hidden @ weight^T + bias) without keeping the [N, V] logits.

    hidden [..., d], weight [V, d], bias [V] or None -> entropies [...] fp32 (and, with
    return_lse, the per-token log-sum-exp of the logits, also [...] fp32). Both outputs are
    differentiable w.r.t. hidden, weight and bias; the backward recomputes logits tiles from
    saved per-token statistics. See docs/entropy.md.
    """
    q = check_q(q, "lm_head_entropy")
    check_tensor(hidden, "hidden", "lm_head_entropy", min_ndim=1)
    check_tensor(weight, "weight", "lm_head_entropy", ndim=2)
    check_features(hidden.shape[-1], "lm_head_entropy")
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
    impl = registry.pick("lm_head_entropy", hidden.device, _key_dtype(hidden, weight, bias))
    out = impl.fn(h2, weight, q, bias, return_lse)
    if return_lse:
        ent, lse = out
        return ent.reshape(lead), lse.reshape(lead)
    return out.reshape(lead)
