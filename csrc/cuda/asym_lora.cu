// CUDA kernels of asym_lora_fwd / asym_lora_bwd (schemas in csrc/cpu/asym_lora.cpp).
//
// Same formulation as the CPU kernel: cuBLAS (at::mm / addmm) for the GEMMs -- the base GEMM,
// the shrink u = x A^T, the one expansion GEMM against B_cat, and the backward GEMMs -- and small
// fused kernels for everything per row: building U_cat = s * w (x) u, the per-token gather for
// small N, and the backward row pass (du, masked du, dw and the masked U_cat in one kernel).
// Accumulation in fp32 (fp64 for fp64 input).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

#include <tuple>

namespace alter_kernels {
namespace {

using at::Tensor;

constexpr int64_t kGatherMaxTokens = 8;
constexpr int kThreads = 256;

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <typename T>
__global__ void build_ucat_kernel(const T* __restrict__ u, const T* __restrict__ w, T* __restrict__ U,
                                  int64_t N, int64_t E, int64_t r, T s) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;  // over N * E * r
  if (i >= N * E * r) return;
  const int64_t j = i % r;
  const int64_t ne = i / r;  // n * E + e
  const int64_t n = ne / E;
  U[i] = s * w[ne] * u[n * r + j];
}

template <typename T>
__global__ void gather_expand_kernel(const T* __restrict__ u, const T* __restrict__ w, const T* __restrict__ B,
                                     T* __restrict__ y, int64_t N, int64_t E, int64_t d_out, int64_t r, T s) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;  // over N * d_out
  if (i >= N * d_out) return;
  const int64_t n = i / d_out, o = i % d_out;
  const T* un = u + n * r;
  T acc = 0;
  for (int64_t e = 0; e < E; ++e) {
    const T f = w[n * E + e];
    if (f == T(0)) continue;
    const T* row = B + (e * d_out + o) * r;
    T dot = 0;
    for (int64_t j = 0; j < r; ++j) dot += row[j] * un[j];
    acc += f * dot;
  }
  y[i] += s * acc;
}

// One thread per row n: du (all rows), duA (a_grad_mask rows), dw, and the masked U_cat.
template <typename T>
__global__ void bwd_rows_kernel(const T* __restrict__ u, const T* __restrict__ w, const T* __restrict__ V,
                                const bool* __restrict__ am, const bool* __restrict__ bm, T* __restrict__ du,
                                T* __restrict__ duA, T* __restrict__ dw, T* __restrict__ Um, int64_t N, int64_t E,
                                int64_t r, T s) {
  const int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (n >= N) return;
  const T* un = u + n * r;
  const T* wn = w + n * E;
  const T* Vn = V ? V + n * E * r : nullptr;
  if (du) {
    const bool keep = am ? am[n] : true;
    for (int64_t j = 0; j < r; ++j) {
      T a = 0;
      for (int64_t e = 0; e < E; ++e) a += wn[e] * Vn[e * r + j];
      du[n * r + j] = s * a;
      if (duA && duA != du) duA[n * r + j] = keep ? s * a : T(0);
    }
  }
  if (dw) {
    for (int64_t e = 0; e < E; ++e) {
      T a = 0;
      for (int64_t j = 0; j < r; ++j) a += un[j] * Vn[e * r + j];
      dw[n * E + e] = s * a;
    }
  }
  if (Um) {
    for (int64_t e = 0; e < E; ++e) {
      const bool keep = bm ? bm[n * E + e] : true;
      const T f = s * wn[e];
      for (int64_t j = 0; j < r; ++j) Um[(n * E + e) * r + j] = keep ? f * un[j] : T(0);
    }
  }
}

Tensor b_cat(const Tensor& B, at::ScalarType acc) {
  const int64_t E = B.size(0), d_out = B.size(1), r = B.size(2);
  return B.to(acc).permute({1, 0, 2}).reshape({d_out, E * r}).contiguous();
}

std::tuple<Tensor, Tensor> asym_lora_fwd_cuda(const Tensor& x, const Tensor& weight, const Tensor& A, const Tensor& B,
                                              const Tensor& expert_weights, double scale,
                                              const std::optional<Tensor>& bias, int64_t mode) {
  TORCH_CHECK(x.is_cuda(), "asym_lora_fwd (CUDA): x must be a CUDA tensor");
  TORCH_CHECK(mode >= 0 && mode <= 2, "asym_lora_fwd: mode must be 0 (auto), 1 (cat GEMM) or 2 (gather)");
  const auto acc = acc_type(x.scalar_type());
  const bool same = x.scalar_type() == acc;
  const int64_t N = x.size(0), E = B.size(0), d_out = weight.size(0), r = A.size(0);
  const Tensor xa = same ? x : x.to(acc);
  const Tensor Aa = A.to(acc);
  Tensor u = at::mm(xa, Aa.t()).contiguous();
  Tensor y = (bias.has_value() && bias->defined()) ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  if (N == 0 || E == 0 || r == 0 || d_out == 0) return {y, u};
  Tensor ya = same ? y.contiguous() : y.to(acc).contiguous();
  const Tensor wa = expert_weights.to(acc).contiguous();
  const bool gather = mode == 2 || (mode == 0 && N <= kGatherMaxTokens);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "asym_lora_fwd_cuda", [&] {
    const scalar_t s = static_cast<scalar_t>(scale);
    if (gather) {
      const Tensor Ba = B.to(acc).contiguous();
      gather_expand_kernel<scalar_t><<<blocks_for(N * d_out), kThreads, 0, stream>>>(
          u.data_ptr<scalar_t>(), wa.data_ptr<scalar_t>(), Ba.data_ptr<scalar_t>(), ya.data_ptr<scalar_t>(), N, E,
          d_out, r, s);
    } else {
      Tensor U = at::empty({N, E * r}, u.options());
      build_ucat_kernel<scalar_t><<<blocks_for(N * E * r), kThreads, 0, stream>>>(
          u.data_ptr<scalar_t>(), wa.data_ptr<scalar_t>(), U.data_ptr<scalar_t>(), N, E, r, s);
      ya.addmm_(U, b_cat(B, acc).t());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {same ? ya : ya.to(x.scalar_type()), u};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> asym_lora_bwd_cuda(
    const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& A, const Tensor& B,
    const Tensor& expert_weights, const Tensor& u, double scale, const std::optional<Tensor>& a_grad_mask,
    const std::optional<Tensor>& b_grad_mask, bool need_dx, bool need_dA, bool need_dB, bool need_dw) {
  const auto acc = acc_type(x.scalar_type());
  const bool same = x.scalar_type() == acc;
  const int64_t N = x.size(0), E = B.size(0), d_out = weight.size(0), r = A.size(0);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == N && grad.size(1) == d_out, "asym_lora_bwd: grad must be [N, d_out]");
  TORCH_CHECK(u.scalar_type() == acc && u.size(0) == N && u.size(1) == r, "asym_lora_bwd: u must be [N, r], acc dtype");
  const bool has_am = a_grad_mask.has_value() && a_grad_mask->defined();
  const bool has_bm = b_grad_mask.has_value() && b_grad_mask->defined();
  Tensor dx, dA, dB, dw;
  const Tensor Aa = A.to(acc);
  if (N == 0 || E == 0 || r == 0 || d_out == 0) {
    if (need_dx) dx = at::mm(grad, weight);
    if (need_dA) dA = at::zeros_like(A);
    if (need_dB) dB = at::zeros_like(B);
    if (need_dw) dw = at::zeros_like(expert_weights);
    return {dx, dA, dB, dw};
  }
  const Tensor gf = (same ? grad : grad.to(acc)).contiguous();
  const Tensor wa = expert_weights.to(acc).contiguous();
  const Tensor uc = u.contiguous();
  const bool need_du = need_dx || need_dA;
  const bool need_V = need_du || need_dw;
  Tensor V = need_V ? at::mm(gf, b_cat(B, acc)).contiguous() : Tensor();
  Tensor du = need_du ? at::empty({N, r}, u.options()) : Tensor();
  Tensor duA = (need_dA && has_am) ? at::empty({N, r}, u.options()) : du;
  Tensor dwa = need_dw ? at::empty({N, E}, u.options()) : Tensor();
  Tensor Um = need_dB ? at::empty({N, E * r}, u.options()) : Tensor();
  const Tensor am = has_am ? a_grad_mask->contiguous() : Tensor();
  const Tensor bm = has_bm ? b_grad_mask->contiguous() : Tensor();
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc, "asym_lora_bwd_cuda", [&] {
    bwd_rows_kernel<scalar_t><<<blocks_for(N), kThreads, 0, stream>>>(
        uc.data_ptr<scalar_t>(), wa.data_ptr<scalar_t>(), need_V ? V.data_ptr<scalar_t>() : nullptr,
        has_am ? am.data_ptr<bool>() : nullptr, has_bm ? bm.data_ptr<bool>() : nullptr,
        need_du ? du.data_ptr<scalar_t>() : nullptr, (need_dA && has_am) ? duA.data_ptr<scalar_t>() : nullptr,
        need_dw ? dwa.data_ptr<scalar_t>() : nullptr, need_dB ? Um.data_ptr<scalar_t>() : nullptr, N, E, r,
        static_cast<scalar_t>(scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (need_dx) {
    dx = at::mm(grad, weight);
    if (same) dx.addmm_(du, Aa);
    else dx = at::addmm(dx.to(acc), du, Aa).to(x.scalar_type());
  }
  if (need_dA) dA = at::mm(duA.t(), same ? x : x.to(acc)).to(A.scalar_type());
  if (need_dB) dB = at::mm(gf.t(), Um).view({d_out, E, r}).permute({1, 0, 2}).to(B.scalar_type()).contiguous();
  if (need_dw) dw = dwa.to(expert_weights.scalar_type());
  return {dx, dA, dB, dw};
}

}  // namespace
}  // namespace alter_kernels

TORCH_LIBRARY_IMPL(alter_kernels, CUDA, m) {
  m.impl("asym_lora_fwd", &alter_kernels::asym_lora_fwd_cuda);
  m.impl("asym_lora_bwd", &alter_kernels::asym_lora_bwd_cuda);
}
