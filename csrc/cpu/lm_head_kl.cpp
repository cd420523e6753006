// Per-token KL(p_base || p_model) of two hidden-state tensors sharing one LM head, CPU kernels:
// neither [N, V] logits tensor ever exists.
//
// lm_head_kl_fwd(hidden_base [N, d], hidden [N, d], weight [V, d], bias [V]?, mask [N] bool?,
//                vocab_tile, row_block) -> (kl [N], stats [N, 5]) fp32
//   z_b = hidden_base W^T + b, z = hidden W^T + b, tile by tile (two GEMMs per tile); per token the
//   online statistics m_b, Z_b = sum exp(z_b - m_b), m, Z = sum exp(z - m) and
//   A = sum exp(z_b - m_b) (z_b - z), so that KL = A / Z_b - (m_b - m) - log Z_b + log Z.
//   stats = [m_b, log Z_b, m, log Z, KL]. Rows with mask False give 0.
// lm_head_kl_bwd(grad [N], hidden_base, hidden, weight, bias?, mask?, stats, need_base, need_hidden,
//                need_weight, need_bias, ...) -> (d hidden_base, d hidden, d weight, d bias)
//   dKL/dz_v = p_v - p_b,v;  dKL/dz_b,v = p_b,v (log p_b,v - log p_v - KL);
//   d hidden = dZ W, d hidden_base = dZ_b W, d W = dZ^T H + dZ_b^T H_b, d bias = colsum(dZ + dZ_b).
#include "lm_head_losses_common.h"

namespace alter_kernels {
namespace {

using namespace losses_cpu;

constexpr int64_t kKStats = 5;

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
    const fVec eb = vexp(at::vec::maximum(vb - mbv, lowest));
    zba = zba + eb;
    za = za + vexp(at::vec::maximum(v - mv, lowest));
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

// Calls f(v0, vt, wt, bt, r0, rb, zb, z) for every (vocabulary tile, token block) with the two
// fp32 logits tiles made.
template <typename F>
void for_tiles(const at::Tensor& hb32, const at::Tensor& h32, const at::Tensor& weight, const at::Tensor& b32,
               int64_t vocab_tile, int64_t row_block, F&& f) {
  const int64_t N = h32.size(0), V = weight.size(0);
  const Tiles T = pick_tiles(N, V, vocab_tile, row_block);
  auto fopts = h32.options();
  at::Tensor buf = at::empty({2, T.rb * T.vt}, fopts);
  const at::Tensor w = weight.contiguous();
  for (int64_t v0 = 0; v0 < V; v0 += T.vt) {
    const int64_t vt = std::min(T.vt, V - v0);
    const at::Tensor wt = w.narrow(0, v0, vt).to(at::kFloat).contiguous();
    const at::Tensor bt = b32.defined() ? b32.narrow(0, v0, vt) : at::Tensor();
    for (int64_t r0 = 0; r0 < N; r0 += T.rb) {
      const int64_t rb = std::min(T.rb, N - r0);
      at::Tensor zb = buf[0].narrow(0, 0, rb * vt).view({rb, vt}), z = buf[1].narrow(0, 0, rb * vt).view({rb, vt});
      logits_tile(zb, hb32.narrow(0, r0, rb), wt, bt);
      logits_tile(z, h32.narrow(0, r0, rb), wt, bt);
      f(v0, vt, wt, r0, rb, zb, z);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> lm_head_kl_fwd_cpu(const at::Tensor& hidden_base, const at::Tensor& hidden,
                                                      const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                                      const std::optional<at::Tensor>& mask, int64_t vocab_tile,
                                                      int64_t row_block) {
  const char* op = "lm_head_kl_fwd";
  check_head(hidden, weight, bias, op);
  check_head(hidden_base, weight, bias, op);
  check_pair(hidden_base, hidden, op);
  const int64_t N = hidden.size(0);
  const std::vector<char> keep = read_mask(mask, N, op);
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor kl = at::zeros({N}, fopts), st = at::zeros({N, kKStats}, fopts);
  if (N == 0) return {kl, st};
  const at::Tensor b32 = (bias.has_value() && bias->defined()) ? bias->to(at::kFloat).contiguous() : at::Tensor();
  std::vector<KLRow> rows(N);
  for_tiles(hidden_base.to(at::kFloat).contiguous(), hidden.to(at::kFloat).contiguous(), weight, b32, vocab_tile,
            row_block, [&](int64_t, int64_t vt, const at::Tensor&, int64_t r0, int64_t rb, at::Tensor& zb, at::Tensor& z) {
              const float* pb = zb.data_ptr<float>();
              const float* pm = z.data_ptr<float>();
              at::parallel_for(0, rb, std::max<int64_t>(1, 8192 / vt), [&](int64_t i0, int64_t i1) {
                for (int64_t i = i0; i < i1; ++i) {
                  if (keep[r0 + i]) fold_kl(pb + i * vt, pm + i * vt, vt, rows[r0 + i]);
                }
              });
            });
  float* pk = kl.data_ptr<float>();
  float* ps = st.data_ptr<float>();
  for (int64_t r = 0; r < N; ++r) {
    if (keep[r]) finalize_kl(rows[r], pk + r, ps + r * kKStats);
  }
  return {kl, st};
}

// One row in place: zb -> dL/dz_b (when need_base), z -> dL/dz.
void grad_kl_row(float* xb, float* x, int64_t n, const float* s, float g, bool keep, bool need_base) {
  if (!keep) {
    std::fill(x, x + n, 0.f);
    std::fill(xb, xb + n, 0.f);
    return;
  }
  constexpr int64_t L = fVec::size();
  const fVec mbv(s[0]), lzbv(s[1]), mv(s[2]), lzv(s[3]), klv(s[4]), gv(g), lowest(-FLT_MAX), zero(0.f);
  auto body = [&](float* pb, float* pm, int64_t cnt) {
    const fVec vb = fVec::loadu(pb, cnt), v = fVec::loadu(pm, cnt);
    const fVec tb = (vb - mbv) - lzbv, t = (v - mv) - lzv;  // log p_b, log p (-inf stays -inf)
    const fVec pbv = vexp(at::vec::maximum(tb, lowest)), p = vexp(at::vec::maximum(t, lowest));
    if (need_base) {
      const fVec db = gv * pbv * (tb - t - klv);
      fVec::blendv(zero, db, pbv > zero).store(pb, cnt);
    }
    (gv * (p - pbv)).store(pm, cnt);
  };
  int64_t i = 0;
  for (; i + L <= n; i += L) body(xb + i, x + i, L);
  if (i < n) body(xb + i, x + i, n - i);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lm_head_kl_bwd_cpu(
    const at::Tensor& grad, const at::Tensor& hidden_base, const at::Tensor& hidden, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& mask, const at::Tensor& stats,
    bool need_base, bool need_hidden, bool need_weight, bool need_bias, int64_t vocab_tile, int64_t row_block) {
  const char* op = "lm_head_kl_bwd";
  check_head(hidden, weight, bias, op);
  check_head(hidden_base, weight, bias, op);
  check_pair(hidden_base, hidden, op);
  const int64_t N = hidden.size(0), V = weight.size(0), d = hidden.size(1);
  const bool has_bias = bias.has_value() && bias->defined();
  check_row_vec(grad, N, op, "grad");
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == N && stats.size(1) == kKStats && stats.scalar_type() == at::kFloat,
              op, ": stats must be the fp32 [N, 5] statistics of the forward, got ", stats.sizes());
  const std::vector<char> keep = read_mask(mask, N, op);
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor dhb = need_base ? at::zeros({N, d}, fopts) : at::empty({0}, fopts);
  at::Tensor dh = need_hidden ? at::zeros({N, d}, fopts) : at::empty({0}, fopts);
  at::Tensor dw = need_weight ? at::zeros({V, d}, fopts) : at::empty({0}, fopts);
  at::Tensor db = (need_bias && has_bias) ? at::zeros({V}, fopts) : at::empty({0}, fopts);
  if (N > 0 && (need_base || need_hidden || need_weight || (need_bias && has_bias))) {
    const at::Tensor b32 = has_bias ? bias->to(at::kFloat).contiguous() : at::Tensor();
    const at::Tensor hb32 = hidden_base.to(at::kFloat).contiguous(), h32 = hidden.to(at::kFloat).contiguous();
    const at::Tensor gc = grad.contiguous(), stc = stats.contiguous();
    const float* pg = gc.data_ptr<float>();
    const float* pst = stc.data_ptr<float>();
    // the base logits depend on the shared head too: d W and d bias take the base side's share
    // (exact autograd semantics; a frozen head, the usual case, needs neither)
    const bool base_side = need_base || need_weight || (need_bias && has_bias);
    for_tiles(hb32, h32, weight, b32, vocab_tile, row_block,
              [&](int64_t v0, int64_t vt, const at::Tensor& wt, int64_t r0, int64_t rb, at::Tensor& zb, at::Tensor& z) {
                float* pb = zb.data_ptr<float>();
                float* pm = z.data_ptr<float>();
                at::parallel_for(0, rb, std::max<int64_t>(1, 8192 / vt), [&](int64_t i0, int64_t i1) {
                  for (int64_t i = i0; i < i1; ++i) {
                    const int64_t r = r0 + i;
                    grad_kl_row(pb + i * vt, pm + i * vt, vt, pst + r * kKStats, pg[r], keep[r], base_side);
                  }
                });
                if (need_hidden) dh.narrow(0, r0, rb).addmm_(z, wt);
                if (need_base) dhb.narrow(0, r0, rb).addmm_(zb, wt);
                if (need_weight) {
                  dw.narrow(0, v0, vt).addmm_(z.t(), h32.narrow(0, r0, rb));
                  if (base_side) dw.narrow(0, v0, vt).addmm_(zb.t(), hb32.narrow(0, r0, rb));
                }
                if (need_bias && has_bias) {
                  db.narrow(0, v0, vt).add_(z.sum(0));
                  if (base_side) db.narrow(0, v0, vt).add_(zb.sum(0));
                }
              });
  }
  if (need_base) dhb = dhb.to(hidden_base.scalar_type());
  if (need_hidden) dh = dh.to(hidden.scalar_type());
  if (need_weight) dw = dw.to(weight.scalar_type());
  if (need_bias && has_bias) db = db.to(bias->scalar_type());
  return {dhb, dh, dw, db};
}

}  // namespace
}  // namespace alter_kernels

TORCH_LIBRARY_FRAGMENT(alter_kernels, m) {
  m.def(
      "lm_head_kl_fwd(Tensor hidden_base, Tensor hidden, Tensor weight, Tensor? bias, Tensor? mask, "
      "int vocab_tile=0, int row_block=0) -> (Tensor, Tensor)");
  m.def(
      "lm_head_kl_bwd(Tensor grad, Tensor hidden_base, Tensor hidden, Tensor weight, Tensor? bias, Tensor? mask, "
      "Tensor stats, bool need_base, bool need_hidden, bool need_weight, bool need_bias, int vocab_tile=0, "
      "int row_block=0) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(alter_kernels, CPU, m) {
  m.impl("lm_head_kl_fwd", &alter_kernels::lm_head_kl_fwd_cpu);
  m.impl("lm_head_kl_bwd", &alter_kernels::lm_head_kl_bwd_cpu);
}
