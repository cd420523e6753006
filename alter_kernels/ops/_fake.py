"""Fake (meta) implementations of the C++/CUDA ops, for torch.compile and FakeTensor tracing.

Each entry gives the output shapes and dtypes of a native op without running it. Ops missing
from the loaded extension are skipped. Gradients a kernel was not asked for come back as
0-element placeholders here (the kernels return undefined tensors); the autograd wrappers
drop them.
"""
from __future__ import annotations

import torch

from .. import _backend

_done = False


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _asym_lora_fwd(x, weight, A, B, expert_weights, scale, bias=None, mode=0):
    return x.new_empty((x.shape[0], weight.shape[0])), x.new_empty((x.shape[0], A.shape[0]), dtype=_acc(x.dtype))


def _asym_lora_bwd(grad, x, weight, A, B, expert_weights, u, scale, a_grad_mask, b_grad_mask,
                   need_dx, need_dA, need_dB, need_dw):
    def maybe(flag, like):
        return torch.empty_like(like) if flag else like.new_empty((0,))
    return maybe(need_dx, x), maybe(need_dA, A), maybe(need_dB, B), maybe(need_dw, expert_weights)


FAKES = {
    "asym_lora_fwd": _asym_lora_fwd,
    "asym_lora_bwd": _asym_lora_bwd,
}


def register_fakes(extra: dict | None = None) -> None:
    """Register the fakes of every native op that exists (idempotent)."""
    global _done
    if extra:
        FAKES.update(extra)
    if _backend.load_extension() is None:
        return
    for name, fn in FAKES.items():
        if getattr(fn, "_alter_registered", False) or _backend.native_op(name) is None:
            continue
        torch.library.register_fake(f"{_backend.NAMESPACE}::{name}", fn)
        fn._alter_registered = True
    _done = True
