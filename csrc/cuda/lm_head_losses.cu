// Fused LM-head unlearning losses and KL on CUDA without the [N, V] logits (issue 16).
//
// The CPU kernels (csrc/cpu/lm_head_losses.cpp, lm_head_kl.cpp) define the ops, their schemas
// and the statistics; this file adds CUDA kernels for the same ops. Tokens go in chunks: one
// cuBLAS GEMM per chunk makes the chunk's fp32 logits (bf16/fp16 inputs: tensor-core GEMM with
// fp32 output where ATen offers it), a row kernel (one block of 256 threads per token, online
// statistics per thread merged through shared memory) reduces it in the forward, or turns it in
// place into dL/dlogits in the backward, and d hidden / d weight come from two more GEMMs per
// chunk. At most one [chunk, V] fp32 tile (two for the KL) exists: chunk = row_block, or as many
// tokens as fit in 256 MiB. Finals per row in double. bf16/fp16 backward GEMMs take dL/dlogits
// rounded to the input dtype (fp32 accumulation), as lm_head_entropy.cu does.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cfloat>
#include <climits>

#include "alter_constants.h"
#include "lm_head_cuda.h"

namespace alter_kernels {
namespace {

using namespace lm_head_cuda;

constexpr int kThreads = 256;
constexpr int kNone = 0, kShannon = 1, kTsallis = 2;

// ---- online statistics of one row: per thread, then merged across the block ----
struct LStat {
  float m, z, qs, za;
  int cnt, arg, nan;
};

__device__ inline void lstat_push(LStat& s, float x, int v, int y, int mode, float q) {
  if (isnan(x)) {
    s.nan = 1;
    return;
  }
  if (v != y) {
    if (x > s.za) {
      s.za = x;
      s.cnt = 1;
      s.arg = v;
    } else if (x == s.za && x > -INFINITY) {
      s.cnt += 1;
      s.arg = min(s.arg, v);
    }
  }
  if (x == -INFINITY) return;
  if (x > s.m) {
    if (s.z > 0.f) {
      const float d = s.m - x, sc = __expf(d);
      if (mode == kShannon) s.qs = sc * (s.qs + d * s.z);
      else if (mode == kTsallis) s.qs *= __expf(q * d);
      s.z *= sc;
    }
    s.m = x;
  }
  const float t = x - s.m, e = __expf(t);
  s.z += e;
  if (mode == kShannon) s.qs += e * t;
  else if (mode == kTsallis) s.qs += __expf(q * t);
}

__device__ inline LStat lstat_merge(const LStat& a, const LStat& b, int mode, float q) {
  LStat r;
  r.nan = a.nan | b.nan;
  r.m = fmaxf(a.m, b.m);
  r.z = r.qs = 0.f;
  if (r.m > -INFINITY) {
    const LStat* p[2] = {&a, &b};
    for (int k = 0; k < 2; ++k) {
      if (!(p[k]->z > 0.f)) continue;
      const float d = p[k]->m - r.m, sc = __expf(d);
      r.z += sc * p[k]->z;
      if (mode == kShannon) r.qs += sc * (p[k]->qs + d * p[k]->z);
      else if (mode == kTsallis) r.qs += p[k]->qs * __expf(q * d);
    }
  }
  if (a.za > b.za) {
    r.za = a.za; r.cnt = a.cnt; r.arg = a.arg;
  } else if (b.za > a.za) {
    r.za = b.za; r.cnt = b.cnt; r.arg = b.arg;
  } else {
    r.za = a.za; r.cnt = a.cnt + b.cnt; r.arg = min(a.arg, b.arg);
  }
  return r;
}

__global__ void losses_fwd_kernel(const float* __restrict__ X, const int64_t* __restrict__ labels, float* nll,
                                  float* ihl, float* ent, float* lse, float* st, int64_t V, int64_t ignore, int mode,
                                  float q) {
  __shared__ LStat sh[kThreads];
  const int64_t row = blockIdx.x;
  const float* x = X + row * V;
  const int64_t y64 = labels[row];
  const bool valid = y64 != ignore;
  const int y = valid ? static_cast<int>(y64) : 0;
  LStat s{-INFINITY, 0.f, 0.f, -INFINITY, 0, INT_MAX, 0};
  if (valid) {
    for (int v = threadIdx.x; v < V; v += blockDim.x) lstat_push(s, x[v], v, y, mode, q);
  }
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sh[threadIdx.x] = lstat_merge(sh[threadIdx.x], sh[threadIdx.x + w], mode, q);
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  float* o = st + row * 7;
  if (!valid) {
    nll[row] = ihl[row] = ent[row] = lse[row] = 0.f;
    for (int k = 0; k < 7; ++k) o[k] = 0.f;
    return;
  }
  const LStat r = sh[0];
  if (r.nan || !(r.z > 0.f)) {
    nll[row] = ihl[row] = ent[row] = NAN;
    lse[row] = r.nan ? NAN : -INFINITY;
    for (int k = 0; k < 7; ++k) o[k] = NAN;
    if (!r.nan) o[0] = o[1] = -INFINITY;
    return;
  }
  const double logz = log(static_cast<double>(r.z)), m = r.m, zy = x[y];
  lse[row] = static_cast<float>(m + logz);
  nll[row] = static_cast<float>((m - zy) + logz);
  const double py = exp((zy - m) - logz), pa = r.cnt > 0 ? exp((static_cast<double>(r.za) - m) - logz) : 0.0;
  ihl[row] = static_cast<float>(fmax(0.0, 1.0 + py - pa));
  float aux = 0.f;
  if (mode == kShannon) {
    aux = static_cast<float>(logz - static_cast<double>(r.qs) / r.z);
    ent[row] = aux;
  } else if (mode == kTsallis) {
    const double spq = static_cast<double>(r.qs) / pow(static_cast<double>(r.z), static_cast<double>(q));
    ent[row] = static_cast<float>((1.0 - spq) / (static_cast<double>(q) - 1.0));
    aux = static_cast<float>(spq);
  } else {
    ent[row] = 0.f;
  }
  o[0] = r.m; o[1] = static_cast<float>(logz); o[2] = aux; o[3] = static_cast<float>(zy); o[4] = r.za;
  o[5] = static_cast<float>(r.cnt); o[6] = static_cast<float>(r.cnt > 0 ? r.arg : -1);
}

// dL/dz in place (see lm_head_losses.cpp for the formula).
__global__ void losses_bwd_kernel(float* X, const int64_t* __restrict__ labels, const float* __restrict__ st,
                                  const float* gn, const float* gi, const float* ge, const float* gl, int64_t V,
                                  int64_t ignore, int mode, float q) {
  const int64_t row = blockIdx.x;
  float* x = X + row * V;
  const int64_t y64 = labels[row];
  if (y64 == ignore) {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) x[v] = 0.f;
    return;
  }
  const float* s = st + row * 7;
  const float m = s[0], logz = s[1], aux = s[2], za = s[4], cnt = s[5];
  const int arg = static_cast<int>(s[6]), y = static_cast<int>(y64);
  const float py = expf((s[3] - m) - logz), pa = cnt > 0 ? expf((za - m) - logz) : 0.f;
  const float g_n = gn ? gn[row] : 0.f, g_i = gi ? gi[row] : 0.f, g_l = gl ? gl[row] : 0.f;
  const float g_e = (ge && mode != kNone) ? ge[row] : 0.f;
  const float alpha = g_l + g_n - g_i * (py - pa), beta_y = g_i * py - g_n;
  const float beta_t = cnt > 0 ? -g_i * pa / cnt : 0.f;
  const float c_ent = mode == kShannon ? -g_e : -g_e * q / (q - 1.f);
  const bool bad = isnan(m) || m == -INFINITY;
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const float xv = x[v], t = (xv - m) - logz, p = expf(t);
    float d = alpha * p;
    if (mode == kShannon) d += xv > -INFINITY ? c_ent * p * (t + aux) : 0.f;
    else if (mode == kTsallis) d += c_ent * (expf(q * t) - p * aux);
    if (v == y) d += beta_y;
    if (v != y && cnt > 0 && (v == arg || (cnt > 1 && xv == za))) d += beta_t;
    x[v] = bad ? NAN : d;
  }
}

struct KStat {
  float mb, zb, a, m, z;
  int nan;
};

__device__ inline KStat kstat_merge(const KStat& p, const KStat& r2) {
  KStat r;
  r.nan = p.nan | r2.nan;
  r.mb = fmaxf(p.mb, r2.mb);
  r.m = fmaxf(p.m, r2.m);
  r.zb = r.a = r.z = 0.f;
  const KStat* s[2] = {&p, &r2};
  for (int k = 0; k < 2; ++k) {
    if (s[k]->zb > 0.f) {
      const float sc = expf(s[k]->mb - r.mb);
      r.zb += sc * s[k]->zb;
      r.a += sc * s[k]->a;
    }
    if (s[k]->z > 0.f) r.z += expf(s[k]->m - r.m) * s[k]->z;
  }
  return r;
}

__global__ void kl_fwd_kernel(const float* __restrict__ XB, const float* __restrict__ X, const bool* mask, float* kl,
                              float* st, int64_t V) {
  __shared__ KStat sh[kThreads];
  const int64_t row = blockIdx.x;
  const bool valid = mask == nullptr || mask[row];
  KStat s{-INFINITY, 0.f, 0.f, -INFINITY, 0.f, 0};
  for (int64_t v = threadIdx.x; valid && v < V; v += blockDim.x) {
    const float xb = XB[row * V + v], x = X[row * V + v];
    if (isnan(xb) || isnan(x)) {
      s.nan = 1;
      continue;
    }
    if (xb > s.mb) {
      const float sc = s.zb > 0.f ? expf(s.mb - xb) : 0.f;
      s.zb *= sc;
      s.a *= sc;
      s.mb = xb;
    }
    if (x > s.m) {
      s.z = s.z > 0.f ? s.z * expf(s.m - x) : 0.f;
      s.m = x;
    }
    const float eb = xb > -INFINITY ? expf(xb - s.mb) : 0.f;
    s.zb += eb;
    if (eb > 0.f) s.a += eb * (xb - x);
    if (x > -INFINITY) s.z += expf(x - s.m);
  }
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sh[threadIdx.x] = kstat_merge(sh[threadIdx.x], sh[threadIdx.x + w]);
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  float* o = st + row * 5;
  const KStat r = sh[0];
  if (!valid) {
    kl[row] = 0.f;
    for (int k = 0; k < 5; ++k) o[k] = 0.f;
  } else if (r.nan || !(r.zb > 0.f) || !(r.z > 0.f)) {
    kl[row] = NAN;
    for (int k = 0; k < 5; ++k) o[k] = NAN;
  } else {
    const double lzb = log(static_cast<double>(r.zb)), lz = log(static_cast<double>(r.z));
    const double v = static_cast<double>(r.a) / r.zb - (static_cast<double>(r.mb) - r.m) - lzb + lz;
    kl[row] = static_cast<float>(v);
    o[0] = r.mb; o[1] = static_cast<float>(lzb); o[2] = r.m; o[3] = static_cast<float>(lz); o[4] = kl[row];
  }
}

__global__ void kl_bwd_kernel(float* XB, float* X, const float* __restrict__ g, const bool* mask,
                              const float* __restrict__ st, int64_t V, bool need_base) {
  const int64_t row = blockIdx.x;
  const bool valid = mask == nullptr || mask[row];
  const float* s = st + row * 5;
  const float k = static_cast<float>((static_cast<double>(s[0]) - s[2]) + (static_cast<double>(s[1]) - s[3]) + s[4]);
  const float gr = g[row];
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float xb = XB[row * V + v], x = X[row * V + v];
    const float pb = expf((xb - s[0]) - s[1]), p = expf((x - s[2]) - s[3]);
    X[row * V + v] = valid ? gr * (p - pb) : 0.f;
    if (need_base) XB[row * V + v] = valid ? (pb > 0.f ? gr * pb * ((xb - x) - k) : 0.f) : 0.f;
  }
}

// ---- host side ----

void check_cuda(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                const char* op) {
  check_head_cuda(hidden, weight, bias, op);
  TORCH_CHECK(weight.size(0) <= (int64_t(1) << 24), op, ": V must be <= 2^24");
}

int loss_mode(bool with_entropy, double q) {
  if (!with_entropy) return kNone;
  return alter_kernels::is_shannon(q) ? kShannon : kTsallis;  // alter_constants.h
}

const float* opt_ptr(const std::optional<at::Tensor>& t, int64_t s, at::Tensor& keep) {
  if (!(t.has_value() && t->defined())) return nullptr;
  keep = t->contiguous();
  return keep.data_ptr<float>() + s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lm_head_losses_fwd_cuda(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& labels, double q, bool with_entropy, int64_t ignore_index, int64_t vocab_tile,
    int64_t row_block) {
  (void)vocab_tile;  // the CUDA path tiles tokens only: one cuBLAS GEMM over the whole vocabulary
  check_cuda(hidden, weight, bias, "lm_head_losses_fwd");
  const at::cuda::CUDAGuard guard(hidden.device());
  const int64_t N = hidden.size(0), V = weight.size(0);
  TORCH_CHECK(labels.is_cuda() && labels.scalar_type() == at::kLong && labels.numel() == N,
              "lm_head_losses_fwd: labels must be int64 [N] on the device of hidden");
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor out[4] = {at::empty({N}, fopts), at::empty({N}, fopts), at::empty({N}, fopts), at::empty({N}, fopts)};
  at::Tensor st = at::empty({N, 7}, fopts);
  const at::Tensor b32 = opt_bias32(bias), lab = labels.contiguous();
  const int mode = loss_mode(with_entropy, q);
  const int64_t step = chunk_rows(N, V, row_block, 1);
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t s = 0; s < N; s += step) {
    const int64_t c = std::min(step, N - s);
    at::Tensor z = logits_fp32(hidden.narrow(0, s, c), weight, b32).contiguous();
    losses_fwd_kernel<<<c, kThreads, 0, stream>>>(
        z.data_ptr<float>(), lab.data_ptr<int64_t>() + s, out[0].data_ptr<float>() + s, out[1].data_ptr<float>() + s,
        out[2].data_ptr<float>() + s, out[3].data_ptr<float>() + s, st.data_ptr<float>() + s * 7, V, ignore_index,
        mode, static_cast<float>(q));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {out[0], out[1], out[2], out[3], st};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lm_head_losses_bwd_cuda(
    const std::optional<at::Tensor>& grad_nll, const std::optional<at::Tensor>& grad_ihl,
    const std::optional<at::Tensor>& grad_ent, const std::optional<at::Tensor>& grad_lse, const at::Tensor& hidden,
    const at::Tensor& weight, const std::optional<at::Tensor>& bias, const at::Tensor& labels,
    const at::Tensor& stats, double q, int64_t ignore_index, bool need_hidden, bool need_weight, bool need_bias,
    int64_t vocab_tile, int64_t row_block) {
  (void)vocab_tile;
  check_cuda(hidden, weight, bias, "lm_head_losses_bwd");
  const at::cuda::CUDAGuard guard(hidden.device());
  const int64_t N = hidden.size(0), V = weight.size(0), d = hidden.size(1);
  const bool has_bias = bias.has_value() && bias->defined();
  need_bias = need_bias && has_bias;
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor dh = need_hidden ? at::zeros({N, d}, hidden.options()) : at::empty({0}, fopts);
  at::Tensor dw = need_weight ? at::zeros({V, d}, fopts) : at::empty({0}, fopts);
  at::Tensor db = need_bias ? at::zeros({V}, fopts) : at::empty({0}, fopts);
  const at::Tensor b32 = opt_bias32(bias), lab = labels.contiguous(), st = stats.contiguous();
  const bool lp = low_precision(hidden, weight);
  const at::Tensor w32 = (!lp && need_hidden) ? weight.to(at::kFloat) : at::Tensor();
  const int mode = loss_mode(grad_ent.has_value() && grad_ent->defined() && q > 0, q);
  at::Tensor k0, k1, k2, k3;
  const float *gn = opt_ptr(grad_nll, 0, k0), *gi = opt_ptr(grad_ihl, 0, k1), *ge = opt_ptr(grad_ent, 0, k2),
              *gl = opt_ptr(grad_lse, 0, k3);
  const int64_t step = chunk_rows(N, V, row_block, 1);
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t s = 0; s < N && (need_hidden || need_weight || need_bias); s += step) {
    const int64_t c = std::min(step, N - s);
    const at::Tensor hb = hidden.narrow(0, s, c);
    at::Tensor z = logits_fp32(hb, weight, b32).contiguous();
    losses_bwd_kernel<<<c, kThreads, 0, stream>>>(z.data_ptr<float>(), lab.data_ptr<int64_t>() + s,
                                                 st.data_ptr<float>() + s * 7, gn ? gn + s : nullptr,
                                                 gi ? gi + s : nullptr, ge ? ge + s : nullptr, gl ? gl + s : nullptr, V,
                                                 ignore_index, mode, static_cast<float>(q));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    chunk_grads(z, hb, weight, w32, dh, dw, db, s, need_hidden, need_weight, need_bias);
  }
  if (need_weight) dw = dw.to(weight.scalar_type());
  if (need_bias) db = db.to(bias->scalar_type());
  return {dh, dw, db};
}

const bool* mask_ptr(const std::optional<at::Tensor>& mask, int64_t s, at::Tensor& keep) {
  if (!(mask.has_value() && mask->defined())) return nullptr;
  keep = mask->contiguous();
  return keep.data_ptr<bool>() + s;
}

// The base head: weight_base / bias_base when weight_base is given, else the shared weight / bias.
bool base_head(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
               const std::optional<at::Tensor>& weight_base, const std::optional<at::Tensor>& bias_base,
               at::Tensor& wb, at::Tensor& bb32, const char* op) {
  const bool two = weight_base.has_value() && weight_base->defined();
  if (!two) {
    TORCH_CHECK(!(bias_base.has_value() && bias_base->defined()), op, ": bias_base needs weight_base");
    wb = weight;
    bb32 = opt_bias32(bias);
    return false;
  }
  TORCH_CHECK(weight_base->sizes() == weight.sizes(), op, ": weight_base must have the shape of weight");
  check_cuda(hidden, *weight_base, bias_base, op);
  wb = *weight_base;
  bb32 = opt_bias32(bias_base);
  return true;
}

std::tuple<at::Tensor, at::Tensor> lm_head_kl_fwd_cuda(const at::Tensor& hidden_base, const at::Tensor& hidden,
                                                       const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                                       const std::optional<at::Tensor>& mask, int64_t vocab_tile,
                                                       int64_t row_block, const std::optional<at::Tensor>& weight_base,
                                                       const std::optional<at::Tensor>& bias_base) {
  (void)vocab_tile;
  const char* op = "lm_head_kl_fwd";
  check_cuda(hidden, weight, bias, op);
  TORCH_CHECK(hidden_base.sizes() == hidden.sizes(), op, ": hidden_base must have the shape of hidden");
  at::Tensor wb, bb32;
  base_head(hidden, weight, bias, weight_base, bias_base, wb, bb32, op);
  const at::cuda::CUDAGuard guard(hidden.device());
  const int64_t N = hidden.size(0), V = weight.size(0);
  auto fopts = hidden.options().dtype(at::kFloat);
  at::Tensor kl = at::empty({N}, fopts), st = at::empty({N, 5}, fopts);
  const at::Tensor b32 = opt_bias32(bias);
  at::Tensor mk;
  const bool* pm = mask_ptr(mask, 0, mk);
  const int64_t step = chunk_rows(N, V, row_block, 2);
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t s = 0; s < N; s += step) {
    const int64_t c = std::min(step, N - s);
    at::Tensor zb = logits_fp32(hidden_base.narrow(0, s, c), wb, bb32).contiguous();
    at::Tensor z = logits_fp32(hidden.narrow(0, s, c), weight, b32).contiguous();
    kl_fwd_kernel<<<c, kThreads, 0, stream>>>(zb.data_ptr<float>(), z.data_ptr<float>(), pm ? pm + s : nullptr,
                                             kl.data_ptr<float>() + s, st.data_ptr<float>() + s * 5, V);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {kl, st};
}

using KLGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

KLGrads lm_head_kl_bwd_cuda(const at::Tensor& grad, const at::Tensor& hidden_base, const at::Tensor& hidden,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& mask, const at::Tensor& stats, bool need_base,
                            bool need_hidden, bool need_weight, bool need_bias, int64_t vocab_tile, int64_t row_block,
                            const std::optional<at::Tensor>& weight_base, const std::optional<at::Tensor>& bias_base,
                            bool need_weight_base, bool need_bias_base) {
  (void)vocab_tile;
  const char* op = "lm_head_kl_bwd";
  check_cuda(hidden, weight, bias, op);
  at::Tensor wb, bb32;
  const bool two = base_head(hidden, weight, bias, weight_base, bias_base, wb, bb32, op);
  const at::cuda::CUDAGuard guard(hidden.device());
  const int64_t N = hidden.size(0), V = weight.size(0), d = hidden.size(1);
  need_bias = need_bias && bias.has_value() && bias->defined();
  need_weight_base = need_weight_base && two;
  need_bias_base = need_bias_base && two && bb32.defined();
  auto fopts = hidden.options().dtype(at::kFloat);
  auto buf = [&](bool need, at::IntArrayRef shape, const at::TensorOptions& o) {
    return need ? at::zeros(shape, o) : at::empty({0}, fopts);
  };
  at::Tensor dhb = buf(need_base, {N, d}, hidden.options()), dh = buf(need_hidden, {N, d}, hidden.options());
  at::Tensor dw = buf(need_weight, {V, d}, fopts), db = buf(need_bias, {V}, fopts);
  at::Tensor dwb = buf(need_weight_base, {V, d}, fopts), dbb = buf(need_bias_base, {V}, fopts);
  // the base logits' head gradients: the shared head's share, or the base head's own
  at::Tensor& dw_base = two ? dwb : dw;
  at::Tensor& db_base = two ? dbb : db;
  const bool need_wb = two ? need_weight_base : need_weight, need_bb = two ? need_bias_base : need_bias;
  const bool base_side = need_base || need_wb || need_bb;
  const at::Tensor b32 = opt_bias32(bias), g = grad.contiguous(), st = stats.contiguous();
  const bool lp = low_precision(hidden, weight);
  const at::Tensor w32 = (!lp && need_hidden) ? weight.to(at::kFloat) : at::Tensor();
  const at::Tensor wb32 = (!lp && need_base) ? (two ? wb.to(at::kFloat) : (w32.defined() ? w32 : weight.to(at::kFloat)))
                                              : at::Tensor();
  at::Tensor mk;
  const bool* pm = mask_ptr(mask, 0, mk);
  const int64_t step = chunk_rows(N, V, row_block, 2);
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t s = 0; s < N && (base_side || need_hidden || need_weight || need_bias); s += step) {
    const int64_t c = std::min(step, N - s);
    const at::Tensor hbs = hidden_base.narrow(0, s, c), hs = hidden.narrow(0, s, c);
    at::Tensor zb = logits_fp32(hbs, wb, bb32).contiguous(), z = logits_fp32(hs, weight, b32).contiguous();
    kl_bwd_kernel<<<c, kThreads, 0, stream>>>(zb.data_ptr<float>(), z.data_ptr<float>(), g.data_ptr<float>() + s,
                                             pm ? pm + s : nullptr, st.data_ptr<float>() + s * 5, V, base_side);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    chunk_grads(z, hs, weight, w32, dh, dw, db, s, need_hidden, need_weight, need_bias);
    if (base_side) chunk_grads(zb, hbs, wb, wb32, dhb, dw_base, db_base, s, need_base, need_wb, need_bb);
  }
  if (need_weight) dw = dw.to(weight.scalar_type());
  if (need_bias) db = db.to(bias->scalar_type());
  if (need_weight_base) dwb = dwb.to(weight_base->scalar_type());
  if (need_bias_base) dbb = dbb.to(bias_base->scalar_type());
  return {dhb, dh, dw, db, dwb, dbb};
}

}  // namespace
}  // namespace alter_kernels

TORCH_LIBRARY_IMPL(alter_kernels, CUDA, m) {
  m.impl("lm_head_losses_fwd", &alter_kernels::lm_head_losses_fwd_cuda);
  m.impl("lm_head_losses_bwd", &alter_kernels::lm_head_losses_bwd_cuda);
  m.impl("lm_head_kl_fwd", &alter_kernels::lm_head_kl_fwd_cuda);
  m.impl("lm_head_kl_bwd", &alter_kernels::lm_head_kl_bwd_cuda);
}
