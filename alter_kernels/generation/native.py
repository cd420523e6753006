"""The compiled decode ops for the decode path, picked once per generate call."""
from __future__ import annotations

import torch

from ..ops.decode import decode_kernels, decode_linear_kernel


def compiled_decode_ops(native: bool | None):
    """(decode_route, decode_group_linear) of a compiled CPU backend, or (None, None).

    native: None use them when built, False never, True require them (RuntimeError if missing).
    The decode path validates its tensors once, so it calls the picked implementations directly.
    """
    return decode_kernels(torch.device("cpu"), torch.float32, compiled=native)


def compiled_decode_linear(native: bool | None):
    """The compiled CPU ``decode_linear`` (fp32) when built and native is not False, else None."""
    return decode_linear_kernel(torch.device("cpu"), torch.float32, compiled=native)
