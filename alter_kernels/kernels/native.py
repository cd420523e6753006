"""The compiled extension ``alter_kernels.kernels._C`` (beside this loader): loading it once, and looking up its ops.

Importing ``_C`` registers ``torch.ops.alter_kernels.*``. If it cannot be imported (not built,
or built against another torch), the package still works: ``warn_if_extension_missing`` warns
once and the registry picks the next backend of every op.
"""
from __future__ import annotations

import os
import warnings

import torch

NAMESPACE = "alter_kernels"

_ext_module = None
_ext_error: str | None = None
_ext_tried = False
_warned = False


def load_extension():
    """Import the compiled extension once. Returns the module or None (and remembers why)."""
    global _ext_module, _ext_error, _ext_tried
    if not _ext_tried:
        _ext_tried = True
        try:
            from . import _C  # registers torch.ops.alter_kernels.*
            _ext_module = _C
        except Exception as exc:  # ImportError, or an ABI mismatch (OSError / undefined symbol)
            _ext_error = f"{type(exc).__name__}: {exc}"
    return _ext_module


def extension_error() -> str | None:
    load_extension()
    return _ext_error


def native_op(name: str):
    """torch.ops.alter_kernels.<name> if the extension defines it, else None."""
    if load_extension() is None:
        return None
    try:
        return getattr(getattr(torch.ops, NAMESPACE), name)
    except (AttributeError, RuntimeError):
        return None


_kernel_cache: dict = {}


def native_has_kernel(name: str, dispatch_key: str) -> bool:
    """Whether the extension has a kernel of op ``name`` for a dispatch key ("CPU", "CUDA"); cached."""
    key = (name, dispatch_key)
    if key not in _kernel_cache:
        ok = native_op(name) is not None
        if ok:
            try:
                ok = torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", dispatch_key)
            except Exception:
                ok = False
        _kernel_cache[key] = ok
    return _kernel_cache[key]


def on_native(*names: str, device_type: str):
    """A ``devices`` predicate: the device is ``device_type`` and every op in ``names`` has a kernel there."""
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return lambda d: d.type == device_type and all(native_has_kernel(n, key) for n in names)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        return True
    except Exception:
        return False


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def on_triton(d: torch.device) -> bool:
    """Triton runs on CUDA, and on the CPU only under TRITON_INTERPRET=1 (how CI tests it)."""
    return triton_available() and (d.type == "cuda" or (d.type == "cpu" and triton_interpret()))


def warn_if_extension_missing(backends_on_cpu) -> None:
    """Warn once, at import, when the compiled extension cannot be loaded."""
    global _warned
    if _warned or load_extension() is not None:
        return
    _warned = True
    if os.environ.get("ALTER_KERNELS_QUIET"):
        return
    warnings.warn(
        "alter_kernels: the compiled extension (alter_kernels.kernels._C) could not be loaded "
        f"({_ext_error}); CPU ops fall back to slower backends: {backends_on_cpu()}. "
        "Build it with `pip install -e . --no-build-isolation`.",
        RuntimeWarning, stacklevel=3)
