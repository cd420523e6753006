// Per-token unlearning losses straight from the LM head, CPU kernels: the [N, V] logits never exist.
//
// lm_head_losses_fwd(hidden [N, d], weight [V, d], bias [V]?, labels [N] int64, q, with_entropy,
//                    ignore_index, vocab_tile, row_block)
//     -> (nll [N], ihl [N], entropy [N], lse [N], stats [N, 7]) fp32
//   nll = lse - z_y, ihl = max(0, 1 + p_y - max_{v != y} p_v), entropy = S_q (0 without
//   with_entropy), lse = log sum exp z. Rows with label == ignore_index give 0 everywhere.
//   stats = [m, log Z, aux, z_y, z_A, c, a]: max logit, log sum exp(z - m), the entropy's aux
//   (entropy_common.h), the label's logit, the largest logit over v != y, how many v != y reach
//   it (c) and the first of them (a, as a float: V <= 2^24).
//   For each vocabulary tile and block of tokens one ATen GEMM makes a [row_block, vocab_tile]
//   fp32 logits tile (bias fused via addmm), folded into per-token online statistics.
// lm_head_losses_bwd(grad_nll?, grad_ihl?, grad_ent?, grad_lse? [N] fp32, hidden, weight, bias?,
//                    labels, stats, q, ignore_index, need_hidden, need_weight, need_bias, ...)
//     -> (d hidden, d weight, d bias)  (0-element fp32 placeholders for what was not asked)
//   recomputes each tile and turns it in place into dL/dz:
//     dL/dz_v = g_ent dS/dz_v + p_v (g_lse + g_nll - g_ihl (p_y - p_A)) + [v = y] (g_ihl p_y - g_nll)
//               - [v in T] g_ihl p_A / c
//   (T = the arg max set of v != y: the gradient of a tied maximum is split evenly, as torch.amax),
//   then d hidden += dZ W_tile, d W_tile += dZ^T H_blk, d bias_tile += colsum(dZ) with GEMMs.
// Every reduction in fp32 (row sums in double); NaN in a row gives NaN for that row.
#include "lm_head_losses_common.h"

namespace alter_kernels {
namespace {

using namespace losses_cpu;

constexpr int64_t kLStats = 7;

struct LossRow {
  RowStat s;
  float zy = kNaN, za = -kInf;
  int64_t cnt = 0, arg = -1;
};

// Largest logit over v != y in x[0, n) (y at local index yl, or -1), its count and first index.
inline void fold_other(float* x, int64_t n, int64_t yl, int64_t v0, LossRow& r) {
  if (r.s.nan) return;
  float saved = 0.f;
  if (yl >= 0) {
    saved = x[yl];
    x[yl] = -kInf;
  }
  bool nan = false;
  const float bm = block_max(x, n, &nan);
  if (bm > -kInf && bm >= r.za) {
    int64_t c = 0, first = -1;
    for (int64_t i = 0; i < n; ++i) {
      if (x[i] == bm) {
        if (first < 0) first = i;
        ++c;
      }
    }
    if (bm > r.za) {
      r.za = bm;
      r.cnt = c;
      r.arg = v0 + first;
    } else {
      r.cnt += c;
    }
  }
  if (yl >= 0) x[yl] = saved;
}

template <int M>
void finalize_row(const LossRow& r, float q, float* out4, float* st) {
  float &nll = out4[0], &ihl = out4[1], &ent = out4[2], &lse = out4[3];
  if (r.s.nan || !(r.s.z > 0.0)) {  // NaN in the row, or every logit -inf: no distribution
    nll = ihl = ent = kNaN;
    lse = r.s.nan ? kNaN : -kInf;
    for (int64_t k = 0; k < kLStats; ++k) st[k] = kNaN;
    if (!r.s.nan) st[0] = st[1] = -kInf;
    return;
  }
  const double logz = std::log(r.s.z), m = r.s.m;
  lse = static_cast<float>(m + logz);
  nll = static_cast<float>((m - static_cast<double>(r.zy)) + logz);
  const double py = std::exp((static_cast<double>(r.zy) - m) - logz);
  const double pa = r.cnt > 0 ? std::exp((static_cast<double>(r.za) - m) - logz) : 0.0;
  ihl = static_cast<float>(std::max(0.0, 1.0 + py - pa));
  st[0] = r.s.m;
  st[1] = static_cast<float>(logz);
  if constexpr (M == kNoEnt) {
    ent = st[2] = 0.f;
  } else if constexpr (M == kShannon) {
    ent = st[2] = static_cast<float>(logz - r.s.qs / r.s.z);
  } else {
    const double spq = r.s.qs / std::pow(r.s.z, static_cast<double>(q));
    ent = static_cast<float>((1.0 - spq) / (static_cast<double>(q) - 1.0));
    st[2] = static_cast<float>(spq);
  }
  st[3] = r.zy;
  st[4] = r.za;
  st[5] = static_cast<float>(r.cnt);
  st[6] = static_cast<float>(r.arg);
}

std::vector<int64_t> read_labels(const at::Tensor& labels, int64_t N, int64_t V, int64_t ignore_index,
                                 const char* op) {
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == N && labels.scalar_type() == at::kLong, op,
              ": labels must be int64 [N] with N = ", N, ", got ", labels.sizes(), " ", labels.scalar_type());
  const at::Tensor lc = labels.contiguous();
  const int64_t* pl = lc.data_ptr<int64_t>();
  std::vector<int64_t> y(N);
  for (int64_t r = 0; r < N; ++r) {
    const int64_t l = pl[r];
    TORCH_CHECK(l == ignore_index || (l >= 0 && l < V), op, ": labels[", r, "] = ", l,
                " is out of range: expected 0 <= label < V = ", V, " or ignore_index = ", ignore_index);
    y[r] = l == ignore_index ? -1 : l;
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lm_head_losses_fwd_cpu(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& labels, double qd, bool with_entropy, int64_t ignore_index, int64_t vocab_tile,
    int64_t row_block) {
  const char* op = "lm_head_losses_fwd";
  check_head(hidden, weight, bias, op);
  TORCH_CHECK(!with_entropy || (std::isfinite(qd) && qd > 0), op, ": q must be finite and > 0, got ", qd);
  const int64_t N = hidden.size(0), V = weight.size(0);
  TORCH_CHECK(V <= (int64_t(1) << 24), op, ": V = ", V, " exceeds 2^24 (arg max indices are kept in fp32)");
  const std::vector<int64_t> y = read_labels(labels, N, V, ignore_index, op);
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor out[4] = {at::zeros({N}, fopts), at::zeros({N}, fopts), at::zeros({N}, fopts), at::zeros({N}, fopts)};
  at::Tensor st = at::zeros({N, kLStats}, fopts);
  if (N > 0) {
    std::vector<LossRow> rows(N);
    const float q = static_cast<float>(qd);
    dispatch_loss_mode(with_entropy, qd, [&](auto tag) {
      constexpr int M = decltype(tag)::value;
      fold_tiles(hidden, weight, bias, vocab_tile, row_block, [&](float* x, int64_t vt, int64_t v0, int64_t r) {
        const int64_t yr = y[r];
        if (yr < 0) return;  // ignored row
        const int64_t yl = (yr >= v0 && yr < v0 + vt) ? yr - v0 : -1;
        if (yl >= 0) rows[r].zy = x[yl];
        fold_other(x, vt, yl, v0, rows[r]);
        fold_stats<M>(x, vt, rows[r].s, q);
      });
      float* po[4] = {out[0].data_ptr<float>(), out[1].data_ptr<float>(), out[2].data_ptr<float>(),
                      out[3].data_ptr<float>()};
      float* ps = st.data_ptr<float>();
      for (int64_t r = 0; r < N; ++r) {
        if (y[r] < 0) continue;
        float o4[4];
        finalize_row<M>(rows[r], q, o4, ps + r * kLStats);
        for (int k = 0; k < 4; ++k) po[k][r] = o4[k];
      }
    });
  }
  return {out[0], out[1], out[2], out[3], st};
}

// Per-row coefficients of dL/dz (see the file comment); skip = ignored row (zero gradient).
struct Coef {
  float alpha = 0.f, beta_y = 0.f, beta_t = 0.f, c_ent = 0.f;
  bool skip = true;
};

std::vector<Coef> coefficients(const std::vector<int64_t>& y, const float* st, const float* gn, const float* gi,
                               const float* ge, const float* gl, float q, bool shannon) {
  const int64_t N = static_cast<int64_t>(y.size());
  std::vector<Coef> c(N);
  for (int64_t r = 0; r < N; ++r) {
    if (y[r] < 0) continue;
    const float* s = st + r * kLStats;
    const double m = s[0], logz = s[1], cnt = s[5];
    const double py = std::exp((static_cast<double>(s[3]) - m) - logz);
    const double pa = cnt > 0 ? std::exp((static_cast<double>(s[4]) - m) - logz) : 0.0;
    const double g_n = gn ? gn[r] : 0.0, g_i = gi ? gi[r] : 0.0, g_l = gl ? gl[r] : 0.0;
    c[r].alpha = static_cast<float>(g_l + g_n - g_i * (py - pa));
    c[r].beta_y = static_cast<float>(g_i * py - g_n);
    c[r].beta_t = cnt > 0 ? static_cast<float>(-g_i * pa / cnt) : 0.f;
    const float g_e = ge ? ge[r] : 0.f;
    c[r].c_ent = shannon ? -g_e : -g_e * q / (q - 1.f);
    c[r].skip = false;
  }
  return c;
}

// One row of a tile, in place: logits x[0, n) (vocabulary v0 ...) -> dL/dz.
template <int M>
void grad_row(float* x, int64_t n, int64_t v0, int64_t y, const float* s, const Coef& c, float q) {
  if (c.skip) {
    std::fill(x, x + n, 0.f);
    return;
  }
  const int64_t cnt = static_cast<int64_t>(s[5]), arg = static_cast<int64_t>(s[6]);
  std::vector<int64_t> ties;  // tied maxima (c > 1, rare): found before x is overwritten
  if (cnt > 1 && c.beta_t != 0.f) {
    for (int64_t i = 0; i < n; ++i) {
      if (v0 + i != y && (x[i] == s[4] || v0 + i == arg)) ties.push_back(i);
    }
  } else if (cnt == 1 && arg >= v0 && arg < v0 + n) {
    ties.push_back(arg - v0);
  }
  grad_block_c<M>(x, x, n, s, c.c_ent, c.alpha, q);  // dL/dz but for the label and the tied maxima
  if (y >= v0 && y < v0 + n) x[y - v0] += c.beta_y;
  for (int64_t t : ties) x[t] += c.beta_t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lm_head_losses_bwd_cpu(
    const std::optional<at::Tensor>& grad_nll, const std::optional<at::Tensor>& grad_ihl,
    const std::optional<at::Tensor>& grad_ent, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& labels,
    const at::Tensor& stats, double qd, int64_t ignore_index, bool need_hidden, bool need_weight, bool need_bias,
    int64_t vocab_tile, int64_t row_block) {
  const char* op = "lm_head_losses_bwd";
  check_head(hidden, weight, bias, op);
  const int64_t N = hidden.size(0), V = weight.size(0);
  const bool has_bias = bias.has_value() && bias->defined();
  for (auto* g : {&grad_nll, &grad_ihl, &grad_ent, &grad_lse}) check_row_vec(*g, N, op, "each grad");
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == N && stats.size(1) == kLStats && stats.scalar_type() == at::kFloat,
              op, ": stats must be the fp32 [N, 7] statistics of the forward, got ", stats.sizes());
  const std::vector<int64_t> y = read_labels(labels, N, V, ignore_index, op);
  HeadGrads grads(hidden, weight, has_bias, need_hidden, need_weight, need_bias);
  const bool any_grad = grad_nll.has_value() || grad_ihl.has_value() || grad_ent.has_value() || grad_lse.has_value();
  if (N > 0 && any_grad && grads.any()) {
    const at::Tensor stc = stats.contiguous();
    const float* pst = stc.data_ptr<float>();
    at::Tensor k0, k1, k2, k3;
    const float *gn = opt_ptr(grad_nll, k0), *gi = opt_ptr(grad_ihl, k1), *ge = opt_ptr(grad_ent, k2),
                *gl = opt_ptr(grad_lse, k3);
    const float q = static_cast<float>(qd);
    const bool with_ent = ge != nullptr && std::isfinite(qd) && qd > 0;
    const std::vector<Coef> coef = coefficients(y, pst, gn, gi, ge, gl, q, with_ent && q_mode(qd) == kShannon);
    dispatch_loss_mode(with_ent, qd, [&](auto tag) {
      constexpr int M = decltype(tag)::value;
      grad_tiles(hidden, weight, bias, vocab_tile, row_block, grads, [&](float* x, int64_t vt, int64_t v0, int64_t r) {
        grad_row<M>(x, vt, v0, y[r], pst + r * kLStats, coef[r], q);
      });
    });
  }
  return grads.result(hidden, weight, bias);
}

}  // namespace
}  // namespace alter_kernels

TORCH_LIBRARY_FRAGMENT(alter_kernels, m) {
  m.def(
      "lm_head_losses_fwd(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, float q, bool with_entropy, "
      "int ignore_index, int vocab_tile=0, int row_block=0) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lm_head_losses_bwd(Tensor? grad_nll, Tensor? grad_ihl, Tensor? grad_ent, Tensor? grad_lse, Tensor hidden, "
      "Tensor weight, Tensor? bias, Tensor labels, Tensor stats, float q, int ignore_index, bool need_hidden, "
      "bool need_weight, bool need_bias, int vocab_tile=0, int row_block=0) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(alter_kernels, CPU, m) {
  m.impl("lm_head_losses_fwd", &alter_kernels::lm_head_losses_fwd_cpu);
  m.impl("lm_head_losses_bwd", &alter_kernels::lm_head_losses_bwd_cpu);
}
