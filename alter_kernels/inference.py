"""Old path of the inference rule, now alter_kernels/model/inference.py (issue 14)."""
# SHIM(issue 14): removed at integration
from .model.inference import (_MIRRORED, STREAM_ATTR, EntropyStream, InferenceRule,  # noqa: F401
                              _mirror, _output_cache, attach_cache_state, attach_stream, check_model,
                              routing_from_next)
