// Tsallis entropy of softmax(logits), CUDA kernels (ALTER_SPEC section 2).
//
// Forward: one thread block per row. Each thread walks its share of the row with 16-byte
// vector loads (8 bf16/fp16 or 4 fp32 values) when the row is aligned, scalar loads otherwise,
// and keeps its own online statistics (max m, Z = sum exp(z - m), Q = sum exp(q (z - m)) or,
// for Shannon, sum exp(z - m) (z - m)), rescaled once per pack when the max grows. The block
// then merges the per-thread triples with warp shuffles and one shared-memory step. Output:
// entropy, log-sum-exp and stats [m, log Z, aux] (aux = sum p^q, or S_1) per row, all fp32.
// Backward: one block per row recomputes log p = (z - m) - log Z and writes the gradient with
// the same vector width. NaN anywhere in a row, or a row of all -inf, gives NaN for that row.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "alter_constants.h"
#include "entropy_cuda.h"

namespace alter_kernels {
namespace entropy_cuda {
namespace {

enum : int { kShannon = 0, kQ2 = 1, kGeneral = 2 };

struct Stat {
  float m, z, s;
};

template <int MODE>
__device__ __forceinline__ Stat merge(Stat a, Stat b, float q) {
  if (b.m > a.m) {
    Stat t = a;
    a = b;
    b = t;
  }
  if (b.z > 0.f) {  // b.m finite and <= a.m
    const float d = b.m - a.m;
    const float sc = __expf(d);
    a.z += b.z * sc;
    if (MODE == kShannon) a.s += sc * (b.s + d * b.z);
    else if (MODE == kQ2) a.s += b.s * sc * sc;
    else a.s += b.s * __expf(q * d);
  }
  return a;
}

template <int MODE>
__device__ __forceinline__ void raise_max(Stat& st, float nm, float q) {
  if (nm > st.m) {
    if (st.z > 0.f) {
      const float d = st.m - nm;
      const float sc = __expf(d);
      if (MODE == kShannon) st.s = sc * (st.s + d * st.z);
      else if (MODE == kQ2) st.s *= sc * sc;
      else st.s *= __expf(q * d);
      st.z *= sc;
    }
    st.m = nm;
  }
}

template <int MODE>
__device__ __forceinline__ void accumulate(Stat& st, float v, float q) {
  if (v == -INFINITY) return;  // probability 0 (also covers st.m == -inf)
  const float t = v - st.m;
  const float e = __expf(t);
  st.z += e;
  if (MODE == kShannon) st.s += e * t;
  else if (MODE == kQ2) st.s += e * e;
  else st.s += __expf(q * t);
}

template <typename T>
struct alignas(16) Pack {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

template <int MODE>
__device__ Stat block_reduce(Stat st, float q) {
  __shared__ Stat sh[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    Stat other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.z, o),
               __shfl_xor_sync(0xffffffffu, st.s, o)};
    st = merge<MODE>(st, other, q);
  }
  if (lane == 0) sh[warp] = st;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  if (warp == 0) {
    st = lane < nwarps ? sh[lane] : Stat{-INFINITY, 0.f, 0.f};
    for (int o = 16; o > 0; o >>= 1) {
      Stat other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.z, o),
                 __shfl_xor_sync(0xffffffffu, st.s, o)};
      st = merge<MODE>(st, other, q);
    }
  }
  return st;  // valid in thread 0
}

template <typename T, int MODE>
__global__ void tsallis_fwd_kernel(const T* __restrict__ x, int64_t row_stride, int64_t V, float q,
                                   float* __restrict__ ent, float* __restrict__ lse, float* __restrict__ stats) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * row_stride;
  Stat st{-INFINITY, 0.f, 0.f};
  int bad = 0;
  constexpr int kN = Pack<T>::kN;
  int64_t done = 0;
  if ((reinterpret_cast<uintptr_t>(xr) & 15) == 0) {
    const int64_t npack = V / kN;
    const Pack<T>* xp = reinterpret_cast<const Pack<T>*>(xr);
    for (int64_t i = threadIdx.x; i < npack; i += blockDim.x) {
      const Pack<T> pk = xp[i];
      float v[kN];
      float pm = -INFINITY;
#pragma unroll
      for (int k = 0; k < kN; ++k) {
        v[k] = static_cast<float>(pk.v[k]);
        bad |= (v[k] != v[k]);
        pm = fmaxf(pm, v[k]);
      }
      raise_max<MODE>(st, pm, q);
#pragma unroll
      for (int k = 0; k < kN; ++k) accumulate<MODE>(st, v[k], q);
    }
    done = npack * kN;
  }
  for (int64_t i = done + threadIdx.x; i < V; i += blockDim.x) {
    const float v = static_cast<float>(xr[i]);
    bad |= (v != v);
    raise_max<MODE>(st, v, q);
    accumulate<MODE>(st, v, q);
  }
  const int any_bad = __syncthreads_or(bad);
  st = block_reduce<MODE>(st, q);
  if (threadIdx.x == 0) {
    float* s3 = stats + 3 * row;
    if (any_bad) {
      ent[row] = lse[row] = s3[0] = s3[1] = s3[2] = NAN;
    } else if (!(st.z > 0.f)) {
      ent[row] = s3[2] = NAN;
      lse[row] = s3[0] = s3[1] = -INFINITY;
    } else {
      const float logz = logf(st.z);
      lse[row] = st.m + logz;
      s3[0] = st.m;
      s3[1] = logz;
      if (MODE == kShannon) {
        const float e = logz - st.s / st.z;
        ent[row] = s3[2] = e;
      } else {
        const float spq = st.s / expf(q * logz);
        ent[row] = (1.f - spq) / (q - 1.f);
        s3[2] = spq;
      }
    }
  }
}

template <int MODE>
__device__ __forceinline__ float grad_of(float v, float m, float logz, float aux, float c, float gl, float q) {
  const float t = (v - m) - logz;
  const float p = expf(t);
  float d;
  if (MODE == kShannon) d = (v == -INFINITY) ? 0.f : c * p * (t + aux);
  else if (MODE == kQ2) d = c * (p * p - p * aux);
  else d = c * (expf(q * t) - p * aux);
  return d + gl * p;
}

template <typename T, int MODE>
__global__ void tsallis_bwd_kernel(const T* __restrict__ x, int64_t row_stride, T* out, int64_t out_stride,
                                   int64_t V, const float* __restrict__ stats, const float* __restrict__ g_ent,
                                   const float* __restrict__ g_lse, float q) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * row_stride;
  T* orow = out + row * out_stride;
  const float m = stats[3 * row], logz = stats[3 * row + 1], aux = stats[3 * row + 2];
  const float g = g_ent[row];
  const float gl = g_lse ? g_lse[row] : 0.f;
  const bool bad = (m != m) || (m == -INFINITY);
  const float c = MODE == kShannon ? -g : -g * q / (q - 1.f);
  constexpr int kN = Pack<T>::kN;
  int64_t done = 0;
  if ((reinterpret_cast<uintptr_t>(xr) & 15) == 0 && (reinterpret_cast<uintptr_t>(orow) & 15) == 0) {
    const int64_t npack = V / kN;
    const Pack<T>* xp = reinterpret_cast<const Pack<T>*>(xr);
    Pack<T>* op = reinterpret_cast<Pack<T>*>(orow);
    for (int64_t i = threadIdx.x; i < npack; i += blockDim.x) {
      const Pack<T> pk = xp[i];
      Pack<T> res;
#pragma unroll
      for (int k = 0; k < kN; ++k) {
        const float d = bad ? NAN : grad_of<MODE>(static_cast<float>(pk.v[k]), m, logz, aux, c, gl, q);
        res.v[k] = static_cast<T>(d);
      }
      op[i] = res;
    }
    done = npack * kN;
  }
  for (int64_t i = done + threadIdx.x; i < V; i += blockDim.x) {
    const float d = bad ? NAN : grad_of<MODE>(static_cast<float>(xr[i]), m, logz, aux, c, gl, q);
    orow[i] = static_cast<T>(d);
  }
}

int pick_threads(int64_t V, int64_t per_thread) {
  const int64_t want = (V + per_thread - 1) / per_thread;
  int t = 32;
  while (t < 512 && t < want) t *= 2;
  return t;
}

template <typename F>
void dispatch_mode(double q, F&& f) {
  if (alter_kernels::is_shannon(q)) f(std::integral_constant<int, kShannon>{});  // alter_constants.h
  else if (q == 2.0) f(std::integral_constant<int, kQ2>{});
  else f(std::integral_constant<int, kGeneral>{});
}

}  // namespace

void launch_fwd(const at::Tensor& x, double q, at::Tensor& ent, at::Tensor& lse, at::Tensor& stats) {
  const int64_t N = x.size(0), V = x.size(1);
  if (N == 0) return;
  const at::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "tsallis_entropy_fwd_cuda", [&] {
    const int threads = pick_threads(V, Pack<scalar_t>::kN * 4);
    dispatch_mode(q, [&](auto mode) {
      constexpr int M = decltype(mode)::value;
      tsallis_fwd_kernel<scalar_t, M><<<static_cast<unsigned>(N), threads, 0, stream>>>(
          x.data_ptr<scalar_t>(), x.stride(0), V, static_cast<float>(q), ent.data_ptr<float>(),
          lse.data_ptr<float>(), stats.data_ptr<float>());
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_bwd(const at::Tensor& x, const at::Tensor& stats, const at::Tensor& g_ent, const at::Tensor& g_lse,
                double q, at::Tensor& out) {
  const int64_t N = x.size(0), V = x.size(1);
  if (N == 0) return;
  const at::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "tsallis_entropy_bwd_cuda", [&] {
    const int threads = pick_threads(V, Pack<scalar_t>::kN * 4);
    dispatch_mode(q, [&](auto mode) {
      constexpr int M = decltype(mode)::value;
      tsallis_bwd_kernel<scalar_t, M><<<static_cast<unsigned>(N), threads, 0, stream>>>(
          x.data_ptr<scalar_t>(), x.stride(0), out.data_ptr<scalar_t>(), out.stride(0), V,
          stats.data_ptr<float>(), g_ent.data_ptr<float>(), g_lse.defined() ? g_lse.data_ptr<float>() : nullptr,
          static_cast<float>(q));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace entropy_cuda

namespace {

void check_logits(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, ": logits must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 1, op, ": logits must be [N, V] with V >= 1, got ", x.sizes());
  TORCH_CHECK(x.size(1) == 1 || x.stride(1) == 1, op, ": the last dim of logits must be contiguous, got strides ",
              x.strides());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              op, ": logits must be float32, bfloat16 or float16, got ", x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tsallis_entropy_fwd_cuda(const at::Tensor& logits, double q) {
  check_logits(logits, "tsallis_entropy_fwd");
  TORCH_CHECK(std::isfinite(q) && q > 0, "tsallis_entropy_fwd: q must be finite and > 0, got ", q);
  const int64_t N = logits.size(0);
  auto opts = logits.options().dtype(at::kFloat);
  at::Tensor ent = at::empty({N}, opts), lse = at::empty({N}, opts), stats = at::empty({N, 3}, opts);
  entropy_cuda::launch_fwd(logits, q, ent, lse, stats);
  return {ent, lse, stats};
}

at::Tensor tsallis_entropy_bwd_cuda(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& stats,
                                    double q) {
  check_logits(logits, "tsallis_entropy_bwd");
  const int64_t N = logits.size(0);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == N && grad.scalar_type() == at::kFloat,
              "tsallis_entropy_bwd: grad must be fp32 [N]");
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == N && stats.size(1) == 3 && stats.scalar_type() == at::kFloat,
              "tsallis_entropy_bwd: stats must be the fp32 [N, 3] statistics of the forward");
  at::Tensor out = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  entropy_cuda::launch_bwd(logits, stats.contiguous(), grad.contiguous(), at::Tensor(), q, out);
  return out;
}

}  // namespace
}  // namespace alter_kernels

TORCH_LIBRARY_IMPL(alter_kernels, CUDA, m) {
  m.impl("tsallis_entropy_fwd", &alter_kernels::tsallis_entropy_fwd_cuda);
  m.impl("tsallis_entropy_bwd", &alter_kernels::tsallis_entropy_bwd_cuda);
}
