// Launchers of the CUDA entropy row kernels (tsallis_entropy.cu), shared with lm_head_entropy.cu.
#pragma once
#include <ATen/ATen.h>

namespace alter_kernels {
namespace entropy_cuda {

// x [N, V] (fp32/bf16/fp16, unit-stride last dim, any row stride) -> ent [N], lse [N], stats [N, 3]
// (all fp32, preallocated, contiguous). stats = [m, log Z, aux], aux = sum p^q (q != 1) or S_1.
void launch_fwd(const at::Tensor& x, double q, at::Tensor& ent, at::Tensor& lse, at::Tensor& stats);

// out [N, V] (x's dtype, unit-stride last dim; may be x itself) = d(g_ent S_q + g_lse lse)/dx.
// g_lse may be undefined (no lse gradient).
void launch_bwd(const at::Tensor& x, const at::Tensor& stats, const at::Tensor& g_ent, const at::Tensor& g_lse,
                double q, at::Tensor& out);

}  // namespace entropy_cuda
}  // namespace alter_kernels
