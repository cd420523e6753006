# SHIM(issue 14): removed at integration
from ..kernels.reference.decode import *  # noqa: F401,F403
