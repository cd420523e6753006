"""Old path of sequential unlearning's expert growth, now alter_kernels/model/experts.py (issue 14)."""
# SHIM(issue 14): removed at integration
from ..model.experts import FROZEN_ATTR, add_forget_experts, freeze_leading_experts, frozen_experts  # noqa: F401
