// The tiled logits loop shared by the CPU LM-head ops (lm_head_entropy.cpp, lm_head_losses.cpp,
// lm_head_kl.cpp): argument checks, the tile-size choice, the fp32 logits tile GEMM, the loop over
// vocabulary tiles and token blocks, and the head gradients accumulated tile by tile.
// Include FIRST in a translation unit: it includes entropy_common.h, which picks the vector
// instruction set.
#pragma once

#include "entropy_common.h"

#include <torch/library.h>

#include <optional>
#include <tuple>

namespace alter_kernels {
namespace lm_head_cpu {

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

// Tiling shared by the forward and the backward (the same tiles, so the backward recomputes the
// very logits the forward saw): up to 1024 tokens per block and a ~16 MiB fp32 logits tile (4M
// entries), wide enough in V that each GEMM runs near the speed of one big GEMM.
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

// fp32 contiguous copy of an optional bias, or an undefined tensor
inline at::Tensor bias32(const std::optional<at::Tensor>& b) {
  return (b.has_value() && b->defined()) ? b->to(at::kFloat).contiguous() : at::Tensor();
}

// Calls f(v0, vt, wt, r0, rb, hb, z) for every vocabulary tile [v0, v0 + vt) and token block
// [r0, r0 + rb), with wt the fp32 weight tile, hb = h32[r0 : r0 + rb] and z the fp32 [rb, vt]
// logits tile hb wt^T (+ bias tile), which f may overwrite. h32: fp32 contiguous hidden [N, d];
// w: contiguous weight [V, d] (any of the three dtypes); b32: bias32(bias).
template <typename F>
inline void for_each_tile(const at::Tensor& h32, const at::Tensor& w, const at::Tensor& b32, int64_t vocab_tile,
                          int64_t row_block, F&& f) {
  const int64_t N = h32.size(0), V = w.size(0);
  const Tiles T = pick_tiles(N, V, vocab_tile, row_block);
  at::Tensor zbuf = at::empty({T.rb * T.vt}, h32.options());
  for (int64_t v0 = 0; v0 < V; v0 += T.vt) {
    const int64_t vt = std::min(T.vt, V - v0);
    const at::Tensor wt = w.narrow(0, v0, vt).to(at::kFloat).contiguous();
    const at::Tensor bt = b32.defined() ? b32.narrow(0, v0, vt) : at::Tensor();
    for (int64_t r0 = 0; r0 < N; r0 += T.rb) {
      const int64_t rb = std::min(T.rb, N - r0);
      at::Tensor z = zbuf.narrow(0, 0, rb * vt).view({rb, vt});
      const at::Tensor hb = h32.narrow(0, r0, rb);
      logits_tile(z, hb, wt, bt);
      f(v0, vt, wt, r0, rb, hb, z);
    }
  }
}

// Calls f(i) for each row i < rb of a [rb, vt] tile, in parallel, about grain_elems entries a task.
template <typename F>
inline void parallel_rows(int64_t rb, int64_t vt, F&& f, int64_t grain_elems = 16384) {
  at::parallel_for(0, rb, std::max<int64_t>(1, grain_elems / vt), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) f(i);
  });
}

// d hidden, d weight, d bias of a one-head op, accumulated in fp32 tile by tile from the tile
// dZ = dL/dlogits: d hidden += dZ W_tile, d W_tile += dZ^T H_blk, d bias_tile += colsum(dZ).
// What was not asked (or a bias gradient without a bias) is a 0-element fp32 placeholder.
struct HeadGrads {
  bool nh, nw, nb;
  at::Tensor dh, dw, db;

  HeadGrads(const at::Tensor& hidden, const at::Tensor& weight, bool has_bias, bool need_hidden, bool need_weight,
            bool need_bias)
      : nh(need_hidden), nw(need_weight), nb(need_bias && has_bias) {
    auto fopts = hidden.options().dtype(at::kFloat);
    const int64_t N = hidden.size(0), V = weight.size(0), d = hidden.size(1);
    dh = nh ? at::zeros({N, d}, fopts) : at::empty({0}, fopts);
    dw = nw ? at::zeros({V, d}, fopts) : at::empty({0}, fopts);
    db = nb ? at::zeros({V}, fopts) : at::empty({0}, fopts);
  }

  bool any() const { return nh || nw || nb; }

  // z: dZ of the tile [r0, r0 + rb) x [v0, v0 + vt); wt, hb: as for_each_tile passes them
  void add(const at::Tensor& z, const at::Tensor& wt, const at::Tensor& hb, int64_t v0, int64_t r0) {
    if (nh) dh.narrow(0, r0, z.size(0)).addmm_(z, wt);
    if (nw) dw.narrow(0, v0, z.size(1)).addmm_(z.t(), hb);
    if (nb) db.narrow(0, v0, z.size(1)).add_(z.sum(0));
  }

  // the gradients in the dtypes of hidden, weight and bias
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result(const at::Tensor& hidden, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias) {
    if (nh) dh = dh.to(hidden.scalar_type());
    if (nw) dw = dw.to(weight.scalar_type());
    if (nb) db = db.to(bias->scalar_type());
    return {dh, dw, db};
  }
};

// The forward of a one-head op: row(x, vt, v0, r) for each row of each logits tile (x: the vt
// fp32 logits of token r over the vocabulary [v0, v0 + vt), writable).
template <typename F>
inline void fold_tiles(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       int64_t vocab_tile, int64_t row_block, F&& row) {
  for_each_tile(hidden.to(at::kFloat).contiguous(), weight.contiguous(), bias32(bias), vocab_tile, row_block,
                [&](int64_t v0, int64_t vt, const at::Tensor&, int64_t r0, int64_t rb, const at::Tensor&,
                    at::Tensor& z) {
                  float* pz = z.data_ptr<float>();
                  parallel_rows(rb, vt, [&](int64_t i) { row(pz + i * vt, vt, v0, r0 + i); });
                });
}

// The backward of a one-head op: recomputes each logits tile, turns each row in place into
// dL/dlogits with row(x, vt, v0, r) (as fold_tiles), and accumulates grads from the tile.
template <typename F>
inline void grad_tiles(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       int64_t vocab_tile, int64_t row_block, HeadGrads& grads, F&& row) {
  for_each_tile(hidden.to(at::kFloat).contiguous(), weight.contiguous(), bias32(bias), vocab_tile, row_block,
                [&](int64_t v0, int64_t vt, const at::Tensor& wt, int64_t r0, int64_t rb, const at::Tensor& hb,
                    at::Tensor& z) {
                  float* pz = z.data_ptr<float>();
                  parallel_rows(rb, vt, [&](int64_t i) { row(pz + i * vt, vt, v0, r0 + i); });
                  grads.add(z, wt, hb, v0, r0);
                });
}

}  // namespace lm_head_cpu
}  // namespace alter_kernels
