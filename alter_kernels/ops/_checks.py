"""Input checks shared by the public ops: clear errors that say what was found and what was expected."""
from __future__ import annotations

import math

import torch

from ..common.constants import SHANNON_NOTE, shannon_q

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_q(q, op: str) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or q <= 0:
        raise ValueError(f"{op}: q must be a finite number > 0 ({SHANNON_NOTE}), got {q!r}")
    return shannon_q(q)


def check_tensor(t, name: str, op: str, ndim: int | None = None, min_ndim: int | None = None,
                 float_only: bool = True):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if float_only and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float64, bfloat16 or float16, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{op}: {name} must have at least {min_ndim} dim(s), got shape {tuple(t.shape)}")


def check_shape(t, name: str, op: str, expected: tuple, what: str = ""):
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}{what}, got {tuple(t.shape)}")


def check_same_device(op: str, **tensors):
    """All tensors on one device (the C++ backends read raw memory: a meta or other-device tensor
    beside CPU ones must never reach them; the reference raises inside torch)."""
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        raise ValueError(f"{op}: all tensors must be on one device, got " + ", ".join(f"{n} on {d}" for n, d in devs.items()))


def check_features(d: int, op: str, name: str = "hidden") -> None:
    if d == 0:
        raise ValueError(f"{op}: {name} has d = 0 features in its last dim; expected d >= 1")
