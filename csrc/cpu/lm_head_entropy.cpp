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
#include "entropy_common.h"

#include <torch/library.h>

#include <vector>

namespace alter_kernels {
namespace {

using namespace entropy_cpu;

void check_inputs(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  const char* op) {
  TORCH_CHECK(hidden.dim() == 2, op, ": hidden must be 2-D [N, d], got ", hidden.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == hidden.size(1), op,
              ": weight must be [V, d] with d = ", hidden.size(1), ", got ", weight.sizes());
  TORCH_CHECK(weight.size(0) >= 1, op, ": weight needs V >= 1 rows");
  auto ok = [](at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; };
  TORCH_CHECK(ok(hidden.scalar_type()) && ok(weight.scalar_type()), op,
              ": hidden and weight must be float32, bfloat16 or float16, got ", hidden.scalar_type(), " and ",
              weight.scalar_type());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [V] = [",
                weight.size(0), "], got ", bias->sizes());
  }
}

struct Tiles {
  int64_t vt, rb;
};

Tiles pick_tiles(int64_t N, int64_t V, int64_t vocab_tile, int64_t row_block) {
  // default: up to 1024 tokens per block and a ~16 MiB fp32 logits tile (4M entries), wide
  // enough in V that each GEMM runs near the speed of one big GEMM
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
void logits_tile(at::Tensor& z, const at::Tensor& h, const at::Tensor& wt, const at::Tensor& bt) {
  if (bt.defined()) at::addmm_out(z, bt.unsqueeze(0).expand({h.size(0), wt.size(0)}), h, wt.t());
  else at::mm_out(z, h, wt.t());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lm_head_entropy_fwd_cpu(const at::Tensor& hidden,
                                                                       const at::Tensor& weight,
                                                                       const std::optional<at::Tensor>& bias,
                                                                       double qd, int64_t vocab_tile,
                                                                       int64_t row_block) {
  check_inputs(hidden, weight, bias, "lm_head_entropy_fwd");
  TORCH_CHECK(std::isfinite(qd) && qd > 0, "lm_head_entropy_fwd: q must be finite and > 0, got ", qd);
  const int64_t N = hidden.size(0), V = weight.size(0);
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor ent = at::empty({N}, fopts), lse = at::empty({N}, fopts), aux = at::empty({N, kStats}, fopts);
  if (N == 0) return {ent, lse, aux};
  const Tiles T = pick_tiles(N, V, vocab_tile, row_block);
  const at::Tensor h32 = hidden.to(at::kFloat).contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor b32 = (bias.has_value() && bias->defined()) ? bias->to(at::kFloat).contiguous() : at::Tensor();
  std::vector<RowStat> stats(N);
  at::Tensor zbuf = at::empty({T.rb * T.vt}, fopts);
  const float q = static_cast<float>(qd);
  dispatch_mode(q_mode(qd), [&](auto tag) {
    constexpr int M = decltype(tag)::value;
    for (int64_t v0 = 0; v0 < V; v0 += T.vt) {
      const int64_t vt = std::min(T.vt, V - v0);
      const at::Tensor wt = w.narrow(0, v0, vt).to(at::kFloat).contiguous();
      const at::Tensor bt = b32.defined() ? b32.narrow(0, v0, vt) : at::Tensor();
      for (int64_t r0 = 0; r0 < N; r0 += T.rb) {
        const int64_t rb = std::min(T.rb, N - r0);
        at::Tensor z = zbuf.narrow(0, 0, rb * vt).view({rb, vt});
        logits_tile(z, h32.narrow(0, r0, rb), wt, bt);
        const float* pz = z.data_ptr<float>();
        at::parallel_for(0, rb, std::max<int64_t>(1, 16384 / vt), [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) fold_block<M>(pz + i * vt, vt, stats[r0 + i], q);
        });
      }
    }
    float* pe = ent.data_ptr<float>();
    float* pl = lse.data_ptr<float>();
    float* pa = aux.data_ptr<float>();
    for (int64_t r = 0; r < N; ++r) finalize<M>(stats[r], q, pe + r, pl + r, pa + r * kStats);
  });
  return {ent, lse, aux};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lm_head_entropy_bwd_cpu(
    const at::Tensor& grad_ent, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& stats, double qd, bool need_hidden, bool need_weight, bool need_bias, int64_t vocab_tile, int64_t row_block) {
  check_inputs(hidden, weight, bias, "lm_head_entropy_bwd");
  const int64_t N = hidden.size(0), V = weight.size(0), d = hidden.size(1);
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
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor dh = need_hidden ? at::zeros({N, d}, fopts) : at::empty({0}, fopts);
  at::Tensor dw = need_weight ? at::zeros({V, d}, fopts) : at::empty({0}, fopts);
  at::Tensor db = (need_bias && has_bias) ? at::zeros({V}, fopts) : at::empty({0}, fopts);
  if (N > 0 && (need_hidden || need_weight || (need_bias && has_bias))) {
    const Tiles T = pick_tiles(N, V, vocab_tile, row_block);
    const at::Tensor h32 = hidden.to(at::kFloat).contiguous();
    const at::Tensor w = weight.contiguous();
    const at::Tensor b32 = has_bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
    const at::Tensor ge = grad_ent.contiguous(), st = stats.contiguous();
    const at::Tensor gl = has_glse ? grad_lse->contiguous() : at::Tensor();
    const float* pge = ge.data_ptr<float>();
    const float* pgl = has_glse ? gl.data_ptr<float>() : nullptr;
    const float* pst = st.data_ptr<float>();
    at::Tensor zbuf = at::empty({T.rb * T.vt}, fopts);
    const float q = static_cast<float>(qd);
    dispatch_mode(q_mode(qd), [&](auto tag) {
      constexpr int M = decltype(tag)::value;
      for (int64_t v0 = 0; v0 < V; v0 += T.vt) {
        const int64_t vt = std::min(T.vt, V - v0);
        const at::Tensor wt = w.narrow(0, v0, vt).to(at::kFloat).contiguous();
        const at::Tensor bt = has_bias ? b32.narrow(0, v0, vt) : at::Tensor();
        for (int64_t r0 = 0; r0 < N; r0 += T.rb) {
          const int64_t rb = std::min(T.rb, N - r0);
          at::Tensor z = zbuf.narrow(0, 0, rb * vt).view({rb, vt});
          const at::Tensor hb = h32.narrow(0, r0, rb);
          logits_tile(z, hb, wt, bt);
          float* pz = z.data_ptr<float>();
          at::parallel_for(0, rb, std::max<int64_t>(1, 16384 / vt), [&](int64_t i0, int64_t i1) {
            for (int64_t i = i0; i < i1; ++i) {
              const int64_t r = r0 + i;
              grad_block<M>(pz + i * vt, pz + i * vt, vt, pst + r * kStats, pge[r], pgl ? pgl[r] : 0.f, q);
            }
          });
          if (need_hidden) dh.narrow(0, r0, rb).addmm_(z, wt);
          if (need_weight) dw.narrow(0, v0, vt).addmm_(z.t(), hb);
          if (need_bias && has_bias) db.narrow(0, v0, vt).add_(z.sum(0));
        }
      }
    });
  }
  if (need_hidden) dh = dh.to(hidden.scalar_type());
  if (need_weight) dw = dw.to(weight.scalar_type());
  if (need_bias && has_bias) db = db.to(bias->scalar_type());
  return {dh, dw, db};
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
