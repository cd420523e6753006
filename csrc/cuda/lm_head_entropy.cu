// LM-head entropy on CUDA without the [N, V] logits: tokens in chunks, one cuBLAS GEMM per chunk
// makes the chunk's fp32 logits (bf16/fp16 inputs: tensor-core GEMM with fp32 output where ATen
// offers it, else a rounded low-precision output upcast), the row kernels of tsallis_entropy.cu
// reduce it (forward) or turn it in place into dL/dlogits (backward), and d hidden / d weight
// come from two more GEMMs per chunk. At most one [chunk, V] fp32 tile exists: chunk = row_block,
// or as many tokens as fit in 256 MiB. In the backward, bf16/fp16 inputs use low-precision GEMMs
// (dL/dlogits rounded to the input dtype, fp32 accumulation); fp32 inputs stay fp32.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "entropy_cuda.h"
#include "lm_head_cuda.h"

namespace alter_kernels {
namespace {

using namespace lm_head_cuda;

std::tuple<at::Tensor, at::Tensor, at::Tensor> lm_head_entropy_fwd_cuda(const at::Tensor& hidden,
                                                                        const at::Tensor& weight,
                                                                        const std::optional<at::Tensor>& bias,
                                                                        double q, int64_t vocab_tile,
                                                                        int64_t row_block) {
  (void)vocab_tile;  // the CUDA path tiles tokens only: one cuBLAS GEMM over the whole vocabulary
  check_head_cuda(hidden, weight, bias, "lm_head_entropy_fwd");
  const at::cuda::CUDAGuard guard(hidden.device());
  const int64_t N = hidden.size(0), V = weight.size(0);
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor ent = at::empty({N}, fopts), lse = at::empty({N}, fopts), stats = at::empty({N, 3}, fopts);
  const at::Tensor b32 = opt_bias32(bias);
  const int64_t step = chunk_rows(N, V, row_block);
  for (int64_t s = 0; s < N; s += step) {
    const int64_t c = std::min(step, N - s);
    at::Tensor z = logits_fp32(hidden.narrow(0, s, c), weight, b32);
    at::Tensor e = ent.narrow(0, s, c), l = lse.narrow(0, s, c), st = stats.narrow(0, s, c);
    entropy_cuda::launch_fwd(z, q, e, l, st);
  }
  return {ent, lse, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lm_head_entropy_bwd_cuda(
    const at::Tensor& grad_ent, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& stats, double q,
    bool need_hidden, bool need_weight, bool need_bias, int64_t vocab_tile, int64_t row_block) {
  (void)vocab_tile;
  check_head_cuda(hidden, weight, bias, "lm_head_entropy_bwd");
  const at::cuda::CUDAGuard guard(hidden.device());
  const int64_t N = hidden.size(0), V = weight.size(0), d = hidden.size(1);
  const bool has_bias = bias.has_value() && bias->defined();
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor dh = need_hidden ? at::empty({N, d}, hidden.options()) : at::empty({0}, fopts);
  at::Tensor dw = need_weight ? at::zeros({V, d}, fopts) : at::empty({0}, fopts);
  at::Tensor db = (need_bias && has_bias) ? at::zeros({V}, fopts) : at::empty({0}, fopts);
  const at::Tensor b32 = opt_bias32(bias);
  const at::Tensor ge = grad_ent.contiguous(), st = stats.contiguous();
  const at::Tensor gl = (grad_lse.has_value() && grad_lse->defined()) ? grad_lse->contiguous() : at::Tensor();
  const bool lp = low_precision(hidden, weight);
  const at::Tensor w32 = (!lp && need_hidden) ? weight.to(at::kFloat) : at::Tensor();
  const int64_t step = chunk_rows(N, V, row_block);
  for (int64_t s = 0; s < N && (need_hidden || need_weight || (need_bias && has_bias)); s += step) {
    const int64_t c = std::min(step, N - s);
    const at::Tensor hb = hidden.narrow(0, s, c);
    at::Tensor z = logits_fp32(hb, weight, b32);
    entropy_cuda::launch_bwd(z, st.narrow(0, s, c), ge.narrow(0, s, c), gl.defined() ? gl.narrow(0, s, c) : gl, q,
                             z);
    chunk_grads(z, hb, weight, w32, dh, dw, db, s, need_hidden, need_weight, need_bias && has_bias);
  }
  if (need_weight) dw = dw.to(weight.scalar_type());
  if (need_bias && has_bias) db = db.to(bias->scalar_type());
  return {dh, dw, db};
}

}  // namespace
}  // namespace alter_kernels

TORCH_LIBRARY_IMPL(alter_kernels, CUDA, m) {
  m.impl("lm_head_entropy_fwd", &alter_kernels::lm_head_entropy_fwd_cuda);
  m.impl("lm_head_entropy_bwd", &alter_kernels::lm_head_entropy_bwd_cuda);
}
