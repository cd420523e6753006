// y = x W^T + b for a few fp32 rows of x (2..4: the adapted and the base stream of a decode step),
// each weight row read once from memory and dotted with every x row.
//
// Decoding is bound by the weight bytes: a 1-row GEMV streams W once, and so should 2-4 rows. ATen's
// fp32 GEMM packs W for M >= 2 (1.2-1.6x its GEMV on this Intel host, 1.5-4x on an AMD EPYC; its
// W x^T form reads W column-wise, 2.4-3x), so decode steps with the base stream use this kernel
// (measured by bench/few_rows.py). Torch-free: plain pointers and a range of output rows, so that
// the caller parallelises over outputs and a test can build it for each instruction set.
//
//   few_rows_range<M>(x [M, d_in], w [d_out, d_in], bias [d_out] or null, y [M, d_out],
//                     d_in, d_out, begin, end, portable)   computes outputs [begin, end)
//
// AVX-512F: 4 weight rows per iteration against the M x rows held in registers (4 x M accumulators
// of 16 lanes), the next 4 rows prefetched meanwhile, the d_in tail by masked loads. AVX2 + FMA: the same over 8 lanes (2 weight rows when
// M > 2, to stay within 16 registers), the tail in scalar code. Otherwise, or with portable = true:
// the plain loop (16 partial sums per row, a fixed order the compiler may vectorise). Every path
// accumulates in fp32; the summation order differs between them (each is tested against float64).
#pragma once

#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace alter_kernels {
namespace few_rows {

template <int M>
inline void portable_range(const float* x, const float* w, const float* bias, float* y, int64_t d_in, int64_t d_out,
                           int64_t begin, int64_t end) {
  for (int64_t o = begin; o < end; ++o) {
    const float* wr = w + o * d_in;
    float part[M][16] = {};
    int64_t c = 0;
    for (; c + 16 <= d_in; c += 16)
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < 16; ++j) part[m][j] += wr[c + j] * x[m * d_in + c + j];
    for (int m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t t = c; t < d_in; ++t) acc += wr[t] * x[m * d_in + t];
      for (int j = 0; j < 16; ++j) acc += part[m][j];
      y[m * d_out + o] = bias != nullptr ? acc + bias[o] : acc;
    }
  }
}

#if defined(__AVX512F__)
constexpr const char* kIsa = "avx512";

// R weight rows o..o+R-1 against the M x rows
template <int M, int R>
inline void block(const float* x, const float* w, const float* bias, float* y, int64_t d_in, int64_t d_out,
                  int64_t o, const float* pf) {
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  const float* wr = w + o * d_in;
  int64_t c = 0;
  for (; c + 16 <= d_in; c += 16) {
    __m512 xv[M];
    for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_ps(x + m * d_in + c);
    for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(pf + r * d_in + c), _MM_HINT_T0);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = _mm512_loadu_ps(wr + r * d_in + c);
      for (int m = 0; m < M; ++m) acc[r][m] = _mm512_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  if (c < d_in) {
    const __mmask16 k = static_cast<__mmask16>((1u << (d_in - c)) - 1u);
    __m512 xv[M];
    for (int m = 0; m < M; ++m) xv[m] = _mm512_maskz_loadu_ps(k, x + m * d_in + c);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = _mm512_maskz_loadu_ps(k, wr + r * d_in + c);
      for (int m = 0; m < M; ++m) acc[r][m] = _mm512_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      const float s = _mm512_reduce_add_ps(acc[r][m]);
      y[m * d_out + o + r] = bias != nullptr ? s + bias[o + r] : s;
    }
}

template <int M>
constexpr int kRows = 4;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr const char* kIsa = "avx2";

inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int M, int R>
inline void block(const float* x, const float* w, const float* bias, float* y, int64_t d_in, int64_t d_out,
                  int64_t o, const float* pf) {
  __m256 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  const float* wr = w + o * d_in;
  int64_t c = 0;
  for (; c + 8 <= d_in; c += 8) {
    __m256 xv[M];
    for (int m = 0; m < M; ++m) xv[m] = _mm256_loadu_ps(x + m * d_in + c);
    if ((c & 15) == 0)                                // one prefetch per 64-byte line
      for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(pf + r * d_in + c), _MM_HINT_T0);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_loadu_ps(wr + r * d_in + c);
      for (int m = 0; m < M; ++m) acc[r][m] = _mm256_fmadd_ps(wv, xv[m], acc[r][m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      float s = hsum256(acc[r][m]);
      for (int64_t t = c; t < d_in; ++t) s += wr[r * d_in + t] * x[m * d_in + t];
      y[m * d_out + o + r] = bias != nullptr ? s + bias[o + r] : s;
    }
}

template <int M>
constexpr int kRows = M > 2 ? 2 : 4;
#else
constexpr const char* kIsa = "portable";
#endif

template <int M>
inline void few_rows_range(const float* x, const float* w, const float* bias, float* y, int64_t d_in, int64_t d_out,
                           int64_t begin, int64_t end, bool portable) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  if (!portable) {
    constexpr int R = kRows<M>;
    int64_t o = begin;
    // software prefetch of the next block's rows while this one is summed (measured ~10% faster
    // than the hardware prefetchers alone on 4 interleaved row streams); the last block fetches itself
    for (; o + R <= end; o += R)
      block<M, R>(x, w, bias, y, d_in, d_out, o, w + (o + 2 * R <= end ? o + R : o) * d_in);
    for (; o < end; ++o) block<M, 1>(x, w, bias, y, d_in, d_out, o, w + o * d_in);
    return;
  }
#endif
  (void)portable;
  portable_range<M>(x, w, bias, y, d_in, d_out, begin, end);
}

}  // namespace few_rows
}  // namespace alter_kernels
