"""Old path of the HF model access, now alter_kernels/model/hf.py (issue 14)."""
# SHIM(issue 14): removed at integration
from .model.hf import (UNSUPPORTED_HEAD_ATTRS, backbone_of, cache_kwarg, head_problem,  # noqa: F401
                       lm_head_of, position_ids_from_mask)
