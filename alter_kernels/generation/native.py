"""The extension's decode ops, reached in one place.

INTEGRATION (issue 14): ``_native_decode_ops`` is the only code of the decode path that touches
the backend registry; the lead replaces it with the public ops
``alter_kernels.ops.decode_route`` / ``alter_kernels.ops.decode_group_linear``.
"""
from __future__ import annotations

from .. import _backend


def _native_decode_ops(native: bool | None):
    """(decode_route, decode_group_linear) of the compiled extension, or (None, None).

    native: None use them when built, False never, True require them (RuntimeError if missing).
    """
    if native is False:
        return None, None
    route, group = _backend.native_op("decode_route"), _backend.native_op("decode_group_linear")
    if native and (route is None or group is None):
        raise RuntimeError("generate: native=True but the extension's decode ops are missing "
                           f"({_backend.extension_error() or 'not built with csrc/cpu/asym_lora_decode.cpp'})")
    return route, group
