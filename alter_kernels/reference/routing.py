# SHIM(issue 14): removed at integration
from ..kernels.reference.routing import *  # noqa: F401,F403
