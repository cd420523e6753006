// Row kernels shared by the CPU LM-head loss ops (lm_head_losses.cpp, lm_head_kl.cpp).
// Include FIRST in a translation unit (after it, nothing else selects at::vec): it includes
// entropy_common.h (via lm_head_tiles.h), which picks the vector instruction set.
#pragma once

#include "lm_head_tiles.h"

#include <vector>

namespace alter_kernels {
namespace losses_cpu {

using namespace entropy_cpu;
using namespace lm_head_cpu;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

template <typename F>
inline void dispatch_loss_mode(bool with_entropy, double q, F&& f) {
  if (!with_entropy) f(ModeTag<kNoEnt>{});
  else dispatch_mode(q_mode(q), f);
}

// Online max and Z = sum exp(x - m) over x[0, n) (the entropy-free form of fold_block).
inline void fold_lz(const float* x, int64_t n, RowStat& s) {
  if (s.nan) return;
  const float bm = block_max(x, n, &s.nan);
  if (s.nan || bm == -kInf) return;
  if (bm > s.m) {
    if (s.z > 0.0) s.z *= std::exp(static_cast<double>(s.m) - static_cast<double>(bm));
    s.m = bm;
  }
  const fVec mv(s.m), lowest(-FLT_MAX);
  fVec za(0.f);
  for_each_vec(x, n, [&](const fVec& v) { za = za + vexp(at::vec::maximum(v - mv, lowest)); });
  s.z += static_cast<double>(at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, za));
}

// Sums run in fp32 vector lanes within a sub-block of kSub entries and in double across them:
// fp32 lane sums over a whole tile row (thousands of terms) would cost ~1e-6 relative in Z.
constexpr int64_t kSub = 256;

template <int M>
inline void fold_stats(const float* x, int64_t n, RowStat& s, float q) {
  for (int64_t o = 0; o < n; o += kSub) {
    const int64_t k = std::min(kSub, n - o);
    if constexpr (M == kNoEnt) fold_lz(x + o, k, s);
    else fold_block<M>(x + o, k, s, q);
  }
}

// Finite sum of a vector reduction.
inline float vsum(fVec v) {
  return at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, v);
}

inline void check_row_vec(const std::optional<at::Tensor>& t, int64_t N, const char* op, const char* name) {
  if (t.has_value() && t->defined()) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == N && t->scalar_type() == at::kFloat, op, ": ", name,
                " must be fp32 [N] with N = ", N, ", got ", t->sizes(), " ", t->scalar_type());
  }
}

// contiguous fp32 data of an optional [N] gradient, or nullptr
inline const float* opt_ptr(const std::optional<at::Tensor>& t, at::Tensor& keep) {
  if (!(t.has_value() && t->defined())) return nullptr;
  keep = t->contiguous();
  return keep.data_ptr<float>();
}

}  // namespace losses_cpu
}  // namespace alter_kernels
