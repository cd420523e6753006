// Row kernels shared by the CPU LM-head loss ops (lm_head_losses.cpp, lm_head_kl.cpp).
// Include FIRST in a translation unit (after it, nothing else selects at::vec): it includes
// entropy_common.h, which picks the vector instruction set.
#pragma once

#include "entropy_common.h"

#include <torch/library.h>

#include <vector>

namespace alter_kernels {
namespace losses_cpu {

using namespace entropy_cpu;

constexpr int kNoEnt = 100;  // mode: no entropy asked (only max and Z are tracked)
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

template <typename F>
inline void dispatch_loss_mode(bool with_entropy, double q, F&& f) {
  if (!with_entropy) f(ModeTag<kNoEnt>{});
  else dispatch_mode(q_mode(q), f);
}

// max of x[0, n) ignoring NaN lanes; sets *nan when a NaN was seen.
inline float block_max(const float* x, int64_t n, bool* nan) {
  fVec vm(-kInf);
  for_each_vec(x, n, [&](const fVec& v) { vm = at::vec::maximum(vm, v); });  // propagates NaN
  alignas(64) float lanes[fVec::size()];
  vm.store(lanes);
  float bm = -kInf;
  for (int64_t l = 0; l < fVec::size(); ++l) {
    if (std::isnan(lanes[l])) *nan = true;
    else bm = std::max(bm, lanes[l]);
  }
  return bm;
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

template <int M>
inline void fold_stats(const float* x, int64_t n, RowStat& s, float q) {
  if constexpr (M == kNoEnt) fold_lz(x, n, s);
  else fold_block<M>(x, n, s, q);
}

// Finite sum of a vector reduction.
inline float vsum(fVec v) {
  return at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, v);
}

// Tiling shared by the forward and the backward (the same tiles, so the backward recomputes the
// very logits the forward saw): up to 1024 tokens per block and a ~16 MiB fp32 logits tile.
struct Tiles {
  int64_t vt, rb;
};

inline Tiles pick_tiles(int64_t N, int64_t V, int64_t vocab_tile, int64_t row_block) {
  Tiles t;
  t.rb = row_block > 0 ? row_block : 1024;
  t.rb = std::max<int64_t>(1, std::min(t.rb, N));
  if (vocab_tile > 0) {
    t.vt = vocab_tile;
  } else {
    const int64_t want = ((int64_t(1) << 22) / t.rb + 255) / 256 * 256;
    t.vt = std::max<int64_t>(1024, want);
  }
  t.vt = std::max<int64_t>(1, std::min(t.vt, V));
  return t;
}

// fp32 [rb, vt] logits tile = H_blk W_tile^T (+ bias_tile)
inline void logits_tile(at::Tensor& z, const at::Tensor& h, const at::Tensor& wt, const at::Tensor& bt) {
  if (bt.defined()) at::addmm_out(z, bt.unsqueeze(0).expand({h.size(0), wt.size(0)}), h, wt.t());
  else at::mm_out(z, h, wt.t());
}

inline void check_head(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const char* op) {
  TORCH_CHECK(hidden.dim() == 2, op, ": hidden must be 2-D [N, d], got ", hidden.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == hidden.size(1), op, ": weight must be [V, d] with d = ",
              hidden.size(1), ", got ", weight.sizes());
  TORCH_CHECK(weight.size(0) >= 1, op, ": weight needs V >= 1 rows");
  auto ok = [](at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; };
  TORCH_CHECK(ok(hidden.scalar_type()) && ok(weight.scalar_type()), op,
              ": hidden and weight must be float32, bfloat16 or float16, got ", hidden.scalar_type(), " and ",
              weight.scalar_type());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [V] = [", weight.size(0),
                "], got ", bias->sizes());
  }
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
