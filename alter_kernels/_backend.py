# SHIM(issue 14): removed at integration. The registry moved to alter_kernels/kernels/.
from .kernels.native import *  # noqa: F401,F403
from .kernels.native import NAMESPACE, extension_error, load_extension, native_has_kernel, native_op  # noqa: F401
from .kernels.native import triton_available, triton_interpret  # noqa: F401
from .kernels.registry import *  # noqa: F401,F403
from .kernels.registry import _REGISTRY, forced_backend as _forced  # noqa: F401
from .kernels.registry import available, backends, pick, register, use_backend  # noqa: F401
