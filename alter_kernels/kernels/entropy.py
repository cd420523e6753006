"""The compiled and Triton backends of ``tsallis_entropy`` and ``lm_head_entropy``.

C++ (CPU), CUDA and Triton share the autograd wrappers of ``entropy_autograd``; each provides
a forward returning per-row statistics and a backward recomputing from them. They accumulate
in fp32 and take fp32 / bf16 / fp16 input: the table sends float64 to the reference.
"""
from __future__ import annotations

from .entropy_autograd import LMHeadKernels, TsallisKernels, lm_head_entropy_with, tsallis_entropy_with
from .native import native_op


def _native_tsallis_kernels() -> TsallisKernels:
    return TsallisKernels(fwd=native_op("tsallis_entropy_fwd"), bwd=native_op("tsallis_entropy_bwd"))


def _native_lm_head_kernels() -> LMHeadKernels:
    fwd_op, bwd_op = native_op("lm_head_entropy_fwd"), native_op("lm_head_entropy_bwd")

    def fwd(h, w, bias, q):
        return fwd_op(h, w, bias, q)

    def bwd(g_ent, g_lse, h, w, bias, stats, q, need_h, need_w, need_b):
        return bwd_op(g_ent, g_lse, h, w, bias, stats, q, need_h, need_w, need_b)

    return LMHeadKernels(fwd, bwd)


def tsallis_native(logits, q):
    return tsallis_entropy_with(_native_tsallis_kernels(), logits, q)


def lm_head_native(hidden, weight, q, bias, return_lse):
    return lm_head_entropy_with(_native_lm_head_kernels(), hidden, weight, bias, q, return_lse)


def tsallis_triton(logits, q):
    from .triton import tsallis_entropy as tt
    return tsallis_entropy_with(TsallisKernels(tt.tsallis_fwd, tt.tsallis_bwd), logits, q)


def lm_head_triton(hidden, weight, q, bias, return_lse):
    from .triton import lm_head_entropy as tl
    return lm_head_entropy_with(tl.KERNELS, hidden, weight, bias, q, return_lse)
