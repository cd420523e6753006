"""Old path of :mod:`alter_kernels.synthetic.tokenizer`."""
# SHIM(issue 14): removed at integration
from ..synthetic.tokenizer import *  # noqa: F401,F403
