"""Backend registry: one dispatch point per op, picking the implementation by device and dtype.

Every implementation is registered in ONE table (``kernels/table.py``) with the devices and
dtypes it supports and a priority. ``pick(op, device, dtype)`` returns the highest-priority
implementation that supports both. A kernel that accumulates in fp32 does not list float64:
float64 input goes to the next backend (the reference), decided here, not inside the kernel.

``use_backend`` forces one backend (tests use it to run every backend the machine can run); a
forced backend that cannot run on the device raises instead of falling back, so a test that
forces it really exercises it; one that runs on the device but not on the dtype (float64 on an
fp32 kernel) yields to the best backend that does, as documented in the table. The environment
variable ``ALTER_KERNELS_BACKEND`` prefers a backend globally where the op has it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from typing import Callable

import torch


@dataclasses.dataclass
class Impl:
    op: str
    backend: str
    fn: Callable
    devices: Callable[[torch.device], bool]
    dtypes: frozenset | None = None          # None: every dtype the op accepts
    priority: int | dict = 0

    def priority_on(self, device: torch.device) -> int:
        if isinstance(self.priority, dict):
            return self.priority.get(device.type, self.priority.get("default", 0))
        return self.priority

    def supports(self, device: torch.device, dtype: torch.dtype | None = None) -> bool:
        return self.devices(device) and (dtype is None or self.dtypes is None or dtype in self.dtypes)


_REGISTRY: dict[str, dict[str, Impl]] = {}
_local = threading.local()
_generation = [0]          # bumped on every register(): lets callers memoise pick()


def everywhere(device: torch.device) -> bool:
    return True


def register(op: str, backend: str, fn: Callable, devices: Callable[[torch.device], bool] | None = None,
             dtypes=None, priority: int | dict = 0) -> None:
    """Register ``fn`` as the ``backend`` implementation of ``op`` (kernels/table.py does it for
    every built-in op; other code may add backends the same way).

    devices(device) says whether it can run there (default: everywhere); dtypes the input dtypes
    it takes (None: all); ``priority`` an int or a dict by device type, e.g. {"cuda": 20, "cpu": -10}
    for a Triton kernel that runs on the CPU only under TRITON_INTERPRET=1 and should then be
    picked only when forced.
    """
    _REGISTRY.setdefault(op, {})[backend] = Impl(op, backend, fn, devices or everywhere,
                                                 frozenset(dtypes) if dtypes is not None else None, priority)
    _generation[0] += 1


def ops() -> list[str]:
    return sorted(_REGISTRY)


def forced_backend() -> str | None:
    """The backend forced by ``use_backend`` in this thread, or None."""
    return getattr(_local, "forced", None)


def cache_key() -> tuple:
    """Everything ``pick`` depends on besides (op, device, dtype): memoise picks on it."""
    return (forced_backend(), os.environ.get("ALTER_KERNELS_BACKEND"), os.environ.get("TRITON_INTERPRET"),
            _generation[0])


def pick(op: str, device: torch.device | str, dtype: torch.dtype | None = None) -> Impl:
    if torch.compiler.is_compiling():
        # torch.compile: the choice is made once, at trace time, and baked into the graph
        return _REGISTRY[op][_pick_name_for_compile(op, torch.device(device).type, dtype)]
    return _pick(op, torch.device(device), dtype)


@torch.compiler.assume_constant_result
def _pick_name_for_compile(op: str, device_type: str, dtype) -> str:
    return _pick(op, torch.device(device_type), dtype).backend


def _best(op: str, impls: dict, device: torch.device, dtype) -> Impl:
    best = None
    for impl in impls.values():
        if impl.supports(device, dtype) and (best is None or impl.priority_on(device) > best.priority_on(device)):
            best = impl
    if best is None or best.priority_on(device) < 0:
        raise RuntimeError(f"alter_kernels: no backend of {op!r} runs on {device}"
                           + (f" with {dtype}" if dtype is not None else ""))
    return best


def _pick(op: str, device: torch.device, dtype) -> Impl:
    impls = _REGISTRY.get(op)
    if not impls:
        raise KeyError(f"alter_kernels: no implementation registered for op {op!r}")
    forced = forced_backend()
    if forced is not None:
        impl = impls.get(forced)
        if impl is None:
            raise RuntimeError(f"alter_kernels: backend {forced!r} forced by use_backend() has no "
                               f"implementation of {op!r}; it has {sorted(impls)}")
        if not impl.devices(device):
            raise RuntimeError(f"alter_kernels: backend {forced!r} forced by use_backend() cannot run "
                               f"{op!r} on device {device}")
        return impl if impl.supports(device, dtype) else _best(op, impls, device, dtype)
    env = os.environ.get("ALTER_KERNELS_BACKEND")
    if env and env in impls and impls[env].supports(device, dtype):
        return impls[env]
    return _best(op, impls, device, dtype)


def available(op: str, device: torch.device | str, dtype: torch.dtype | None = None) -> list[str]:
    """Backends of ``op`` that can run on ``device`` (and ``dtype``), best first."""
    device = torch.device(device)
    impls = [i for i in _REGISTRY.get(op, {}).values() if i.supports(device, dtype)]
    return [i.backend for i in sorted(impls, key=lambda i: -i.priority_on(device))]


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force every op to the given backend inside the block (None: automatic choice).

    An op without that backend, or whose backend cannot run on the tensors' device, raises
    instead of silently falling back, so a test that forces a backend really exercises it.
    """
    prev = forced_backend()
    _local.forced = name
    try:
        yield
    finally:
        _local.forced = prev


def backends(device: torch.device | str | None = None) -> dict[str, str]:
    """Which backend each op uses on ``device`` for fp32 input (default: cpu, and cuda too if present)."""
    devices = [torch.device(device)] if device is not None else [torch.device("cpu")] + (
        [torch.device("cuda")] if torch.cuda.is_available() else [])
    out = {}
    for op in ops():
        for dev in devices:
            key = op if len(devices) == 1 else f"{op}[{dev.type}]"
            try:
                out[key] = pick(op, dev, torch.float32).backend
            except RuntimeError:
                out[key] = "none"
    return out
