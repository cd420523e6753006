// Decode-shaped ALTER ops for the CPU (1..16 tokens per call), used by alter_kernels.generate.
//
// At decode time each patched linear sees a handful of tokens, so the cost of the adapter is the
// number of op calls, not its FLOPs. These two ops cut a decoder layer's extra calls to one per
// layer (routing) plus one per group of linears that read the same input (q/k/v, gate/up, o, down):
//
//   decode_route(hidden [N,d], router_weight [d,E], entropy [N], threshold, tau_high, tau_low, top_k)
//     -> expert weights [N,E] fp32: ALTER_SPEC section 3 for inference (no labels): high-entropy
//        rows get w_0 = 1 and their top-k forget experts' gate values, low-entropy rows one-hot
//        argmax of the gate (first maximum on ties). Same math as reference/routing.py::route_ref.
//
//   decode_group_linear(x [N,d_in], weights [W_k: d_out_k x d_in], biases [b_k or None],
//                       a_cat [G*r, d_in], b_t [B^T_k: E x r x d_out_k, pre-scaled by s],
//                       expert_weights [N,E])
//     -> [y_k = x W_k^T + b_k + sum_e w_e * B^T_k[e]^T (A_k x)] for every member k of the group.
//        The base products go through ATen's GEMM; the shrink (A x, kept in fp32) and the expert
//        expansion are plain loops (G*r dot products, then axpys over d_out for the nonzero
//        weights), accumulated in fp32 (fp64 for fp64 tensors).
//
// Schemas are added with TORCH_LIBRARY_FRAGMENT; the kernels are registered for the CPU only
// (the CUDA decode path captures the whole step in a CUDA graph instead).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "few_rows.h"
#include "route_rule.h"

#include <cmath>
#include <limits>
#include <vector>

namespace alter_kernels {
namespace {

template <typename scalar_t>
void route_rows(const scalar_t* h, const float* wg, const float* ent, float* out, int64_t n, int64_t d,
                int64_t e, double threshold, double tau_high, double tau_low, int64_t top_k) {
  std::vector<float> logits(e), g(e);
  std::vector<char> taken(e);
  const int64_t k = std::min<int64_t>(top_k, e - 1);
  for (int64_t t = 0; t < n; ++t) {
    const scalar_t* ht = h + t * d;
    for (int64_t j = 0; j < e; ++j) logits[j] = 0.f;
    for (int64_t i = 0; i < d; ++i) {
      const float hv = static_cast<float>(ht[i]);
      const float* row = wg + i * e;
      for (int64_t j = 0; j < e; ++j) logits[j] += hv * row[j];
    }
    const bool high = is_high(ent[t], threshold);
    float* o = out + t * e;
    for (int64_t j = 0; j < e; ++j) o[j] = 0.f;
    route_token(logits.data(), e, high, static_cast<float>(tau_high), static_cast<float>(tau_low), k, -1, g.data(),
                taken.data(), o);
  }
}

at::Tensor decode_route_cpu(const at::Tensor& hidden, const at::Tensor& router_weight, const at::Tensor& entropy,
                            double threshold, double tau_high, double tau_low, int64_t top_k) {
  TORCH_CHECK(hidden.dim() == 2, "decode_route: hidden must be [N, d], got ", hidden.sizes());
  TORCH_CHECK(router_weight.dim() == 2 && router_weight.size(0) == hidden.size(1),
              "decode_route: router_weight must be [d, E] with d = ", hidden.size(1), ", got ", router_weight.sizes());
  TORCH_CHECK(entropy.dim() == 1 && entropy.size(0) == hidden.size(0),
              "decode_route: entropy must be [N] with N = ", hidden.size(0), ", got ", entropy.sizes());
  TORCH_CHECK(router_weight.size(1) >= 1, "decode_route: router_weight needs at least one expert column");
  TORCH_CHECK(tau_high > 0 && tau_low > 0, "decode_route: temperatures must be > 0");
  TORCH_CHECK(top_k >= 0, "decode_route: top_k must be >= 0, got ", top_k);
  const int64_t n = hidden.size(0), d = hidden.size(1), e = router_weight.size(1);
  auto wg = router_weight.to(at::kFloat).contiguous();
  auto ent = entropy.to(at::kFloat).contiguous();
  auto out = at::empty({n, e}, hidden.options().dtype(at::kFloat));
  if (n == 0) return out;
  auto h = hidden.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "decode_route", [&] {
    route_rows<scalar_t>(h.data_ptr<scalar_t>(), wg.data_ptr<float>(), ent.data_ptr<float>(), out.data_ptr<float>(),
                         n, d, e, threshold, tau_high, tau_low, top_k);
  });
  return out;
}

template <typename scalar_t>
void add_adapter(const scalar_t* x, const scalar_t* a_cat, const float* w, const std::vector<scalar_t*>& ys,
                 const std::vector<const scalar_t*>& bts, const std::vector<int64_t>& d_outs, int64_t n,
                 int64_t d_in, int64_t r, int64_t e) {
  using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
  const int64_t g = static_cast<int64_t>(ys.size());
  std::vector<acc_t> u(g * r);
  for (int64_t t = 0; t < n; ++t) {
    const scalar_t* xt = x + t * d_in;
    for (int64_t i = 0; i < g * r; ++i) {  // u = A x, fp32 accumulation
      const scalar_t* arow = a_cat + i * d_in;
      // 16 independent partial sums: a fixed summation order the compiler can vectorise
      acc_t part[16] = {0};
      int64_t c = 0;
      for (; c + 16 <= d_in; c += 16)
        for (int j = 0; j < 16; ++j) part[j] += static_cast<acc_t>(xt[c + j]) * static_cast<acc_t>(arow[c + j]);
      acc_t acc = 0;
      for (; c < d_in; ++c) acc += static_cast<acc_t>(xt[c]) * static_cast<acc_t>(arow[c]);
      for (int j = 0; j < 16; ++j) acc += part[j];
      u[i] = acc;
    }
    for (int64_t k = 0; k < g; ++k) {
      const int64_t d_out = d_outs[k];
      scalar_t* yt = ys[k] + t * d_out;
      for (int64_t ex = 0; ex < e; ++ex) {
        const acc_t we = static_cast<acc_t>(w[t * e + ex]);
        if (we == 0) continue;
        for (int64_t j = 0; j < r; ++j) {
          const acc_t c = we * u[k * r + j];
          if (c == 0) continue;
          const scalar_t* brow = bts[k] + (ex * r + j) * d_out;
          for (int64_t o = 0; o < d_out; ++o) yt[o] += static_cast<scalar_t>(c * static_cast<acc_t>(brow[o]));
        }
      }
    }
  }
}

// Base products of a decode step with a few rows (2..4: at batch 1-2 the adapted and the base stream
// of ak.generate, inference_entropy="base"): few_rows.h, each weight row read once for all rows.
// x [n, d_in] fp32 contiguous, 2 <= n <= 4; w [d_out, d_in]; bias [d_out] or undefined
at::Tensor few_rows_linear_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, bool portable) {
  const int64_t n = x.size(0), d_in = x.size(1), d_out = w.size(0);
  auto wc = w.contiguous();
  auto bc = bias.defined() ? bias.to(at::kFloat).contiguous() : bias;
  auto y = at::empty({n, d_out}, x.options());
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  const float* xp = x.data_ptr<float>();
  const float* wp = wc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, d_out, 64, [&](int64_t begin, int64_t end) {
    switch (n) {
      case 2: few_rows::few_rows_range<2>(xp, wp, bp, yp, d_in, d_out, begin, end, portable); break;
      case 3: few_rows::few_rows_range<3>(xp, wp, bp, yp, d_in, d_out, begin, end, portable); break;
      default: few_rows::few_rows_range<4>(xp, wp, bp, yp, d_in, d_out, begin, end, portable); break;
    }
  });
  return y;
}

// y = x W^T + b of one linear at decode shapes: the few-rows kernel for 2..4 fp32 rows, ATen else.
at::Tensor linear_rows(const at::Tensor& xc, const at::Tensor& w, const at::Tensor& b, bool portable) {
  const int64_t n = xc.size(0);
  if (xc.scalar_type() == at::kFloat && n >= 2 && n <= 4) return few_rows_linear_cpu(xc, w, b, portable);
  return b.defined() ? at::addmm(b, xc, w.t()) : at::mm(xc, w.t());
}

at::Tensor decode_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             bool portable) {
  TORCH_CHECK(x.dim() == 2, "decode_linear: x must be [N, d_in], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "decode_linear: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(1) && weight.scalar_type() == x.scalar_type(),
              "decode_linear: weight must be [d_out, ", x.size(1), "] of x's dtype, got ", weight.sizes(), " ",
              weight.scalar_type());
  const bool has_b = bias.has_value() && bias->defined();
  if (has_b)
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0) && bias->scalar_type() == x.scalar_type(),
                "decode_linear: bias must be [", weight.size(0), "] of x's dtype, got ", bias->sizes());
  return linear_rows(x.contiguous(), weight, has_b ? *bias : at::Tensor(), portable);
}

std::vector<at::Tensor> decode_group_linear_cpu(const at::Tensor& x, at::TensorList weights,
                                                const c10::List<std::optional<at::Tensor>>& biases,
                                                const at::Tensor& a_cat, at::TensorList b_t,
                                                const at::Tensor& expert_weights) {
  const int64_t g = static_cast<int64_t>(weights.size());
  TORCH_CHECK(g >= 1, "decode_group_linear: needs at least one weight");
  TORCH_CHECK(static_cast<int64_t>(b_t.size()) == g && static_cast<int64_t>(biases.size()) == g,
              "decode_group_linear: weights, biases and b_t must have the same length, got ", g, ", ",
              biases.size(), ", ", b_t.size());
  TORCH_CHECK(x.dim() == 2, "decode_group_linear: x must be [N, d_in], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "decode_group_linear: x must be float32 or float64, got ", x.scalar_type());
  const int64_t n = x.size(0), d_in = x.size(1);
  TORCH_CHECK(expert_weights.dim() == 2 && expert_weights.size(0) == n,
              "decode_group_linear: expert_weights must be [N, E] with N = ", n, ", got ", expert_weights.sizes());
  const int64_t e = expert_weights.size(1);
  TORCH_CHECK(a_cat.dim() == 2 && a_cat.size(1) == d_in && a_cat.size(0) % g == 0,
              "decode_group_linear: a_cat must be [G*r, d_in] with G = ", g, ", d_in = ", d_in, ", got ", a_cat.sizes());
  TORCH_CHECK(a_cat.scalar_type() == x.scalar_type(), "decode_group_linear: a_cat must have x's dtype ",
              x.scalar_type(), ", got ", a_cat.scalar_type());
  const int64_t r = a_cat.size(0) / g;
  auto xc = x.contiguous();
  auto ac = a_cat.contiguous();
  auto wc = expert_weights.to(at::kFloat).contiguous();
  std::vector<at::Tensor> outs;
  std::vector<at::Tensor> bts;
  std::vector<int64_t> d_outs;
  outs.reserve(g);
  for (int64_t k = 0; k < g; ++k) {
    const auto& w = weights[k];
    TORCH_CHECK(w.dim() == 2 && w.size(1) == d_in && w.scalar_type() == x.scalar_type(),
                "decode_group_linear: weights[", k, "] must be [d_out, ", d_in, "] of x's dtype, got ", w.sizes(),
                " ", w.scalar_type());
    const int64_t d_out = w.size(0);
    const auto& bt = b_t[k];
    TORCH_CHECK(bt.dim() == 3 && bt.size(0) == e && bt.size(1) == r && bt.size(2) == d_out &&
                    bt.scalar_type() == x.scalar_type(),
                "decode_group_linear: b_t[", k, "] must be [E, r, d_out] = [", e, ", ", r, ", ", d_out,
                "] of x's dtype, got ", bt.sizes(), " ", bt.scalar_type());
    std::optional<at::Tensor> b = biases.get(k);
    const bool has_b = b.has_value() && b->defined();
    if (has_b)
      TORCH_CHECK(b->dim() == 1 && b->size(0) == d_out, "decode_group_linear: biases[", k, "] must be [", d_out,
                  "], got ", b->sizes());
    outs.push_back(linear_rows(xc, w, has_b ? *b : at::Tensor(), false).contiguous());
    bts.push_back(bt.contiguous());
    d_outs.push_back(d_out);
  }
  if (n == 0) return outs;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "decode_group_linear", [&] {
    std::vector<scalar_t*> ys;
    std::vector<const scalar_t*> bps;
    for (int64_t k = 0; k < g; ++k) {
      ys.push_back(outs[k].data_ptr<scalar_t>());
      bps.push_back(bts[k].data_ptr<scalar_t>());
    }
    add_adapter<scalar_t>(xc.data_ptr<scalar_t>(), ac.data_ptr<scalar_t>(), wc.data_ptr<float>(), ys, bps, d_outs,
                          n, d_in, r, e);
  });
  return outs;
}

}  // namespace
}  // namespace alter_kernels

TORCH_LIBRARY_FRAGMENT(alter_kernels, m) {
  m.def("decode_route(Tensor hidden, Tensor router_weight, Tensor entropy, float threshold, float tau_high, "
        "float tau_low, int top_k) -> Tensor");
  m.def("decode_group_linear(Tensor x, Tensor[] weights, Tensor?[] biases, Tensor a_cat, Tensor[] b_t, "
        "Tensor expert_weights) -> Tensor[]");
  m.def("decode_linear(Tensor x, Tensor weight, Tensor? bias, bool portable=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(alter_kernels, CPU, m) {
  m.impl("decode_route", &alter_kernels::decode_route_cpu);
  m.impl("decode_group_linear", &alter_kernels::decode_group_linear_cpu);
  m.impl("decode_linear", &alter_kernels::decode_linear_cpu);
}
