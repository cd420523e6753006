// Shared row kernels of the CPU entropy ops (tsallis_entropy.cpp, lm_head_entropy.cpp).
//
// Include this header FIRST in a translation unit: it selects the at::vec instruction set
// (AVX-512 or AVX2, from the compiler's -march flags) before any ATen header is seen, inside a
// namespace of its own, so that it cannot clash with other files of the extension that use
// at::vec with torch's default (scalar) capability. Without -march=native (ALTER_PORTABLE=1)
// the same code compiles against the generic at::vec fallback: correct, slower.
#pragma once

#if !defined(CPU_CAPABILITY)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512
#define CPU_CAPABILITY alter_entropy_avx512
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY alter_entropy_avx2
#else
#define CPU_CAPABILITY alter_entropy_generic
#endif
#endif

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include "alter_constants.h"

namespace alter_kernels {
namespace entropy_cpu {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kBlock = 2048;  // elements folded per max/accumulate step (fits L1)

// Specialised forms of p^q given e = exp(t): fewer exp per element than exp(q t).
enum QMode : int { kShannon = 0, kQ2 = 1, kQ3 = 2, kQHalf = 3, kQ15 = 4, kGeneral = 5 };
// Mode of the LM-head loss ops without entropy (lm_head_losses_common.h): only max and Z tracked.
constexpr int kNoEnt = 100;

inline int q_mode(double q) {
  if (is_shannon(q)) return kShannon;  // alter_constants.h: the Python ops' tolerance
  if (q == 2.0) return kQ2;
  if (q == 3.0) return kQ3;
  if (q == 0.5) return kQHalf;
  if (q == 1.5) return kQ15;
  return kGeneral;
}

template <int M>
struct ModeTag {
  static constexpr int value = M;
};

template <typename F>
inline void dispatch_mode(int mode, F&& f) {
  switch (mode) {
    case kShannon: f(ModeTag<kShannon>{}); break;
    case kQ2: f(ModeTag<kQ2>{}); break;
    case kQ3: f(ModeTag<kQ3>{}); break;
    case kQHalf: f(ModeTag<kQHalf>{}); break;
    case kQ15: f(ModeTag<kQ15>{}); break;
    default: f(ModeTag<kGeneral>{}); break;
  }
}

inline fVec vexp(const fVec& x) { return x.exp_u20(); }

// e^q from e = exp(t) (t <= 0, clamped finite).
template <int M>
inline fVec pow_q(const fVec& e, const fVec& t, const fVec& qv) {
  if constexpr (M == kQ2) return e * e;
  else if constexpr (M == kQ3) return e * e * e;
  else if constexpr (M == kQHalf) return e.sqrt();
  else if constexpr (M == kQ15) return e * e.sqrt();
  else return vexp(t * qv);
}

// Running statistics of one row: max m, Z = sum exp(z - m), and
// Q = sum exp(q (z - m)) (q != 1) or Q = sum exp(z - m) (z - m) (Shannon).
struct RowStat {
  float m = -std::numeric_limits<float>::infinity();
  double z = 0.0;
  double qs = 0.0;
  bool nan = false;
};

// Calls f(vec) over x[0, n): full vectors, then one vector padded with -inf.
template <typename F>
inline void for_each_vec(const float* x, int64_t n, F&& f) {
  constexpr int64_t L = fVec::size();
  int64_t i = 0;
  for (; i + L <= n; i += L) f(fVec::loadu(x + i));
  if (i < n) {
    alignas(64) float tmp[L];
    std::fill(tmp, tmp + L, -std::numeric_limits<float>::infinity());
    std::memcpy(tmp, x + i, sizeof(float) * (n - i));
    f(fVec::loadu(tmp));
  }
}

// max of x[0, n) ignoring NaN lanes; sets *nan when a NaN was seen.
inline float block_max(const float* x, int64_t n, bool* nan) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
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

// Folds x[0, n) (fp32, contiguous) into the row statistics: one max sweep and one exp sweep
// over a block that sits in L1, so memory is read once.
template <int M>
inline void fold_block(const float* x, int64_t n, RowStat& s, float q) {
  if (s.nan) return;
  const float bm = block_max(x, n, &s.nan);
  if (s.nan) return;
  if (bm == -std::numeric_limits<float>::infinity()) return;  // all -inf: probability 0, nothing to add
  if (bm > s.m) {
    if (s.z > 0.0) {
      const double d = static_cast<double>(s.m) - static_cast<double>(bm);  // < 0, finite
      const double sc = std::exp(d);
      if constexpr (M == kShannon) s.qs = sc * (s.qs + d * s.z);
      else s.qs *= std::exp(static_cast<double>(q) * d);
      s.z *= sc;
    }
    s.m = bm;
  }
  const fVec mv(s.m), lowest(-FLT_MAX), qv(q);
  fVec za(0.f), qa(0.f);
  for_each_vec(x, n, [&](const fVec& v) {
    const fVec t = at::vec::maximum(v - mv, lowest);  // -inf -> -FLT_MAX: exp 0, 0 * t = 0
    const fVec e = vexp(t);
    za = za + e;
    if constexpr (M == kShannon) qa = at::vec::fmadd(e, t, qa);
    else qa = qa + pow_q<M>(e, t, qv);
  });
  s.z += static_cast<double>(at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, za));
  s.qs += static_cast<double>(at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return a + b; }, qa));
}

// Per-row statistics saved for the backward: [m, log Z, aux] with aux = sum p^q (q != 1) or S_1.
// log p = (z - m) - log Z keeps full fp32 precision where lse = m + log Z (large m) would not.
constexpr int64_t kStats = 3;

// Entropy, log-sum-exp and the saved statistics st[0..2] of one row.
template <int M>
inline void finalize(const RowStat& s, float q, float* ent, float* lse, float* st) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  if (s.nan) {
    *ent = *lse = st[0] = st[1] = st[2] = nan;
    return;
  }
  if (!(s.z > 0.0)) {  // every logit -inf: no distribution (the backward then yields NaN too)
    *ent = st[2] = nan;
    *lse = st[0] = st[1] = -inf;
    return;
  }
  const double logz = std::log(s.z);
  *lse = static_cast<float>(static_cast<double>(s.m) + logz);
  st[0] = s.m;
  st[1] = static_cast<float>(logz);
  if constexpr (M == kShannon) {
    const double e = logz - s.qs / s.z;
    *ent = st[2] = static_cast<float>(e);
  } else {
    const double spq = s.qs / std::pow(s.z, static_cast<double>(q));
    *ent = static_cast<float>((1.0 - spq) / (static_cast<double>(q) - 1.0));
    st[2] = static_cast<float>(spq);
  }
}

// Gradient of g_ent * S_q + g_lse * lse w.r.t. one row of logits x[0, n) (fp32):
//   q != 1: -q/(q-1) (p^q - p sum p^q);  q = 1: -p (log p + S_1);  d lse / dz = p.
// out may alias x. st = the row's saved statistics [m, log Z, aux].
// grad_block_c takes c_ent = -g_ent (q = 1) or -g_ent q/(q-1) (q != 1) in place of g_ent, and
// also serves M = kNoEnt (g_lse p alone).
template <int M>
inline void grad_block_c(const float* x, float* out, int64_t n, const float* st, float c_ent, float g_lse,
                         float q) {
  constexpr int64_t L = fVec::size();
  const fVec mv(st[0]), lzv(st[1]), lowest(-FLT_MAX), qv(q), glse(g_lse), c2(st[2]), c(c_ent);
  auto body = [&](const fVec& v) {
    const fVec t = at::vec::maximum((v - mv) - lzv, lowest);  // log p; NaN stays NaN
    const fVec p = vexp(t);
    if constexpr (M == kNoEnt) {
      return glse * p;
    } else {
      fVec d;
      if constexpr (M == kShannon) d = c * p * (t + c2);
      else d = c * (pow_q<M>(p, t, qv) - p * c2);
      return at::vec::fmadd(glse, p, d);
    }
  };
  int64_t i = 0;
  for (; i + L <= n; i += L) body(fVec::loadu(x + i)).store(out + i);
  if (i < n) body(fVec::loadu(x + i, n - i)).store(out + i, n - i);
}

template <int M>
inline void grad_block(const float* x, float* out, int64_t n, const float* st, float g_ent, float g_lse,
                       float q) {
  grad_block_c<M>(x, out, n, st, (M == kShannon) ? -g_ent : -g_ent * q / (q - 1.f), g_lse, q);
}

// Conversions between the storage dtype and an fp32 block buffer.
template <typename T>
inline void to_float(const T* src, float* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, sizeof(float) * n);
  } else {
    using bVec = at::vec::Vectorized<T>;
    int64_t i = 0;
    for (; i + bVec::size() <= n; i += bVec::size()) {
      auto [a, b] = at::vec::convert_to_float<T>(bVec::loadu(src + i));
      a.store(dst + i);
      b.store(dst + i + fVec::size());
    }
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

template <typename T>
inline void from_float(const float* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    if (src != dst) std::memcpy(dst, src, sizeof(float) * n);
  } else {
    using bVec = at::vec::Vectorized<T>;
    int64_t i = 0;
    for (; i + bVec::size() <= n; i += bVec::size()) {
      at::vec::convert_from_float<T>(fVec::loadu(src + i), fVec::loadu(src + i + fVec::size())).store(dst + i);
    }
    for (; i < n; ++i) dst[i] = static_cast<T>(src[i]);
  }
}

}  // namespace entropy_cpu
}  // namespace alter_kernels
