"""Backend registry: one dispatch point per op, picking the implementation by device.

Each op registers its implementations here (reference, cpp, triton, cuda) with the devices
they support and a priority; ``pick`` returns the highest-priority implementation for a
tensor's device. ``use_backend`` forces one backend (tests use it to run every backend the
machine can run); the environment variable ``ALTER_KERNELS_BACKEND`` does the same globally
for the ops that have that backend.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import warnings
from typing import Callable

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
            import importlib
            # importing it registers torch.ops.alter_kernels.*
            _ext_module = importlib.import_module(__package__ + "._C")
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


def native_has_kernel(name: str, dispatch_key: str) -> bool:
    op = native_op(name)
    if op is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", dispatch_key)
    except Exception:
        return False


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        return True
    except Exception:
        return False


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclasses.dataclass
class Impl:
    backend: str
    fn: Callable
    supports: Callable[[torch.device], bool]
    priority: int | dict

    def priority_on(self, device: torch.device) -> int:
        if isinstance(self.priority, dict):
            return self.priority.get(device.type, self.priority.get("default", 0))
        return self.priority


_REGISTRY: dict[str, dict[str, Impl]] = {}
_local = threading.local()


def register(op: str, backend: str, fn: Callable, supports: Callable[[torch.device], bool] | None = None,
             priority: int | dict = 0) -> None:
    """Register ``fn`` as the ``backend`` implementation of ``op``.

    supports(device) says whether it can run on that device (default: everywhere). Among the
    implementations that support a device, the highest priority wins; ``priority`` is an int or
    a dict by device type, e.g. {"cuda": 20, "cpu": -10} for a Triton kernel that runs on the
    CPU only under TRITON_INTERPRET=1 and should then be picked only when forced.
    """
    _REGISTRY.setdefault(op, {})[backend] = Impl(backend, fn, supports or (lambda d: True), priority)


def ops() -> list[str]:
    return sorted(_REGISTRY)


def _forced() -> str | None:
    return getattr(_local, "forced", None)


def pick(op: str, device: torch.device | str) -> Impl:
    if torch.compiler.is_compiling():
        # torch.compile: the choice is made once, at trace time, and baked into the graph
        return _REGISTRY[op][_pick_name_for_compile(op, torch.device(device).type)]
    return _pick(op, device)


@torch.compiler.assume_constant_result
def _pick_name_for_compile(op: str, device_type: str) -> str:
    return _pick(op, torch.device(device_type)).backend


def _pick(op: str, device: torch.device | str) -> Impl:
    device = torch.device(device)
    impls = _REGISTRY.get(op)
    if not impls:
        raise KeyError(f"alter_kernels: no implementation registered for op {op!r}")
    forced = _forced()
    if forced is not None:
        impl = impls.get(forced)
        if impl is None:
            raise RuntimeError(f"alter_kernels: backend {forced!r} forced by use_backend() has no "
                               f"implementation of {op!r}; it has {sorted(impls)}")
        if not impl.supports(device):
            raise RuntimeError(f"alter_kernels: backend {forced!r} forced by use_backend() cannot run "
                               f"{op!r} on device {device}")
        return impl
    env = os.environ.get("ALTER_KERNELS_BACKEND")
    if env and env in impls and impls[env].supports(device):
        return impls[env]
    best = None
    for impl in impls.values():
        if impl.supports(device) and (best is None or impl.priority_on(device) > best.priority_on(device)):
            best = impl
    if best is None or best.priority_on(device) < 0:
        raise RuntimeError(f"alter_kernels: no backend of {op!r} runs on {device}")
    return best


def available(op: str, device: torch.device | str) -> list[str]:
    """Backends of ``op`` that can run on ``device``, best first."""
    device = torch.device(device)
    impls = [i for i in _REGISTRY.get(op, {}).values() if i.supports(device)]
    return [i.backend for i in sorted(impls, key=lambda i: -i.priority_on(device))]


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force every op to the given backend inside the block (None: automatic choice).

    An op without that backend, or whose backend cannot run on the tensors' device, raises
    instead of silently falling back, so a test that forces a backend really exercises it.
    """
    prev = _forced()
    _local.forced = name
    try:
        yield
    finally:
        _local.forced = prev


def backends(device: torch.device | str | None = None) -> dict[str, str]:
    """Which backend each op uses on ``device`` (default: cpu, and cuda too if present)."""
    devices = [torch.device(device)] if device is not None else [torch.device("cpu")] + (
        [torch.device("cuda")] if torch.cuda.is_available() else [])
    out = {}
    for op in ops():
        for dev in devices:
            key = op if len(devices) == 1 else f"{op}[{dev.type}]"
            try:
                out[key] = pick(op, dev).backend
            except RuntimeError:
                out[key] = "none"
    return out


def warn_if_extension_missing() -> None:
    """Warn once, at import, when the compiled extension cannot be loaded."""
    global _warned
    if _warned or load_extension() is not None:
        return
    _warned = True
    if os.environ.get("ALTER_KERNELS_QUIET"):
        return
    warnings.warn(
        "alter_kernels: the compiled extension (alter_kernels._C) could not be loaded "
        f"({_ext_error}); CPU ops fall back to slower backends: {backends('cpu')}. "
        "Build it with `pip install -e . --no-build-isolation`.",
        RuntimeWarning, stacklevel=3)
