"""Numbers that several layers read, each written once here (issue 25, "one home per rule").

Routing defaults (ALTER_SPEC section 3): ``AlterConfig``'s fields, the ``route`` / ``route_plan``
ops and their backends take their defaults from these names; the CLI derives its defaults from
the config.

``SHANNON_TOL``: |q - 1| below it is Shannon. (1 - sum p^q) / (q - 1) cancels catastrophically
there in fp32 (q = 1 + 1e-9 gave NaN in C++ and 59.6 in the reference, where S_1 is about 3.4).
The public ops map such q to exactly 1.0 (:func:`shannon_q`); every backend still tests
:func:`is_shannon` itself, so a direct backend call agrees. The C++/CUDA kernels read the same
number: setup.py and CMakeLists.txt read the line ``SHANNON_TOL = ...`` below and pass it as the
compile definition ``ALTER_SHANNON_TOL`` (csrc/include/alter_constants.h), so the op schemas do
not change. tests/project/test_one_home.py fails when any of these literals is retyped elsewhere.
"""
from __future__ import annotations

THRESHOLD = 1.2   # entropy threshold theta: a token is high entropy when e_t > theta
TAU_HIGH = 0.8    # router temperature of high-entropy tokens
TAU_LOW = 0.01    # router temperature of low-entropy tokens
TOP_K = 3         # forget experts mixed into a high-entropy token (min(top_k, N) of them)

SHANNON_TOL = 1e-6


def is_shannon(q: float) -> bool:
    """Whether q is within SHANNON_TOL of 1 (every backend then takes its Shannon path)."""
    return abs(float(q) - 1.0) < SHANNON_TOL


def shannon_q(q: float) -> float:
    """q itself, or exactly 1.0 when q is within SHANNON_TOL of 1."""
    q = float(q)
    return 1.0 if is_shannon(q) else q


SHANNON_NOTE = f"within {SHANNON_TOL:g} of 1 means Shannon"   # for error messages and help text
