# SHIM(issue 14): removed at integration
from ..kernels.reference.asym_lora import *  # noqa: F401,F403
