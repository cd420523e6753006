// Per-token KL(p_base || p_model) of two hidden-state tensors through one shared LM head or two
// heads (the base's own weight_base / bias_base), CPU kernels: neither [N, V] logits tensor exists.
//
// lm_head_kl_fwd(hidden_base [N, d], hidden [N, d], weight [V, d], bias [V]?, mask [N] bool?,
//                vocab_tile, row_block, weight_base [V, d]?, bias_base [V]?) -> (kl [N], stats [N, 5]) fp32
//   z_b = hidden_base W_b^T + b_b, z = hidden W^T + b, tile by tile (two GEMMs per tile), where
//   (W_b, b_b) = (weight_base, bias_base) when weight_base is given, else (weight, bias); per token the
//   online statistics m_b, Z_b = sum exp(z_b - m_b), m, Z = sum exp(z - m) and
//   A = sum exp(z_b - m_b) (z_b - z), so that KL = A / Z_b - (m_b - m) - log Z_b + log Z.
//   stats = [m_b, log Z_b, m, log Z, KL]. Rows with mask False give 0.
// lm_head_kl_bwd(grad [N], hidden_base, hidden, weight, bias?, mask?, stats, need_base, need_hidden,
//                need_weight, need_bias, vocab_tile, row_block, weight_base?, bias_base?, need_weight_base,
//                need_bias_base) -> (d hidden_base, d hidden, d weight, d bias, d weight_base, d bias_base)
//   dKL/dz_v = p_v - p_b,v;  dKL/dz_b,v = p_b,v (log p_b,v - log p_v - KL);
//   d hidden = dZ W, d hidden_base = dZ_b W_b, d bias = colsum(dZ) (+ colsum(dZ_b), shared head),
//   d W = dZ^T H (+ dZ_b^T H_b, shared head); two heads: d W_b = dZ_b^T H_b, d b_b = colsum(dZ_b).
#include "lm_head_losses_common.h"

namespace alter_kernels {
namespace {

using namespace losses_cpu;

constexpr int64_t kKStats = 5;

// The KL and its gradient are differences of nearly equal terms when p_b ~ p (the usual case:
// a model near its base), so exponentials here use the ~1 ulp exp, not entropy_common.h's
// faster exp_u20, whose error (~1e-6 relative) would show in p - p_b.
inline fVec exp1(const fVec& x) { return x.exp(); }

struct KLRow {
  float mb = -kInf, m = -kInf;
  double zb = 0.0, z = 0.0, a = 0.0;
  bool nan = false;
};

void fold_kl(const float* xb, const float* x, int64_t n, KLRow& r) {
  if (r.nan) return;
  const float bmb = block_max(xb, n, &r.nan), bm = block_max(x, n, &r.nan);
  if (r.nan) return;
  if (bmb > r.mb) {
    if (r.zb > 0.0) {
      const double sc = std::exp(static_cast<double>(r.mb) - static_cast<double>(bmb));
      r.zb *= sc;
      r.a *= sc;
    }
    r.mb = bmb;
  }
  if (bm > r.m) {
    if (r.z > 0.0) r.z *= std::exp(static_cast<double>(r.m) - static_cast<double>(bm));
    r.m = bm;
  }
  if (r.mb == -kInf && r.m == -kInf) return;
  constexpr int64_t L = fVec::size();
  const fVec mbv(r.mb), mv(r.m), lowest(-FLT_MAX), zero(0.f);
  fVec zba(0.f), za(0.f), aa(0.f);
  auto body = [&](const fVec& vb, const fVec& v) {
    const fVec eb = exp1(at::vec::maximum(vb - mbv, lowest));
    zba = zba + eb;
    za = za + exp1(at::vec::maximum(v - mv, lowest));
    // p_b = 0 terms add nothing (avoids 0 * inf = NaN where z_b = -inf)
    aa = aa + fVec::blendv(zero, eb * (vb - v), eb > zero);
  };
  int64_t i = 0;
  for (; i + L <= n; i += L) body(fVec::loadu(xb + i), fVec::loadu(x + i));
  if (i < n) {
    alignas(64) float tb[L], tm[L];
    std::fill(tb, tb + L, -kInf);
    std::fill(tm, tm + L, -kInf);
    std::memcpy(tb, xb + i, sizeof(float) * (n - i));
    std::memcpy(tm, x + i, sizeof(float) * (n - i));
    body(fVec::loadu(tb), fVec::loadu(tm));
  }
  r.zb += static_cast<double>(vsum(zba));
  r.z += static_cast<double>(vsum(za));
  r.a += static_cast<double>(vsum(aa));
}

// A row of a tile: fp32 lane sums per sub-block of kSub entries, double across them.
void fold_kl_row(const float* xb, const float* x, int64_t n, KLRow& r) {
  for (int64_t o = 0; o < n; o += kSub) fold_kl(xb + o, x + o, std::min(kSub, n - o), r);
}

void finalize_kl(const KLRow& r, float* kl, float* st) {
  if (r.nan || !(r.zb > 0.0) || !(r.z > 0.0)) {
    *kl = kNaN;
    for (int64_t k = 0; k < kKStats; ++k) st[k] = kNaN;
    return;
  }
  const double lzb = std::log(r.zb), lz = std::log(r.z);
  const double v = r.a / r.zb - (static_cast<double>(r.mb) - static_cast<double>(r.m)) - lzb + lz;
  *kl = static_cast<float>(v);
  st[0] = r.mb;
  st[1] = static_cast<float>(lzb);
  st[2] = r.m;
  st[3] = static_cast<float>(lz);
  st[4] = static_cast<float>(v);
}

std::vector<char> read_mask(const std::optional<at::Tensor>& mask, int64_t N, const char* op) {
  std::vector<char> keep(N, 1);
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->dim() == 1 && mask->size(0) == N && mask->scalar_type() == at::kBool, op,
                ": mask must be bool [N] with N = ", N, ", got ", mask->sizes(), " ", mask->scalar_type());
    const at::Tensor mc = mask->contiguous();
    const bool* pm = mc.data_ptr<bool>();
    for (int64_t r = 0; r < N; ++r) keep[r] = pm[r] ? 1 : 0;
  }
  return keep;
}

void check_pair(const at::Tensor& hb, const at::Tensor& h, const char* op) {
  TORCH_CHECK(hb.sizes() == h.sizes(), op, ": hidden_base must have the shape of hidden ", h.sizes(), ", got ",
              hb.sizes());
}

// The two heads: the model's (w, b32) and the base's (wb, bb32; the same tensors when shared).
struct Heads {
  at::Tensor w, b32, wb, bb32;
  bool two = false;
};

Heads make_heads(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 const std::optional<at::Tensor>& weight_base, const std::optional<at::Tensor>& bias_base,
                 const char* op) {
  check_head(hidden, weight, bias, op);
  Heads hd;
  hd.w = weight.contiguous();
  hd.b32 = bias32(bias);
  hd.two = weight_base.has_value() && weight_base->defined();
  if (!hd.two) {
    TORCH_CHECK(!(bias_base.has_value() && bias_base->defined()), op, ": bias_base needs weight_base");
    hd.wb = hd.w;
    hd.bb32 = hd.b32;
    return hd;
  }
  TORCH_CHECK(weight_base->sizes() == weight.sizes(), op, ": weight_base must have the shape of weight ",
              weight.sizes(), ", got ", weight_base->sizes());
  check_head(hidden, *weight_base, bias_base, op);
  hd.wb = weight_base->contiguous();
  hd.bb32 = bias32(bias_base);
  return hd;
}

// Calls f(v0, vt, wt, wbt, r0, rb, zb, z) for every (vocabulary tile, token block) with the two
// fp32 logits tiles made (wt, wbt: the fp32 weight tiles of the model's and the base's head).
template <typename F>
void for_tiles(const at::Tensor& hb32, const at::Tensor& h32, const Heads& hd, int64_t vocab_tile,
               int64_t row_block, F&& f) {
  const int64_t N = h32.size(0), V = hd.w.size(0);
  const Tiles T = pick_tiles(N, V, vocab_tile, row_block);
  auto fopts = h32.options();
  at::Tensor buf = at::empty({2, T.rb * T.vt}, fopts);
  for (int64_t v0 = 0; v0 < V; v0 += T.vt) {
    const int64_t vt = std::min(T.vt, V - v0);
    const at::Tensor wt = hd.w.narrow(0, v0, vt).to(at::kFloat).contiguous();
    const at::Tensor bt = hd.b32.defined() ? hd.b32.narrow(0, v0, vt) : at::Tensor();
    const at::Tensor wbt = hd.two ? hd.wb.narrow(0, v0, vt).to(at::kFloat).contiguous() : wt;
    const at::Tensor bbt = !hd.two ? bt : (hd.bb32.defined() ? hd.bb32.narrow(0, v0, vt) : at::Tensor());
    for (int64_t r0 = 0; r0 < N; r0 += T.rb) {
      const int64_t rb = std::min(T.rb, N - r0);
      at::Tensor zb = buf[0].narrow(0, 0, rb * vt).view({rb, vt}), z = buf[1].narrow(0, 0, rb * vt).view({rb, vt});
      logits_tile(zb, hb32.narrow(0, r0, rb), wbt, bbt);
      logits_tile(z, h32.narrow(0, r0, rb), wt, bt);
      f(v0, vt, wt, wbt, r0, rb, zb, z);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> lm_head_kl_fwd_cpu(const at::Tensor& hidden_base, const at::Tensor& hidden,
                                                      const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                                      const std::optional<at::Tensor>& mask, int64_t vocab_tile,
                                                      int64_t row_block, const std::optional<at::Tensor>& weight_base,
                                                      const std::optional<at::Tensor>& bias_base) {
  const char* op = "lm_head_kl_fwd";
  check_pair(hidden_base, hidden, op);
  const Heads hd = make_heads(hidden, weight, bias, weight_base, bias_base, op);
  const int64_t N = hidden.size(0);
  const std::vector<char> keep = read_mask(mask, N, op);
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor kl = at::zeros({N}, fopts), st = at::zeros({N, kKStats}, fopts);
  if (N == 0) return {kl, st};
  std::vector<KLRow> rows(N);
  for_tiles(hidden_base.to(at::kFloat).contiguous(), hidden.to(at::kFloat).contiguous(), hd, vocab_tile, row_block,
            [&](int64_t, int64_t vt, const at::Tensor&, const at::Tensor&, int64_t r0, int64_t rb, at::Tensor& zb,
                at::Tensor& z) {
              const float* pb = zb.data_ptr<float>();
              const float* pm = z.data_ptr<float>();
              parallel_rows(
                  rb, vt, [&](int64_t i) {
                    if (keep[r0 + i]) fold_kl_row(pb + i * vt, pm + i * vt, vt, rows[r0 + i]);
                  },
                  8192);
            });
  float* pk = kl.data_ptr<float>();
  float* ps = st.data_ptr<float>();
  for (int64_t r = 0; r < N; ++r) {
    if (keep[r]) finalize_kl(rows[r], pk + r, ps + r * kKStats);
  }
  return {kl, st};
}

// Flash-style forward for the common training case (only hidden needs a gradient): besides the
// KL it returns dh1 [N, d] = dKL/d hidden per unit upstream gradient = (P - P_b) W (the model's W
// for both terms, as dKL/dz = p - p_b), accumulated tile by tile as A = sum_v exp(z_v - m) w_v and
// A_b = sum_v exp(z_b,v - m_b) w_v, rescaled when the running maximum grows; dh1 = A/Z - A_b/Z_b.
// The backward is then grad * dh1: 4 GEMMs in all, not 5 (no logits tiles recomputed).
// exp_rescale_row: E = exp(x - m) in place over x[0, n); the accumulator row a[0, d) rescaled to m.
void exp_rescale_row(float* x, int64_t n, float m, float& m_acc, float* a, int64_t d) {
  if (m == -kInf) {  // nothing finite yet: E = 0, A stays 0
    std::fill(x, x + n, 0.f);
    return;
  }
  if (m != m_acc) {
    const float sc = m_acc == -kInf ? 0.f : static_cast<float>(std::exp(static_cast<double>(m_acc) - m));
    for (int64_t k = 0; k < d; ++k) a[k] *= sc;
    m_acc = m;
  }
  constexpr int64_t L = fVec::size();
  const fVec mv(m), lowest(-FLT_MAX);
  int64_t i = 0;
  for (; i + L <= n; i += L) exp1(at::vec::maximum(fVec::loadu(x + i) - mv, lowest)).store(x + i);
  if (i < n) exp1(at::vec::maximum(fVec::loadu(x + i, n - i) - mv, lowest)).store(x + i, n - i);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lm_head_kl_fwd_grad_cpu(
    const at::Tensor& hidden_base, const at::Tensor& hidden, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mask, int64_t vocab_tile,
    int64_t row_block, const std::optional<at::Tensor>& weight_base, const std::optional<at::Tensor>& bias_base) {
  const char* op = "lm_head_kl_fwd_grad";
  check_pair(hidden_base, hidden, op);
  const Heads hd = make_heads(hidden, weight, bias, weight_base, bias_base, op);
  const int64_t N = hidden.size(0), d = hidden.size(1);
  const std::vector<char> keep = read_mask(mask, N, op);
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor kl = at::zeros({N}, fopts), st = at::zeros({N, kKStats}, fopts);
  at::Tensor am = at::zeros({N, d}, fopts), ab = at::zeros({N, d}, fopts);
  if (N == 0) return {kl, st, am};
  std::vector<KLRow> rows(N);
  std::vector<float> m_acc(N, -kInf), mb_acc(N, -kInf);
  float* pam = am.data_ptr<float>();
  float* pab = ab.data_ptr<float>();
  for_tiles(hidden_base.to(at::kFloat).contiguous(), hidden.to(at::kFloat).contiguous(), hd, vocab_tile, row_block,
            [&](int64_t, int64_t vt, const at::Tensor& wt, const at::Tensor&, int64_t r0, int64_t rb,
                at::Tensor& zb, at::Tensor& z) {
              float* pb = zb.data_ptr<float>();
              float* pm = z.data_ptr<float>();
              parallel_rows(
                  rb, vt, [&](int64_t i) {
                    const int64_t r = r0 + i;
                    KLRow& row = rows[r];
                    if (keep[r]) fold_kl_row(pb + i * vt, pm + i * vt, vt, row);
                    if (!keep[r] || row.nan) {  // masked: dh1 = 0; NaN rows: NaN at the end
                      std::fill(pb + i * vt, pb + (i + 1) * vt, 0.f);
                      std::fill(pm + i * vt, pm + (i + 1) * vt, 0.f);
                      return;
                    }
                    exp_rescale_row(pm + i * vt, vt, row.m, m_acc[r], pam + r * d, d);
                    exp_rescale_row(pb + i * vt, vt, row.mb, mb_acc[r], pab + r * d, d);
                  },
                  8192);
              am.narrow(0, r0, rb).addmm_(z, wt);
              ab.narrow(0, r0, rb).addmm_(zb, wt);  // dKL/dz = p - p_b: both through the model's head
            });
  float *pk = kl.data_ptr<float>(), *ps = st.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (!keep[r]) continue;
      finalize_kl(rows[r], pk + r, ps + r * kKStats);
      float* a = pam + r * d;
      const float* b = pab + r * d;
      const KLRow& row = rows[r];
      if (std::isnan(pk[r])) {
        std::fill(a, a + d, kNaN);
        continue;
      }
      const float iz = static_cast<float>(1.0 / row.z), izb = static_cast<float>(1.0 / row.zb);
      for (int64_t k = 0; k < d; ++k) a[k] = a[k] * iz - b[k] * izb;
    }
  });
  return {kl, st, am};
}

// One row in place: zb -> dL/dz_b (when need_base), z -> dL/dz.
void grad_kl_row(float* xb, float* x, int64_t n, const float* s, float g, bool keep, bool need_base) {
  if (!keep) {
    std::fill(x, x + n, 0.f);
    std::fill(xb, xb + n, 0.f);
    return;
  }
  constexpr int64_t L = fVec::size();
  // log p_b - log p - KL = (z_b - z) - K with the row constant K = (m_b - m) + (log Z_b - log Z) + KL
  // (in double): no cancellation between two rounded log-probabilities
  const float k = static_cast<float>((static_cast<double>(s[0]) - s[2]) + (static_cast<double>(s[1]) - s[3]) + s[4]);
  const fVec mbv(s[0]), lzbv(s[1]), mv(s[2]), lzv(s[3]), kv(k), gv(g), lowest(-FLT_MAX), zero(0.f);
  auto body = [&](float* pb, float* pm, int64_t cnt) {
    const fVec vb = fVec::loadu(pb, cnt), v = fVec::loadu(pm, cnt);
    const fVec tb = (vb - mbv) - lzbv, t = (v - mv) - lzv;  // log p_b, log p (-inf stays -inf)
    const fVec pbv = exp1(at::vec::maximum(tb, lowest)), p = exp1(at::vec::maximum(t, lowest));
    if (need_base) {
      const fVec db = gv * pbv * ((vb - v) - kv);
      fVec::blendv(zero, db, pbv > zero).store(pb, cnt);
    }
    (gv * (p - pbv)).store(pm, cnt);
  };
  int64_t i = 0;
  for (; i + L <= n; i += L) body(xb + i, x + i, L);
  if (i < n) body(xb + i, x + i, n - i);
}

using KLGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

KLGrads lm_head_kl_bwd_cpu(const at::Tensor& grad, const at::Tensor& hidden_base, const at::Tensor& hidden,
                           const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& mask, const at::Tensor& stats, bool need_base,
                           bool need_hidden, bool need_weight, bool need_bias, int64_t vocab_tile, int64_t row_block,
                           const std::optional<at::Tensor>& weight_base, const std::optional<at::Tensor>& bias_base,
                           bool need_weight_base, bool need_bias_base) {
  const char* op = "lm_head_kl_bwd";
  check_pair(hidden_base, hidden, op);
  const Heads hd = make_heads(hidden, weight, bias, weight_base, bias_base, op);
  const int64_t N = hidden.size(0), V = weight.size(0), d = hidden.size(1);
  need_bias = need_bias && hd.b32.defined();
  need_weight_base = need_weight_base && hd.two;
  need_bias_base = need_bias_base && hd.two && hd.bb32.defined();
  check_row_vec(grad, N, op, "grad");
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == N && stats.size(1) == kKStats && stats.scalar_type() == at::kFloat,
              op, ": stats must be the fp32 [N, 5] statistics of the forward, got ", stats.sizes());
  const std::vector<char> keep = read_mask(mask, N, op);
  auto fopts = hidden.options().dtype(at::kFloat);
  auto buf = [&](bool need, at::IntArrayRef shape) { return need ? at::zeros(shape, fopts) : at::empty({0}, fopts); };
  at::Tensor dhb = buf(need_base, {N, d}), dh = buf(need_hidden, {N, d}), dw = buf(need_weight, {V, d}),
             db = buf(need_bias, {V}), dwb = buf(need_weight_base, {V, d}), dbb = buf(need_bias_base, {V});
  // the base logits' head gradients: into the shared head's (its share, exact autograd semantics;
  // a frozen head, the usual case, needs neither) or into the base head's own
  at::Tensor& dw_base = hd.two ? dwb : dw;
  at::Tensor& db_base = hd.two ? dbb : db;
  const bool need_wb = hd.two ? need_weight_base : need_weight, need_bb = hd.two ? need_bias_base : need_bias;
  const bool base_side = need_base || need_wb || need_bb;
  if (N > 0 && (base_side || need_hidden || need_weight || need_bias)) {
    const at::Tensor hb32 = hidden_base.to(at::kFloat).contiguous(), h32 = hidden.to(at::kFloat).contiguous();
    const at::Tensor gc = grad.contiguous(), stc = stats.contiguous();
    const float* pg = gc.data_ptr<float>();
    const float* pst = stc.data_ptr<float>();
    for_tiles(hb32, h32, hd, vocab_tile, row_block,
              [&](int64_t v0, int64_t vt, const at::Tensor& wt, const at::Tensor& wbt, int64_t r0, int64_t rb,
                  at::Tensor& zb, at::Tensor& z) {
                float* pb = zb.data_ptr<float>();
                float* pm = z.data_ptr<float>();
                parallel_rows(
                    rb, vt, [&](int64_t i) {
                      const int64_t r = r0 + i;
                      grad_kl_row(pb + i * vt, pm + i * vt, vt, pst + r * kKStats, pg[r], keep[r], base_side);
                    },
                    8192);
                if (need_hidden) dh.narrow(0, r0, rb).addmm_(z, wt);
                if (need_base) dhb.narrow(0, r0, rb).addmm_(zb, wbt);
                if (need_weight) dw.narrow(0, v0, vt).addmm_(z.t(), h32.narrow(0, r0, rb));
                if (need_wb) dw_base.narrow(0, v0, vt).addmm_(zb.t(), hb32.narrow(0, r0, rb));
                if (need_bias) db.narrow(0, v0, vt).add_(z.sum(0));
                if (need_bb) db_base.narrow(0, v0, vt).add_(zb.sum(0));
              });
  }
  auto cast = [](at::Tensor& t, bool need, const std::optional<at::Tensor>& like) {
    if (need) t = t.to(like->scalar_type());
  };
  cast(dhb, need_base, hidden_base), cast(dh, need_hidden, hidden), cast(dw, need_weight, weight);
  cast(db, need_bias, bias), cast(dwb, need_weight_base, weight_base), cast(dbb, need_bias_base, bias_base);
  return {dhb, dh, dw, db, dwb, dbb};
}

}  // namespace
}  // namespace alter_kernels

TORCH_LIBRARY_FRAGMENT(alter_kernels, m) {
  m.def(
      "lm_head_kl_fwd(Tensor hidden_base, Tensor hidden, Tensor weight, Tensor? bias, Tensor? mask, "
      "int vocab_tile=0, int row_block=0, Tensor? weight_base=None, Tensor? bias_base=None) -> (Tensor, Tensor)");
  m.def(
      "lm_head_kl_bwd(Tensor grad, Tensor hidden_base, Tensor hidden, Tensor weight, Tensor? bias, Tensor? mask, "
      "Tensor stats, bool need_base, bool need_hidden, bool need_weight, bool need_bias, int vocab_tile=0, "
      "int row_block=0, Tensor? weight_base=None, Tensor? bias_base=None, bool need_weight_base=False, "
      "bool need_bias_base=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lm_head_kl_fwd_grad(Tensor hidden_base, Tensor hidden, Tensor weight, Tensor? bias, Tensor? mask, "
      "int vocab_tile=0, int row_block=0, Tensor? weight_base=None, Tensor? bias_base=None) -> "
      "(Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(alter_kernels, CPU, m) {
  m.impl("lm_head_kl_fwd", &alter_kernels::lm_head_kl_fwd_cpu);
  m.impl("lm_head_kl_bwd", &alter_kernels::lm_head_kl_bwd_cpu);
  m.impl("lm_head_kl_fwd_grad", &alter_kernels::lm_head_kl_fwd_grad_cpu);
}
