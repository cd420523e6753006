"""Fake (meta) implementations of the C++/CUDA ops, for torch.compile and FakeTensor tracing.

Each entry gives the output shapes and dtypes of a native op without running it. Ops missing
from the loaded extension are skipped. Gradients a kernel was not asked for come back as
placeholders, as the kernels return them (asym_lora_bwd: undefined tensors, None in Python;
lm_head_entropy_bwd: 0-element fp32 tensors); the autograd wrappers drop them.
"""
from __future__ import annotations

import torch

from .native import NAMESPACE, load_extension, native_op

_done = False


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _asym_lora_fwd(x, weight, A, B, expert_weights, scale, bias=None, mode=0):
    return x.new_empty((x.shape[0], weight.shape[0])), x.new_empty((x.shape[0], A.shape[0]), dtype=_acc(x.dtype))


def _asym_lora_bwd(grad, x, weight, A, B, expert_weights, u, scale, a_grad_mask, b_grad_mask,
                   need_dx, need_dA, need_dB, need_dw):
    def maybe(flag, like):         # the kernel returns an undefined tensor (None) when not asked
        return torch.empty_like(like) if flag else None
    return maybe(need_dx, x), maybe(need_dA, A), maybe(need_dB, B), maybe(need_dw, expert_weights)


def _row_stats(n, like):
    f32 = dict(dtype=torch.float32, device=like.device)
    return torch.empty((n,), **f32), torch.empty((n,), **f32), torch.empty((n, 3), **f32)


def _tsallis_entropy_fwd(logits, q):
    return _row_stats(logits.shape[0], logits)


def _tsallis_entropy_bwd(grad, logits, stats, q):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _lm_head_entropy_fwd(hidden, weight, bias, q, vocab_tile=0, row_block=0):
    return _row_stats(hidden.shape[0], hidden)


def _lm_head_entropy_bwd(grad_ent, grad_lse, hidden, weight, bias, stats, q, need_hidden, need_weight, need_bias,
                         vocab_tile=0, row_block=0):
    def none():                    # a fresh 0-element tensor each (no output aliases another)
        return hidden.new_empty((0,), dtype=torch.float32)
    return (torch.empty_like(hidden) if need_hidden else none(),
            torch.empty_like(weight) if need_weight else none(),
            torch.empty_like(bias) if (need_bias and bias is not None) else none())


def _placeholder(like):            # a fresh 0-element fp32 tensor each (no output aliases another)
    return like.new_empty((0,), dtype=torch.float32)


def _lm_head_losses_fwd(hidden, weight, bias, labels, q, with_entropy, ignore_index, vocab_tile=0, row_block=0):
    f32 = dict(dtype=torch.float32, device=hidden.device)
    n = hidden.shape[0]
    return tuple(torch.empty((n,), **f32) for _ in range(4)) + (torch.empty((n, 7), **f32),)


def _lm_head_losses_bwd(grad_nll, grad_ihl, grad_ent, grad_lse, hidden, weight, bias, labels, stats, q, ignore_index,
                        need_hidden, need_weight, need_bias, vocab_tile=0, row_block=0):
    return (torch.empty_like(hidden) if need_hidden else _placeholder(hidden),
            torch.empty_like(weight) if need_weight else _placeholder(hidden),
            torch.empty_like(bias) if (need_bias and bias is not None) else _placeholder(hidden))


def _lm_head_kl_fwd(hidden_base, hidden, weight, bias, mask, vocab_tile=0, row_block=0, weight_base=None,
                    bias_base=None):
    f32 = dict(dtype=torch.float32, device=hidden.device)
    return torch.empty((hidden.shape[0],), **f32), torch.empty((hidden.shape[0], 5), **f32)


def _lm_head_kl_fwd_grad(hidden_base, hidden, weight, bias, mask, vocab_tile=0, row_block=0, weight_base=None,
                         bias_base=None):
    kl, st = _lm_head_kl_fwd(hidden_base, hidden, weight, bias, mask)
    return kl, st, torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)


def _lm_head_kl_bwd(grad, hidden_base, hidden, weight, bias, mask, stats, need_base, need_hidden, need_weight,
                    need_bias, vocab_tile=0, row_block=0, weight_base=None, bias_base=None, need_weight_base=False,
                    need_bias_base=False):
    def maybe(flag, like):
        return torch.empty_like(like) if (flag and like is not None) else _placeholder(hidden)
    return (maybe(need_base, hidden_base), maybe(need_hidden, hidden), maybe(need_weight, weight),
            maybe(need_bias, bias), maybe(need_weight_base, weight_base), maybe(need_bias_base, bias_base))


def _route_plan(logits, entropy, threshold, tau_high, tau_low, top_k, labels=None):
    n, e = logits.shape
    f32, b = dict(dtype=torch.float32, device=logits.device), dict(dtype=torch.bool, device=logits.device)
    if labels is None:           # the masks are undefined tensors (None) without labels
        return torch.empty((n, e), **f32), torch.empty((n,), **b), None, None
    return torch.empty((n, e), **f32), torch.empty((n,), **b), torch.empty((n,), **b), torch.empty((n, e), **b)


def _decode_route(hidden, router_weight, entropy, threshold, tau_high, tau_low, top_k):
    return hidden.new_empty((hidden.shape[0], router_weight.shape[1]), dtype=torch.float32)


def _decode_group_linear(x, weights, biases, a_cat, b_t, expert_weights):
    return [x.new_empty((x.shape[0], w.shape[0])) for w in weights]


def _decode_linear(x, weight, bias=None, portable=False):
    return x.new_empty((x.shape[0], weight.shape[0]))


FAKES = {
    "asym_lora_fwd": _asym_lora_fwd,
    "asym_lora_bwd": _asym_lora_bwd,
    "tsallis_entropy_fwd": _tsallis_entropy_fwd,
    "tsallis_entropy_bwd": _tsallis_entropy_bwd,
    "lm_head_entropy_fwd": _lm_head_entropy_fwd,
    "lm_head_entropy_bwd": _lm_head_entropy_bwd,
    "route_plan": _route_plan,
    "decode_route": _decode_route,
    "decode_group_linear": _decode_group_linear,
    "decode_linear": _decode_linear,
    "lm_head_losses_fwd": _lm_head_losses_fwd,
    "lm_head_losses_bwd": _lm_head_losses_bwd,
    "lm_head_kl_fwd": _lm_head_kl_fwd,
    "lm_head_kl_bwd": _lm_head_kl_bwd,
    "lm_head_kl_fwd_grad": _lm_head_kl_fwd_grad,
}


def register_fakes(extra: dict | None = None) -> None:
    """Register the fakes of every native op that exists (idempotent)."""
    global _done
    if extra:
        FAKES.update(extra)
    if load_extension() is None:
        return
    for name, fn in FAKES.items():
        if getattr(fn, "_alter_registered", False) or native_op(name) is None:
            continue
        torch.library.register_fake(f"{NAMESPACE}::{name}", fn)
        fn._alter_registered = True
    _done = True
