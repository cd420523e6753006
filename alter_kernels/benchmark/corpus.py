"""Old path of :mod:`alter_kernels.synthetic.corpus`."""
# SHIM(issue 14): removed at integration
from ..synthetic.corpus import *  # noqa: F401,F403
