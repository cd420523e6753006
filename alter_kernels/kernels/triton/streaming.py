"""The one streaming (online) softmax step of the Triton row kernels: entropy, fused losses, KL.

A row kernel sweeps its row of logits in BLOCK-wide pieces and keeps O(1) statistics: the
running max m, Z = sum exp(z - m) and, for the entropy modes, Q = sum exp(q (z - m)) (Shannon:
sum exp(z - m) (z - m)); both are rescaled when the max grows. NaN logits are counted and read
as -inf (the kernel then writes NaN); a row with nothing finite keeps m = -inf and Z = 0.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...common.constants import is_shannon

# What the sweep accumulates besides Z: nothing, Shannon's sum, sum p^2, sum p^q.
NONE, SHANNON, Q2, GENERAL = 0, 1, 2, 3


def mode(q: float, with_ent: bool = True) -> int:
    """The MODE constexpr of a kernel for this q (NONE without an entropy)."""
    if not with_ent:
        return NONE
    return SHANNON if is_shannon(q) else (Q2 if q == 2.0 else GENERAL)


@triton.jit
def softmax_block(x, m, z, zq, nan_cnt, q, MODE: tl.constexpr):
    """One BLOCK of the sweep. x: the block's fp32 logits (-inf past the row's end); m, z, zq,
    nan_cnt: the running statistics. Returns (x with NaN as -inf, e = exp(x - m_new) with m_new
    read as 0 while it is -inf, sc = the factor the old sums were rescaled by, m_new, z, zq,
    nan_cnt). MODE as in ``mode`` (1 Shannon, 2 q = 2, 3 any q; 0 leaves zq alone)."""
    isnan = x != x
    nan_cnt += tl.sum(isnan.to(tl.int32), axis=0)
    x = tl.where(isnan, float("-inf"), x)
    m_new = tl.maximum(m, tl.max(x, axis=0))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    d = m - m_safe  # <= 0; -inf while nothing finite was seen
    sc = tl.exp(d)
    if MODE == 1:
        zq = tl.where(z > 0.0, sc * (zq + d * z), 0.0)
    elif MODE > 1:
        zq = zq * tl.exp(q * d)
    z = z * sc
    t = x - m_safe
    e = tl.exp(t)
    z += tl.sum(e, axis=0)
    if MODE == 1:
        zq += tl.sum(tl.where(x > float("-inf"), e * t, 0.0), axis=0)
    elif MODE == 2:
        zq += tl.sum(e * e, axis=0)
    elif MODE == 3:
        zq += tl.sum(tl.exp(q * t), axis=0)
    return x, e, sc, m_new, z, zq, nan_cnt
