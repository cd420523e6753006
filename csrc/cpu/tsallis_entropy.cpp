// Tsallis entropy of softmax(logits) over the last dim, CPU kernels (ALTER_SPEC section 2).
//
// tsallis_entropy_fwd(logits [N, V], q) -> (entropy [N], lse [N], stats [N, 3]), all fp32:
//   one pass over each row (blocks of kBlock entries: max sweep + exp sweep while the block sits
//   in L1), online max / Z / Z_q with rescaling; stats = [m, log Z, aux], aux = sum p^q (q != 1)
//   or S_1 (q = 1).
// tsallis_entropy_bwd(grad [N], logits [N, V], stats [N, 3], q) -> grad_logits [N, V] (logits dtype):
//   recomputes p = exp(z - m - log Z) from the saved statistics, never from a saved [N, V] tensor.
// Rows may have any stride; the last dim must be unit-stride (the Python side copies otherwise).
// Accepts fp32, bf16 and fp16 (fp64 stays on the reference). Rows are split over threads with
// at::parallel_for.
#include "entropy_common.h"

#include <torch/library.h>

namespace alter_kernels {
namespace {

using namespace entropy_cpu;

void check_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be 2-D [N, V], got ", logits.sizes());
  TORCH_CHECK(logits.size(1) >= 1, op, ": logits need V >= 1 entries per row, got ", logits.sizes());
  TORCH_CHECK(logits.size(1) == 1 || logits.stride(1) == 1, op,
              ": the last dim of logits must be contiguous (stride 1), got strides ", logits.strides());
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16 ||
                  logits.scalar_type() == at::kHalf,
              op, ": logits must be float32, bfloat16 or float16, got ", logits.scalar_type());
}

int64_t grain_rows(int64_t V) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(V, 1)); }

template <typename T>
void fwd_impl(const at::Tensor& logits, double qd, at::Tensor& ent, at::Tensor& lse, at::Tensor& stats) {
  const int64_t N = logits.size(0), V = logits.size(1), rs = logits.stride(0);
  const T* base = logits.data_ptr<T>();
  float* pe = ent.data_ptr<float>();
  float* pl = lse.data_ptr<float>();
  float* pa = stats.data_ptr<float>();
  const float q = static_cast<float>(qd);
  dispatch_mode(q_mode(qd), [&](auto tag) {
    constexpr int M = decltype(tag)::value;
    at::parallel_for(0, N, grain_rows(V), [&](int64_t r0, int64_t r1) {
      alignas(64) float buf[kBlock];
      for (int64_t r = r0; r < r1; ++r) {
        const T* x = base + r * rs;
        RowStat s;
        for (int64_t b = 0; b < V; b += kBlock) {
          const int64_t n = std::min(kBlock, V - b);
          if constexpr (std::is_same_v<T, float>) {
            fold_block<M>(x + b, n, s, q);
          } else {
            to_float<T>(x + b, buf, n);
            fold_block<M>(buf, n, s, q);
          }
        }
        finalize<M>(s, q, pe + r, pl + r, pa + r * kStats);
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tsallis_entropy_fwd_cpu(const at::Tensor& logits, double q) {
  check_logits(logits, "tsallis_entropy_fwd");
  TORCH_CHECK(std::isfinite(q) && q > 0, "tsallis_entropy_fwd: q must be finite and > 0, got ", q);
  const int64_t N = logits.size(0);
  auto opts = logits.options().dtype(at::kFloat);
  at::Tensor ent = at::empty({N}, opts), lse = at::empty({N}, opts), stats = at::empty({N, kStats}, opts);
  if (N == 0) return {ent, lse, stats};
  switch (logits.scalar_type()) {
    case at::kFloat: fwd_impl<float>(logits, q, ent, lse, stats); break;
    case at::kBFloat16: fwd_impl<at::BFloat16>(logits, q, ent, lse, stats); break;
    default: fwd_impl<at::Half>(logits, q, ent, lse, stats); break;
  }
  return {ent, lse, stats};
}

template <typename T>
void bwd_impl(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& stats, double qd,
              at::Tensor& out) {
  const int64_t N = logits.size(0), V = logits.size(1), rs = logits.stride(0);
  const T* base = logits.data_ptr<T>();
  T* obase = out.data_ptr<T>();
  const float* pg = grad.data_ptr<float>();
  const float* pst = stats.data_ptr<float>();
  const float q = static_cast<float>(qd);
  dispatch_mode(q_mode(qd), [&](auto tag) {
    constexpr int M = decltype(tag)::value;
    at::parallel_for(0, N, grain_rows(V), [&](int64_t r0, int64_t r1) {
      alignas(64) float buf[kBlock];
      for (int64_t r = r0; r < r1; ++r) {
        const T* x = base + r * rs;
        T* o = obase + r * V;
        for (int64_t b = 0; b < V; b += kBlock) {
          const int64_t n = std::min(kBlock, V - b);
          if constexpr (std::is_same_v<T, float>) {
            grad_block<M>(x + b, o + b, n, pst + r * kStats, pg[r], 0.f, q);
          } else {
            to_float<T>(x + b, buf, n);
            grad_block<M>(buf, buf, n, pst + r * kStats, pg[r], 0.f, q);
            from_float<T>(buf, o + b, n);
          }
        }
      }
    });
  });
}

at::Tensor tsallis_entropy_bwd_cpu(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& stats,
                                   double q) {
  check_logits(logits, "tsallis_entropy_bwd");
  const int64_t N = logits.size(0);
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == N && grad.scalar_type() == at::kFloat,
              "tsallis_entropy_bwd: grad must be fp32 [N] with N = ", N, ", got ", grad.sizes(), " ", grad.scalar_type());
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == N && stats.size(1) == kStats && stats.scalar_type() == at::kFloat,
              "tsallis_entropy_bwd: stats must be the fp32 [N, 3] statistics of the forward, got ", stats.sizes());
  at::Tensor g = grad.contiguous(), st = stats.contiguous();
  at::Tensor out = at::empty(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  if (N == 0) return out;
  switch (logits.scalar_type()) {
    case at::kFloat: bwd_impl<float>(g, logits, st, q, out); break;
    case at::kBFloat16: bwd_impl<at::BFloat16>(g, logits, st, q, out); break;
    default: bwd_impl<at::Half>(g, logits, st, q, out); break;
  }
  return out;
}

}  // namespace
}  // namespace alter_kernels

TORCH_LIBRARY_FRAGMENT(alter_kernels, m) {
  m.def("tsallis_entropy_fwd(Tensor logits, float q) -> (Tensor, Tensor, Tensor)");
  m.def("tsallis_entropy_bwd(Tensor grad, Tensor logits, Tensor stats, float q) -> Tensor");
}

TORCH_LIBRARY_IMPL(alter_kernels, CPU, m) {
  m.impl("tsallis_entropy_fwd", &alter_kernels::tsallis_entropy_fwd_cpu);
  m.impl("tsallis_entropy_bwd", &alter_kernels::tsallis_entropy_bwd_cpu);
}
