// Host helpers shared by the CUDA LM-head ops (lm_head_entropy.cu, lm_head_losses.cu): the token
// chunk size, the chunk's fp32 logits GEMM, the argument checks and the head gradients of a chunk.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <optional>

namespace alter_kernels {
namespace lm_head_cuda {

// At most this many bytes of fp32 logits tiles exist at once.
constexpr int64_t kTileBytes = int64_t(256) << 20;

// Tokens per chunk: row_block, or as many as fit `tiles` fp32 [chunk, V] tiles in kTileBytes.
inline int64_t chunk_rows(int64_t N, int64_t V, int64_t row_block, int tiles = 1) {
  if (row_block > 0) return std::max<int64_t>(1, std::min(row_block, N));
  return std::max<int64_t>(1, std::min<int64_t>(N, kTileBytes / (4 * V * tiles)));
}

inline bool low_precision(const at::Tensor& h, const at::Tensor& w) {
  return h.scalar_type() == w.scalar_type() && (h.scalar_type() == at::kBFloat16 || h.scalar_type() == at::kHalf);
}

// fp32 logits h w^T (+ b32) of a chunk: a bf16/fp16 GEMM with fp32 output where ATen offers it,
// else the rounded low-precision output upcast; fp32 for anything else.
inline at::Tensor logits_fp32(const at::Tensor& h, const at::Tensor& w, const at::Tensor& b32) {
  at::Tensor z;
  if (low_precision(h, w)) {
    try {
      z = at::mm(h, w.t(), at::kFloat);  // aten::mm.dtype: fp32 output of a bf16/fp16 GEMM
    } catch (const c10::Error&) {
      z = at::mm(h, w.t()).to(at::kFloat);
    }
  } else {
    z = at::mm(h.to(at::kFloat), w.to(at::kFloat).t());
  }
  if (b32.defined()) z.add_(b32);
  return z;
}

inline at::Tensor opt_bias32(const std::optional<at::Tensor>& bias) {
  return (bias.has_value() && bias->defined()) ? bias->to(at::kFloat) : at::Tensor();
}

// d hidden rows of a chunk, d W and d bias accumulation from the chunk's dL/dz. bf16/fp16 inputs:
// dz rounded to their dtype, low-precision GEMMs (fp32 accumulation); else fp32 GEMMs with
// w32 = the fp32 weight (needed only for d hidden).
inline void chunk_grads(const at::Tensor& dz, const at::Tensor& hb, const at::Tensor& weight, const at::Tensor& w32,
                        at::Tensor& dh, at::Tensor& dw, at::Tensor& db, int64_t s, bool need_h, bool need_w,
                        bool need_b) {
  if (need_b) db.add_(dz.sum(0));
  if (low_precision(hb, weight)) {
    const at::Tensor zl = dz.to(hb.scalar_type());
    if (need_h) dh.narrow(0, s, dz.size(0)).copy_(at::mm(zl, weight));
    if (need_w) dw.add_(at::mm(zl.t(), hb));
  } else {
    if (need_h) dh.narrow(0, s, dz.size(0)).copy_(at::mm(dz, w32));
    if (need_w) dw.addmm_(dz.t(), hb.to(at::kFloat));
  }
}

inline void check_head_cuda(const at::Tensor& hidden, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const char* op) {
  TORCH_CHECK(hidden.is_cuda() && weight.is_cuda(), op, ": hidden and weight must be CUDA tensors");
  TORCH_CHECK(hidden.dim() == 2, op, ": hidden must be [N, d], got ", hidden.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == hidden.size(1) && weight.size(0) >= 1, op,
              ": weight must be [V, d] with d = ", hidden.size(1), " and V >= 1, got ", weight.sizes());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [V]");
  }
}

}  // namespace lm_head_cuda
}  // namespace alter_kernels
