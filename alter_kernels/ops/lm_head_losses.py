"""Public fused LM-head loss ops (issue 16): ``lm_head_token_losses`` and ``lm_head_kl``.

Input checks, then the registry's pick (kernels/registry.py) by device and dtype; the
implementations live in alter_kernels/kernels/ (reference, C++/CUDA through torch.ops, Triton),
registered in kernels/table.py.
"""
from __future__ import annotations

import torch

from ..kernels import registry
from ..common.text import IGNORE_INDEX
from ..kernels.types import TokenLosses
from ._checks import check_features, check_q, check_same_device, check_shape, check_tensor

TOKEN_LOSSES, KL = "lm_head_token_losses", "lm_head_kl"


# ---- input checks ----

def _check_head(op: str, weight, bias, d: int, **hidden):
    for name, h in hidden.items():
        check_tensor(h, name, op, min_ndim=1)
    check_tensor(weight, "weight", op, ndim=2)
    check_features(d, op)
    if weight.shape[1] != d:
        raise ValueError(f"{op}: weight must be [V, d] with d = hidden.shape[-1] = {d}, got {tuple(weight.shape)}")
    if weight.shape[0] == 0:
        raise ValueError(f"{op}: weight has V = 0 rows; expected V >= 1")
    if bias is not None:
        check_tensor(bias, "bias", op, ndim=1)
        check_shape(bias, "bias", op, (weight.shape[0],), " (V)")
    check_same_device(op, **hidden, weight=weight, bias=bias)
    for name, t in list(hidden.items()) + [("bias", bias)]:
        if t is not None and t.dtype != weight.dtype:
            raise TypeError(f"{op}: {name} and weight must have the same dtype, got {name} {t.dtype} and "
                            f"weight {weight.dtype}")


def _check_labels(labels, lead, v: int, ignore_index: int, op: str):
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{op}: labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{op}: labels must be an integer tensor, got {labels.dtype}")
    check_shape(labels, "labels", op, tuple(lead), " (hidden.shape[:-1])")
    if torch.compiler.is_compiling() or labels.numel() == 0:
        return  # under torch.compile the kernels check the range themselves
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= v))
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0, 0])
        raise ValueError(f"{op}: labels out of range: labels.flatten()[{i}] = {int(labels.reshape(-1)[i])}; "
                         f"expected 0 <= label < V = {v}, or ignore_index = {ignore_index}")


def lm_head_token_losses(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         bias: torch.Tensor | None = None, q: float | None = None,
                         ignore_index: int = IGNORE_INDEX) -> TokenLosses:
    """Per-token unlearning losses of softmax(hidden @ weight^T + bias), without the [N, V] logits.

    hidden [..., d], weight [V, d], labels [...] (integer; ``ignore_index`` rows are skipped),
    bias [V] or None, q > 0 or None. Returns ``TokenLosses(nll, ihl, entropy, lse)``, fp32
    tensors of shape [...] (float64 for float64 input):

    - nll = -log p(y);  ihl = max(0, 1 + p(y) - max_{v != y} p(v)) (ALTER's inverted hinge loss;
      a tied maximum shares its gradient evenly);  entropy = Tsallis S_q (q = 1: Shannon; None
      unless q is given);  lse = log sum_v exp(z_v).
    - ignored rows are 0 in every output and get a zero gradient (an all-ignored batch: zeros).

    Every output is differentiable w.r.t. hidden, and weight / bias when they require grad, for
    any combination of the outputs' gradients. Memory: O(N) statistics are saved; the backward
    recomputes vocabulary tiles of the logits. hidden, weight (and bias) must share dtype and
    device. Sum, mean or reduce per sequence as the method needs (e.g. NPO's sequence
    log-probability is -nll summed over a sequence).
    """
    op = "lm_head_token_losses"
    _check_head(op, weight, bias, hidden.shape[-1] if isinstance(hidden, torch.Tensor) else -1, hidden=hidden)
    _check_labels(labels, hidden.shape[:-1], weight.shape[0], int(ignore_index), op)
    if labels.device != hidden.device:
        raise ValueError(f"{op}: labels must be on the device of hidden ({hidden.device}), got {labels.device}")
    if q is not None:
        q = check_q(q, op)
    lead = hidden.shape[:-1]
    h2 = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1).to(torch.int64).contiguous()
    out = registry.pick(TOKEN_LOSSES, hidden.device, weight.dtype).fn(h2, weight, y, bias, q, int(ignore_index))
    return TokenLosses(*(None if t is None else t.reshape(lead) for t in out))


def _check_base_head(op: str, weight, weight_base, bias_base):
    if weight_base is None:
        if bias_base is not None:
            raise ValueError(f"{op}: bias_base needs weight_base (with weight_base=None the base side uses the "
                             f"shared head, weight and bias)")
        return
    check_tensor(weight_base, "weight_base", op, ndim=2)
    check_shape(weight_base, "weight_base", op, tuple(weight.shape), " (weight's shape)")
    if bias_base is not None:
        check_tensor(bias_base, "bias_base", op, ndim=1)
        check_shape(bias_base, "bias_base", op, (weight.shape[0],), " (V)")
    check_same_device(op, weight=weight, weight_base=weight_base, bias_base=bias_base)
    for name, t in (("weight_base", weight_base), ("bias_base", bias_base)):
        if t is not None and t.dtype != weight.dtype:
            raise TypeError(f"{op}: {name} and weight must have the same dtype, got {name} {t.dtype} and "
                            f"weight {weight.dtype}")


def lm_head_kl(hidden_base: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, *,
               bias: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               weight_base: torch.Tensor | None = None, bias_base: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token KL(p_base || p_model) without the [N, V] logits.

    p_model = softmax(hidden @ weight^T + bias); p_base = softmax(hidden_base @ weight_base^T +
    bias_base) with a base head of its own (the reference model's, e.g. when the trained model's
    head has moved; bias_base None: no base bias), or, with weight_base None (default), through
    the one shared head (weight, bias). hidden_base, hidden [..., d], weight / weight_base [V, d],
    bias / bias_base [V] or None, mask [...] bool or None (False: 0 and a zero gradient); every
    tensor has weight's dtype and device. Returns fp32 [...] (float64 for float64 input).

    Gradients: exact, for whatever requires grad. hidden gets dKL/dz = p - p_base (weight and bias
    likewise through the model's logits). The base side is a constant unless hidden_base /
    weight_base / bias_base require grad (pass them detached, or computed under no_grad, as the
    engine does); when they do, they get dKL/dz_b = p_base (log p_base - log p - KL). With a
    shared head, the gradients of weight / bias include the base side's share (the base logits
    use the same head); with a frozen head, the usual case, neither is computed. Memory: O(N)
    row statistics are saved and the backward recomputes logits tiles; when only hidden requires
    grad (a frozen head, a constant base), the C++ CPU kernel instead forms d hidden per unit
    gradient in the forward (4 GEMMs in all, not 5) and saves that [N, d] fp32 tensor.
    """
    op = "lm_head_kl"
    _check_head(op, weight, bias, hidden.shape[-1] if isinstance(hidden, torch.Tensor) else -1,
                hidden_base=hidden_base, hidden=hidden)
    _check_base_head(op, weight, weight_base, bias_base)
    if hidden_base.shape != hidden.shape:
        raise ValueError(f"{op}: hidden_base must have the shape of hidden {tuple(hidden.shape)}, "
                         f"got {tuple(hidden_base.shape)}")
    lead = hidden.shape[:-1]
    m = None
    if mask is not None:
        check_tensor(mask, "mask", op, float_only=False)
        check_shape(mask, "mask", op, tuple(lead), " (hidden.shape[:-1])")
        if mask.device != hidden.device:
            raise ValueError(f"{op}: mask must be on the device of hidden ({hidden.device}), got {mask.device}")
        m = mask.reshape(-1).to(torch.bool).contiguous()
    d = hidden.shape[-1]
    fn = registry.pick(KL, hidden.device, weight.dtype).fn
    kl = fn(hidden_base.reshape(-1, d), hidden.reshape(-1, d), weight, bias, m, weight_base=weight_base,
            bias_base=bias_base)
    return kl.reshape(lead)
