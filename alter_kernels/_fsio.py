"""Old path of :mod:`alter_kernels.common.fsio` (the atomic writer and the output lock)."""
# SHIM(issue 14): removed at integration
from .common.fsio import *  # noqa: F401,F403
from .common.fsio import _UMASK, _held, _no_link  # noqa: F401
