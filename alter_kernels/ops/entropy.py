"""Dispatch point of the entropy ops: ``tsallis_entropy`` and ``lm_head_entropy``."""
from __future__ import annotations

import torch

from .. import _backend
from ..reference.entropy import lm_head_entropy_ref, tsallis_entropy_ref
from ._checks import check_q, check_same_device, check_shape, check_tensor
from ._entropy_autograd import (LMHeadKernels, TsallisKernels, lm_head_entropy_with,
                               tsallis_entropy_with)

_backend.register("tsallis_entropy", "reference", tsallis_entropy_ref, priority=0)
_backend.register("lm_head_entropy", "reference", lm_head_entropy_ref, priority=0)


# ---- compiled backends: C++ (CPU) and CUDA share the autograd wrappers of _entropy_autograd ----
# Every backend keeps float64 input on the reference (the kernels accumulate in fp32).

def _native_tsallis_kernels() -> TsallisKernels:
    return TsallisKernels(fwd=_backend.native_op("tsallis_entropy_fwd"),
                          bwd=_backend.native_op("tsallis_entropy_bwd"))


def _native_lm_head_kernels() -> LMHeadKernels:
    fwd_op, bwd_op = _backend.native_op("lm_head_entropy_fwd"), _backend.native_op("lm_head_entropy_bwd")

    def fwd(h, w, bias, q):
        return fwd_op(h, w, bias, q)

    def bwd(g_ent, g_lse, h, w, bias, stats, q, need_h, need_w, need_b):
        return bwd_op(g_ent, g_lse, h, w, bias, stats, q, need_h, need_w, need_b)

    return LMHeadKernels(fwd, bwd)


def _tsallis_native(logits, q):
    if logits.dtype == torch.float64:
        return tsallis_entropy_ref(logits, q)
    return tsallis_entropy_with(_native_tsallis_kernels(), logits, q)


def _lm_head_native(hidden, weight, q, bias, return_lse):
    if torch.float64 in (hidden.dtype, weight.dtype) or (bias is not None and bias.dtype == torch.float64):
        return lm_head_entropy_ref(hidden, weight, q, bias, return_lse)
    return lm_head_entropy_with(_native_lm_head_kernels(), hidden, weight, bias, q, return_lse)


def _native_supports(name: str, key: str, dev_type: str):
    return lambda d: d.type == dev_type and _backend.native_has_kernel(name, key)


_backend.register("tsallis_entropy", "cpp", _tsallis_native,
                  _native_supports("tsallis_entropy_fwd", "CPU", "cpu"), priority={"cpu": 10})
_backend.register("lm_head_entropy", "cpp", _lm_head_native,
                  _native_supports("lm_head_entropy_fwd", "CPU", "cpu"), priority={"cpu": 10})
_backend.register("tsallis_entropy", "cuda", _tsallis_native,
                  _native_supports("tsallis_entropy_fwd", "CUDA", "cuda"), priority={"cuda": 15})
_backend.register("lm_head_entropy", "cuda", _lm_head_native,
                  _native_supports("lm_head_entropy_fwd", "CUDA", "cuda"), priority={"cuda": 15})


# ---- Triton: the default on CUDA; on the CPU only when forced, under TRITON_INTERPRET=1 ----

def _triton_supports(d: torch.device) -> bool:
    return _backend.triton_available() and (d.type == "cuda" or (d.type == "cpu" and _backend.triton_interpret()))


def _tsallis_triton(logits, q):
    if logits.dtype == torch.float64:
        return tsallis_entropy_ref(logits, q)
    from ..triton import tsallis_entropy as tt
    return tsallis_entropy_with(TsallisKernels(tt.tsallis_fwd, tt.tsallis_bwd), logits, q)


def _lm_head_triton(hidden, weight, q, bias, return_lse):
    if torch.float64 in (hidden.dtype, weight.dtype) or (bias is not None and bias.dtype == torch.float64):
        return lm_head_entropy_ref(hidden, weight, q, bias, return_lse)
    from ..triton import lm_head_entropy as tl
    return lm_head_entropy_with(tl.KERNELS, hidden, weight, bias, q, return_lse)


_backend.register("tsallis_entropy", "triton", _tsallis_triton, _triton_supports, priority={"cuda": 20, "cpu": -10})
_backend.register("lm_head_entropy", "triton", _lm_head_triton, _triton_supports, priority={"cuda": 20, "cpu": -10})


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
    return _backend.pick("tsallis_entropy", logits.device).fn(logits, q)


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
