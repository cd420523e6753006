// CPU kernel of the routing plan from router logits (ALTER_SPEC section 3), one pass per token.
//
//   route_plan(logits [N, E] fp32, entropy [N], threshold, tau_high, tau_low, top_k, labels [N]?)
//     -> (expert_weights [N, E] fp32, high [N] bool, a_grad_mask [N] bool, b_grad_mask [N, E] bool)
//
// high = !(e <= threshold) (NaN counts as high); g = softmax(logits / tau), tau = tau_high or
// tau_low; high rows: w_0 = 1 and the top-k forget experts (1..E-1) get g; low rows: one-hot of
// the label when labels[n] >= 0, else of argmax g (first maximum, as torch.argmax). The masks
// (spec 4) are made only with labels (otherwise undefined tensors: None in Python).
// The logits come from one GEMM in Python, which keeps the router loss differentiable; this op
// replaces the ~30 small ATen calls of the reference, which dominate decoding at N = 1.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "route_rule.h"

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace alter_kernels {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor> route_plan_cpu(const Tensor& logits_in, const Tensor& entropy_in,
                                                          double threshold, double tau_high, double tau_low,
                                                          int64_t top_k, const std::optional<Tensor>& labels_in) {
  TORCH_CHECK(logits_in.dim() == 2, "route_plan: logits must be [N, E]");
  const int64_t N = logits_in.size(0), E = logits_in.size(1);
  TORCH_CHECK(E >= 1, "route_plan: need at least one expert");
  TORCH_CHECK(entropy_in.numel() == N, "route_plan: entropy must be [N]");
  const Tensor logits = logits_in.to(at::kFloat).contiguous();
  const Tensor ent = entropy_in.to(at::kFloat).contiguous();
  const bool has_labels = labels_in.has_value() && labels_in->defined();
  Tensor labels;
  if (has_labels) {
    TORCH_CHECK(labels_in->numel() == N, "route_plan: labels must be [N]");
    labels = labels_in->to(at::kLong).contiguous();
  }
  Tensor w = at::zeros({N, E}, logits.options());
  Tensor high = at::empty({N}, logits.options().dtype(at::kBool));
  Tensor am = has_labels ? at::empty({N}, high.options()) : Tensor();
  Tensor bm = has_labels ? at::zeros({N, E}, high.options()) : Tensor();
  const float* pl = logits.data_ptr<float>();
  const float* pe = ent.data_ptr<float>();
  const int64_t* plab = has_labels ? labels.data_ptr<int64_t>() : nullptr;
  float* pw = w.data_ptr<float>();
  bool* ph = high.data_ptr<bool>();
  bool* pam = has_labels ? am.data_ptr<bool>() : nullptr;
  bool* pbm = has_labels ? bm.data_ptr<bool>() : nullptr;
  const int64_t k = std::max<int64_t>(0, std::min<int64_t>(top_k, E - 1));
  if (has_labels) {
    for (int64_t n = 0; n < N; ++n)
      TORCH_CHECK(plab[n] < E, "route: label ", plab[n], " out of range for ", E, " experts (0..", E - 1, ")");
  }
  at::parallel_for(0, N, 512, [&](int64_t b, int64_t e_) {
    std::vector<float> g(static_cast<size_t>(E));
    std::vector<char> taken(static_cast<size_t>(E));
    for (int64_t n = b; n < e_; ++n) {
      const float* ln = pl + n * E;
      float* wn = pw + n * E;
      const bool hi = is_high(pe[n], threshold);
      ph[n] = hi;
      const int64_t lab = plab ? plab[n] : -1;
      route_token(ln, E, hi, static_cast<float>(tau_high), static_cast<float>(tau_low), k, lab, g.data(),
                  taken.data(), wn);
      if (pam) {
        pam[n] = hi;
        if (!hi && lab >= 0) pbm[n * E + lab] = true;
      }
    }
  });
  return {w, high, am, bm};
}

}  // namespace
}  // namespace alter_kernels

TORCH_LIBRARY_FRAGMENT(alter_kernels, m) {
  m.def("route_plan(Tensor logits, Tensor entropy, float threshold, float tau_high, float tau_low, int top_k, "
        "Tensor? labels) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(alter_kernels, CPU, m) { m.impl("route_plan", &alter_kernels::route_plan_cpu); }
