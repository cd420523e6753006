// Numbers the C++/CUDA kernels share with the Python package. Each is written once, in
// alter_kernels/common/constants.py; the build (setup.py, CMakeLists.txt) reads it there and
// passes it as a compile definition, so nothing is retyped here and the op schemas stay as
// they are. tests/project/test_one_home.py checks that no kernel retypes the literal.
#pragma once
#include <cmath>

#ifndef ALTER_SHANNON_TOL
#error "ALTER_SHANNON_TOL is defined by the build from SHANNON_TOL in alter_kernels/common/constants.py"
#endif

namespace alter_kernels {

// |q - 1| below this is Shannon (no 0/0 near q = 1), as in every Python backend.
constexpr double kShannonTol = ALTER_SHANNON_TOL;

inline bool is_shannon(double q) { return std::fabs(q - 1.0) < kShannonTol; }

}  // namespace alter_kernels
