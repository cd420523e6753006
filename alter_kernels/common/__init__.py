"""The bottom layer's helpers, shared by every other layer (docs/DESIGN.md, layer "common").

- :mod:`.fsio`: the one atomic writer, the output-directory lock, stale temp-file clean-up;
- :mod:`.text`: ``IGNORE_INDEX`` and the one default prompt format;
- :mod:`.rows`: the one row loader (:func:`~.rows.load_rows`) and :class:`~.rows.DataError`.
- :mod:`.constants`: the routing defaults and the Shannon tolerance (also compiled into C++/CUDA).

Nothing here imports the rest of the package (only :mod:`alter_kernels.version` /
:mod:`alter_kernels.config` may be used).
"""
