// Shared declarations of the alter_kernels C++ ops.
#pragma once
#include <cstdint>

namespace alter_kernels {
int64_t build_info_flags();
}  // namespace alter_kernels
