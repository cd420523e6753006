"""Old path of the PEFT interop, now alter_kernels/model/peft.py (issue 14)."""
# SHIM(issue 14): removed at integration
from .model.peft import _PREFIX, _read_peft, init_from_peft  # noqa: F401
