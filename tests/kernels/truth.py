"""Float64 ground truth for the kernel tests, written independently of alter_kernels.kernels.reference.

Each function materialises the whole [N, V] logits in float64 and applies the textbook formula
(log-sum-exp, then p = exp(z - lse)); autograd gives the gradients. None of it shares code with
the reference (which goes in chunks and slices, in fp32 for fp32 input), so a test that holds a
backend, the reference included, to this truth can fail on numbers.

NaN rules of the ops: a row holding NaN, or with no finite logit, gives NaN (and NaN gradients);
-inf logits are probability 0 with a zero gradient.
"""
from __future__ import annotations

import torch

IGNORE = -100


def _log_probs(z: torch.Tensor):
    """log p over the last dim, and the rows the ops return NaN for."""
    bad = z.isnan().any(-1) | (z == float("-inf")).all(-1)
    lse = torch.logsumexp(torch.where(bad[..., None], torch.zeros_like(z), z), -1)
    return z - lse[..., None], lse, bad


def _tsallis(logp: torch.Tensor, q: float) -> torch.Tensor:
    p = logp.exp()
    finite = p > 0
    safe = torch.where(finite, logp, torch.zeros_like(logp))
    if q == 1.0:
        return -torch.where(finite, p * safe, torch.zeros_like(p)).sum(-1)
    return (1.0 - torch.where(finite, torch.exp(q * safe), torch.zeros_like(p)).sum(-1)) / (q - 1.0)


def _nan_rows(t: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    return torch.where(bad, torch.full_like(t, float("nan")), t)


def tsallis(z: torch.Tensor, q: float) -> torch.Tensor:
    """S_q(softmax(z)) over the last dim; z float64."""
    logp, _, bad = _log_probs(z)
    return _nan_rows(_tsallis(logp, q), bad)


def nan_grad_rows(grad: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """The ops give a NaN gradient row for a NaN / all -inf row."""
    return torch.where(bad[..., None], torch.full_like(grad, float("nan")), grad)


def bad_rows(z: torch.Tensor) -> torch.Tensor:
    return _log_probs(z)[2]


def logits(h, w, b):
    z = h @ w.t()
    return z + b if b is not None else z


def lm_head_entropy(h, w, b, q):
    """(S_q, lse) of softmax(h w^T + b), float64."""
    logp, lse, bad = _log_probs(logits(h, w, b))
    return _nan_rows(_tsallis(logp, q), bad), _nan_rows(lse, bad)


def token_losses(h, w, b, y, q=None, ignore_index=IGNORE):
    """(nll, ihl, entropy or None, lse) per token; rows labelled ignore_index give 0.
    ihl = max(0, 1 + p(y) - max_{v != y} p(v)), the max over nothing (V = 1) taken as 0."""
    z = logits(h, w, b)
    logp, lse, bad = _log_probs(z)
    valid = y != ignore_index
    ys = torch.where(valid, y, torch.zeros_like(y))[:, None]
    p = logp.exp()
    nll = -logp.gather(-1, ys)[:, 0]
    if z.shape[-1] > 1:
        p_other = p.scatter(-1, ys, float("-inf")).amax(-1)
    else:
        p_other = torch.zeros_like(nll)
    ihl = torch.clamp(1.0 + p.gather(-1, ys)[:, 0] - p_other, min=0.0)
    ent = _tsallis(logp, q) if q is not None else None
    keep = lambda t: torch.where(valid, _nan_rows(t, bad), torch.zeros_like(t))  # noqa: E731
    return keep(nll), keep(ihl), (keep(ent) if ent is not None else None), keep(lse)


def kl(hb, h, w, b, mask=None, wb=None, bb=None):
    """KL(p_base || p_model) per token (0 where mask is False); p_base from (wb, bb) when given."""
    logp_b, _, bad_b = _log_probs(logits(hb, w if wb is None else wb, b if wb is None else bb))
    logp, _, bad = _log_probs(logits(h, w, b))
    pb = logp_b.exp()
    d = torch.where(pb > 0, pb * (logp_b - torch.where(pb > 0, logp, torch.zeros_like(logp))), torch.zeros_like(pb))
    out = _nan_rows(d.sum(-1), bad | bad_b)
    if mask is not None:
        out = torch.where(mask, out, torch.zeros_like(out))
    return out


def route_plan(logits, entropy, threshold, tau_high, tau_low, top_k, labels=None):
    """The routing rule of ALTER_SPEC section 3 written out row by row, in float64: high rows
    (entropy > threshold, NaN included) get the retain expert at 1 plus the top-k forget experts
    at their gate softmax(logits / tau_high); low rows one expert, the label where given (>= 0),
    else the argmax. Returns (weights [N, E] float64, high [N] bool)."""
    z = logits.double()
    n, e = z.shape
    weights = torch.zeros(n, e, dtype=torch.float64)
    high = ~(entropy <= threshold)
    for t in range(n):
        if bool(high[t]):
            gate = torch.softmax(z[t] / tau_high, -1)
            weights[t, 0] = 1.0
            for j in sorted(range(1, e), key=lambda j: -float(gate[j]))[:min(top_k, e - 1)]:
                weights[t, j] = gate[j]
        else:
            lab = int(labels[t]) if labels is not None else -1
            weights[t, lab if lab >= 0 else int(torch.argmax(z[t] / tau_low))] = 1.0
    return weights, high


def _grad_rows(t: torch.Tensor, mask) -> torch.Tensor:
    """t's value; its gradient only through the rows (or row, column entries) where mask holds."""
    if mask is None:
        return t
    return t.detach() + torch.where(mask, t - t.detach(), torch.zeros_like(t))


def asym_lora(x, weight, A, B, w, scale, a_grad_mask=None, b_grad_mask=None, bias=None):
    """y = x W^T (+ b) + s sum_e w_e (x A^T) B_e^T (ALTER_SPEC 1), with spec 4's isolation: a row
    outside a_grad_mask sends no gradient to A, a row with b_grad_mask[t, e] False none to B_e; x,
    the expert weights, W and b get theirs from every row. Each product is split into a value
    path (gradient to its left factor) and a masked path (gradient to the parameter)."""
    y = x @ weight.t() + (bias if bias is not None else 0.0)
    xd = x.detach()
    am = None if a_grad_mask is None else a_grad_mask[:, None]
    u = x @ A.detach().t() + _grad_rows(xd @ A.t(), am) - xd @ A.detach().t()
    ud = u.detach()
    for e in range(B.shape[0]):
        bm = None if b_grad_mask is None else b_grad_mask[:, e, None]
        ye = u @ B[e].detach().t() + _grad_rows(ud @ B[e].t(), bm) - ud @ B[e].detach().t()
        y = y + scale * w[:, e:e + 1] * ye
    return y
