"""Every implementation of every op: references, compiled (C++/CUDA) wrappers, Triton kernels,
autograd Functions, fakes, and the registry that picks one by device and dtype.

This layer never imports ``alter_kernels.ops`` (the public ops, with input checks, sit above
it). Importing it registers the table (``table.py``) and the fakes of the native ops.
"""
from . import registry
from .fake import register_fakes
from .native import extension_error, load_extension, native_has_kernel, native_op
from .registry import available, backends, pick, register, use_backend
from .table import register_all

register_all()
register_fakes()

__all__ = ["registry", "available", "backends", "pick", "register", "use_backend", "extension_error",
           "load_extension", "native_has_kernel", "native_op"]
