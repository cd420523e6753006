// Tsallis entropy straight from the LM head, CPU kernels: the [N, V] logits never exist.
//
// lm_head_entropy_fwd(hidden [N, d], weight [V, d], bias [V]?, q, vocab_tile, row_block)
//     -> (entropy [N], lse [N], stats [N, 3]) fp32 (stats: [m, log Z, aux], see entropy_common.h)
//   For each vocabulary tile (vocab_tile rows of W) and each block of row_block tokens, one ATen
//   GEMM makes a [row_block, vocab_tile] fp32 logits tile (bias fused via addmm), which is folded
//   into per-token online statistics (max, Z, Z_q) by the row kernels of entropy_common.h.
// lm_head_entropy_bwd(grad_ent [N], grad_lse [N]?, hidden, weight, bias?, stats, q, need_*...)
//     -> (d hidden, d weight, d bias)
//   recomputes each tile, turns it in place into dL/dlogits = g_ent dS/dz + g_lse p, and
//   accumulates d hidden += dZ W_tile, d W_tile += dZ^T H_blk, d bias_tile += colsum(dZ) with GEMMs.
// Extra memory: one logits tile, an fp32 copy of a W tile (bf16/fp16 weights only), fp32 copies
// of hidden (non-fp32 only) and the fp32 gradient accumulators. Everything accumulates in fp32.
#include "lm_head_tiles.h"

#include <vector>

namespace alter_kernels {
namespace {

using namespace entropy_cpu;
using namespace lm_head_cpu;

std::tuple<at::Tensor, at::Tensor, at::Tensor> lm_head_entropy_fwd_cpu(const at::Tensor& hidden,
                                                                       const at::Tensor& weight,
                                                                       const std::optional<at::Tensor>& bias,
                                                                       double qd, int64_t vocab_tile,
                                                                       int64_t row_block) {
  check_head(hidden, weight, bias, "lm_head_entropy_fwd");
  TORCH_CHECK(std::isfinite(qd) && qd > 0, "lm_head_entropy_fwd: q must be finite and > 0, got ", qd);
  const int64_t N = hidden.size(0);
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor ent = at::empty({N}, fopts), lse = at::empty({N}, fopts), aux = at::empty({N, kStats}, fopts);
  if (N == 0) return {ent, lse, aux};
  std::vector<RowStat> stats(N);
  const float q = static_cast<float>(qd);
  dispatch_mode(q_mode(qd), [&](auto tag) {
    constexpr int M = decltype(tag)::value;
    fold_tiles(hidden, weight, bias, vocab_tile, row_block,
               [&](float* x, int64_t vt, int64_t, int64_t r) { fold_block<M>(x, vt, stats[r], q); });
    float* pe = ent.data_ptr<float>();
    float* pl = lse.data_ptr<float>();
    float* pa = aux.data_ptr<float>();
    for (int64_t r = 0; r < N; ++r) finalize<M>(stats[r], q, pe + r, pl + r, pa + r * kStats);
  });
  return {ent, lse, aux};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lm_head_entropy_bwd_cpu(
    const at::Tensor& grad_ent, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& stats, double qd,
    bool need_hidden, bool need_weight, bool need_bias, int64_t vocab_tile, int64_t row_block) {
  check_head(hidden, weight, bias, "lm_head_entropy_bwd");
  const int64_t N = hidden.size(0);
  const bool has_bias = bias.has_value() && bias->defined();
  const bool has_glse = grad_lse.has_value() && grad_lse->defined();
  TORCH_CHECK(grad_ent.dim() == 1 && grad_ent.size(0) == N && grad_ent.scalar_type() == at::kFloat,
              "lm_head_entropy_bwd: grad_ent must be fp32 [N] with N = ", N, ", got ", grad_ent.sizes());
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == N && stats.size(1) == kStats && stats.scalar_type() == at::kFloat,
              "lm_head_entropy_bwd: stats must be the fp32 [N, 3] statistics of the forward, got ", stats.sizes());
  if (has_glse) {
    TORCH_CHECK(grad_lse->dim() == 1 && grad_lse->size(0) == N && grad_lse->scalar_type() == at::kFloat,
                "lm_head_entropy_bwd: grad_lse must be fp32 [N]");
  }
  HeadGrads grads(hidden, weight, has_bias, need_hidden, need_weight, need_bias);
  if (N > 0 && grads.any()) {
    const at::Tensor ge = grad_ent.contiguous(), st = stats.contiguous();
    const at::Tensor gl = has_glse ? grad_lse->contiguous() : at::Tensor();
    const float* pge = ge.data_ptr<float>();
    const float* pgl = has_glse ? gl.data_ptr<float>() : nullptr;
    const float* pst = st.data_ptr<float>();
    const float q = static_cast<float>(qd);
    dispatch_mode(q_mode(qd), [&](auto tag) {
      constexpr int M = decltype(tag)::value;
      grad_tiles(hidden, weight, bias, vocab_tile, row_block, grads, [&](float* x, int64_t vt, int64_t, int64_t r) {
        grad_block<M>(x, x, vt, pst + r * kStats, pge[r], pgl ? pgl[r] : 0.f, q);
      });
    });
  }
  return grads.result(hidden, weight, bias);
}

}  // namespace
}  // namespace alter_kernels

TORCH_LIBRARY_FRAGMENT(alter_kernels, m) {
  m.def(
      "lm_head_entropy_fwd(Tensor hidden, Tensor weight, Tensor? bias, float q, int vocab_tile=0, "
      "int row_block=0) -> (Tensor, Tensor, Tensor)");
  m.def(
      "lm_head_entropy_bwd(Tensor grad_ent, Tensor? grad_lse, Tensor hidden, Tensor weight, Tensor? bias, "
      "Tensor stats, float q, bool need_hidden, bool need_weight, bool need_bias, int vocab_tile=0, "
      "int row_block=0) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(alter_kernels, CPU, m) {
  m.impl("lm_head_entropy_fwd", &alter_kernels::lm_head_entropy_fwd_cpu);
  m.impl("lm_head_entropy_bwd", &alter_kernels::lm_head_entropy_bwd_cpu);
}
