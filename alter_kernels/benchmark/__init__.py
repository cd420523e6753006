"""Old path of :mod:`alter_kernels.synthetic` (the synthetic corpus and its tiny models)."""
# SHIM(issue 14): removed at integration
