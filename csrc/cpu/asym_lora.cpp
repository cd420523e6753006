// CPU kernels of the asymmetric multi-expert LoRA linear (ALTER_SPEC sections 1 and 4).
//
//   y = x W0^T (+ bias) + s * sum_e w[:, e] * (u B_e^T),   u = x A^T  ([N, r], accumulation dtype)
//
// Forward, two strategies (mode 0 = automatic, 1 = concatenated GEMM, 2 = per-token gather):
//   cat:    U_cat[n, e*r + j] = s * w[n, e] * u[n, j]  (one fused pass), then ONE GEMM
//           y += U_cat @ B_cat^T with B_cat = [B_0 | ... | B_{E-1}]  ([d_out, E*r]).
//   gather: per token, only the experts with w[n, e] != 0, dot products of u[n] with the rows of
//           B_e, accumulated straight into y (no B_cat copy; the decode path, N small).
// Backward (the masked backward of spec 4), with g = dy and V = g @ B_cat ([N, E*r]):
//   du[n, j]  = s * sum_e w[n, e] V[n, e*r + j]           (all rows -> dx = g W0 + du A)
//   dA        = (du masked by a_grad_mask rows)^T x
//   dw[n, e]  = s * sum_j u[n, j] V[n, e*r + j]
//   dB_cat    = g^T (U_cat with the entries of rows outside b_grad_mask[:, e] set to 0)
// du, dw and the masked U_cat come out of one fused pass over the rows. Everything of the
// adapter runs in fp32 (fp64 for fp64 input) whatever the dtype of x and W0.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace alter_kernels {
namespace {

using at::Tensor;

constexpr int64_t kGatherMaxTokens = 8;  // mode 0: gather at or below this many tokens

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_inputs(const Tensor& x, const Tensor& weight, const Tensor& A, const Tensor& B, const Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && A.dim() == 2 && B.dim() == 3 && w.dim() == 2,
              "asym_lora: expected x [N, d_in], weight [d_out, d_in], A [r, d_in], B [E, d_out, r], "
              "expert_weights [N, E]");
  TORCH_CHECK(weight.size(1) == x.size(1) && A.size(1) == x.size(1), "asym_lora: d_in mismatch");
  TORCH_CHECK(B.size(1) == weight.size(0) && B.size(2) == A.size(0), "asym_lora: B must be [E, d_out, r]");
  TORCH_CHECK(w.size(0) == x.size(0) && w.size(1) == B.size(0), "asym_lora: expert_weights must be [N, E]");
}

// B [E, d_out, r] -> B_cat [d_out, E*r] (acc dtype, contiguous)
Tensor b_cat(const Tensor& B, at::ScalarType acc) {
  const int64_t E = B.size(0), d_out = B.size(1), r = B.size(2);
  return B.to(acc).permute({1, 0, 2}).reshape({d_out, E * r}).contiguous();
}

template <typename T>
void build_ucat(const T* u, const T* w, T* U, int64_t N, int64_t E, int64_t r, T s) {
  at::parallel_for(0, N, 256, [&](int64_t b, int64_t e_) {
    for (int64_t n = b; n < e_; ++n) {
      const T* un = u + n * r;
      T* Un = U + n * E * r;
      for (int64_t e = 0; e < E; ++e) {
        const T f = s * w[n * E + e];
        for (int64_t j = 0; j < r; ++j) Un[e * r + j] = f * un[j];
      }
    }
  });
}

template <typename T>
void gather_expand(const T* u, const T* w, const T* B, T* y, int64_t N, int64_t E, int64_t d_out, int64_t r, T s) {
  // y[n, o] += <Beff_n[o, :], u[n, :]> with Beff_n = sum_{e: w[n,e] != 0} s * w[n, e] * B_e, built per
  // block of rows of B by contiguous (vectorised) axpys over the experts the token uses.
  const int64_t grain = std::max<int64_t>(64, 4096 / std::max<int64_t>(r, 1));
  at::parallel_for(0, d_out, grain, [&](int64_t b, int64_t e_) {
    const int64_t len = (e_ - b) * r;
    std::vector<T> buf(static_cast<size_t>(len));
    T* __restrict__ be = buf.data();
    for (int64_t n = 0; n < N; ++n) {
      const T* __restrict__ un = u + n * r;
      const T* wn = w + n * E;
      T* __restrict__ yn = y + n * d_out;
      bool any = false;
      for (int64_t e = 0; e < E; ++e) {
        const T f = s * wn[e];
        if (f == T(0)) continue;
        const T* __restrict__ src = B + e * d_out * r + b * r;
        if (!any) {
          for (int64_t i = 0; i < len; ++i) be[i] = f * src[i];
          any = true;
        } else {
          for (int64_t i = 0; i < len; ++i) be[i] += f * src[i];
        }
      }
      if (!any) continue;
      for (int64_t o = 0; o < e_ - b; ++o) {
        const T* __restrict__ row = be + o * r;
        T acc = 0;
        for (int64_t j = 0; j < r; ++j) acc += row[j] * un[j];
        yn[b + o] += acc;
      }
    }
  });
}

std::tuple<Tensor, Tensor> asym_lora_fwd_cpu(const Tensor& x, const Tensor& weight, const Tensor& A, const Tensor& B,
                                             const Tensor& expert_weights, double scale,
                                             const std::optional<Tensor>& bias, int64_t mode) {
  check_inputs(x, weight, A, B, expert_weights);
  TORCH_CHECK(mode >= 0 && mode <= 2, "asym_lora_fwd: mode must be 0 (auto), 1 (cat GEMM) or 2 (gather)");
  const auto acc = acc_type(x.scalar_type());
  const bool same = x.scalar_type() == acc;
  const int64_t N = x.size(0), E = B.size(0), d_out = weight.size(0), r = A.size(0);
  const Tensor xa = same ? x : x.to(acc);
  const Tensor Aa = A.to(acc);
  Tensor u = at::mm(xa, Aa.t()).contiguous();  // [N, r], accumulation dtype
  Tensor y = (bias.has_value() && bias->defined()) ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  if (N == 0 || E == 0 || r == 0) return {y, u};
  Tensor ya = same ? y.contiguous() : y.to(acc).contiguous();
  const Tensor wa = expert_weights.to(acc).contiguous();
  const bool gather = mode == 2 || (mode == 0 && N <= kGatherMaxTokens);
  AT_DISPATCH_FLOATING_TYPES(acc, "asym_lora_fwd_cpu", [&] {
    const scalar_t s = static_cast<scalar_t>(scale);
    if (gather) {
      const Tensor Ba = B.to(acc).contiguous();
      gather_expand<scalar_t>(u.data_ptr<scalar_t>(), wa.data_ptr<scalar_t>(), Ba.data_ptr<scalar_t>(),
                              ya.data_ptr<scalar_t>(), N, E, d_out, r, s);
    } else {
      Tensor U = at::empty({N, E * r}, u.options());
      build_ucat<scalar_t>(u.data_ptr<scalar_t>(), wa.data_ptr<scalar_t>(), U.data_ptr<scalar_t>(), N, E, r, s);
      ya.addmm_(U, b_cat(B, acc).t());
    }
  });
  return {same ? ya : ya.to(x.scalar_type()), u};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> asym_lora_bwd_cpu(
    const Tensor& grad, const Tensor& x, const Tensor& weight, const Tensor& A, const Tensor& B,
    const Tensor& expert_weights, const Tensor& u, double scale, const std::optional<Tensor>& a_grad_mask,
    const std::optional<Tensor>& b_grad_mask, bool need_dx, bool need_dA, bool need_dB, bool need_dw) {
  check_inputs(x, weight, A, B, expert_weights);
  const auto acc = acc_type(x.scalar_type());
  const bool same = x.scalar_type() == acc;
  const int64_t N = x.size(0), E = B.size(0), d_out = weight.size(0), r = A.size(0), d_in = x.size(1);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == N && grad.size(1) == d_out, "asym_lora_bwd: grad must be [N, d_out]");
  TORCH_CHECK(u.dim() == 2 && u.size(0) == N && u.size(1) == r && u.scalar_type() == acc,
              "asym_lora_bwd: u must be [N, r] in the accumulation dtype");
  const bool has_am = a_grad_mask.has_value() && a_grad_mask->defined();
  const bool has_bm = b_grad_mask.has_value() && b_grad_mask->defined();
  if (has_am) TORCH_CHECK(a_grad_mask->scalar_type() == at::kBool && a_grad_mask->numel() == N, "a_grad_mask: [N] bool");
  if (has_bm) TORCH_CHECK(b_grad_mask->scalar_type() == at::kBool && b_grad_mask->numel() == N * E, "b_grad_mask: [N, E] bool");

  Tensor dx, dA, dB, dw;
  const Tensor Aa = A.to(acc);
  if (N == 0 || E == 0 || r == 0) {
    if (need_dx) dx = at::mm(grad, weight);
    if (need_dA) dA = at::zeros_like(A);
    if (need_dB) dB = at::zeros_like(B);
    if (need_dw) dw = at::zeros_like(expert_weights);
    return {dx, dA, dB, dw};
  }
  const Tensor gf = (same ? grad : grad.to(acc)).contiguous();
  const Tensor wa = expert_weights.to(acc).contiguous();
  const Tensor uc = u.contiguous();
  const bool need_du = need_dx || need_dA;
  const bool need_V = need_du || need_dw;
  Tensor V = need_V ? at::mm(gf, b_cat(B, acc)) : Tensor();  // [N, E*r]
  Tensor du = need_du ? at::empty({N, r}, u.options()) : Tensor();
  Tensor duA = (need_dA && has_am) ? at::empty({N, r}, u.options()) : du;
  Tensor dwa = need_dw ? at::empty({N, E}, u.options()) : Tensor();
  Tensor Um = need_dB ? at::empty({N, E * r}, u.options()) : Tensor();
  const Tensor am = has_am ? a_grad_mask->contiguous() : Tensor();
  const Tensor bm = has_bm ? b_grad_mask->contiguous() : Tensor();

  AT_DISPATCH_FLOATING_TYPES(acc, "asym_lora_bwd_cpu", [&] {
    const scalar_t s = static_cast<scalar_t>(scale);
    const scalar_t* pu = uc.data_ptr<scalar_t>();
    const scalar_t* pw = wa.data_ptr<scalar_t>();
    const scalar_t* pV = need_V ? V.data_ptr<scalar_t>() : nullptr;
    scalar_t* pdu = need_du ? du.data_ptr<scalar_t>() : nullptr;
    scalar_t* pduA = (need_dA && has_am) ? duA.data_ptr<scalar_t>() : nullptr;
    scalar_t* pdw = need_dw ? dwa.data_ptr<scalar_t>() : nullptr;
    scalar_t* pUm = need_dB ? Um.data_ptr<scalar_t>() : nullptr;
    const bool* pam = has_am ? am.data_ptr<bool>() : nullptr;
    const bool* pbm = has_bm ? bm.data_ptr<bool>() : nullptr;
    at::parallel_for(0, N, 128, [&](int64_t b, int64_t e_) {
      for (int64_t n = b; n < e_; ++n) {
        const scalar_t* un = pu + n * r;
        const scalar_t* wn = pw + n * E;
        if (pdu) {
          scalar_t* dun = pdu + n * r;
          const scalar_t* Vn = pV + n * E * r;
          for (int64_t j = 0; j < r; ++j) dun[j] = 0;
          for (int64_t e = 0; e < E; ++e) {
            const scalar_t f = s * wn[e];
            for (int64_t j = 0; j < r; ++j) dun[j] += f * Vn[e * r + j];
          }
          if (pduA) {
            const bool keep = pam[n];
            for (int64_t j = 0; j < r; ++j) pduA[n * r + j] = keep ? dun[j] : scalar_t(0);
          }
        }
        if (pdw) {
          const scalar_t* Vn = pV + n * E * r;
          for (int64_t e = 0; e < E; ++e) {
            scalar_t a = 0;
            for (int64_t j = 0; j < r; ++j) a += un[j] * Vn[e * r + j];
            pdw[n * E + e] = s * a;
          }
        }
        if (pUm) {
          scalar_t* Un = pUm + n * E * r;
          for (int64_t e = 0; e < E; ++e) {
            const bool keep = pbm ? pbm[n * E + e] : true;
            const scalar_t f = s * wn[e];
            for (int64_t j = 0; j < r; ++j) Un[e * r + j] = keep ? f * un[j] : scalar_t(0);
          }
        }
      }
    });
  });

  if (need_dx) {
    dx = at::mm(grad, weight);
    if (same) dx.addmm_(du, Aa);
    else dx = at::addmm(dx.to(acc), du, Aa).to(x.scalar_type());
  }
  if (need_dA) {
    const Tensor xa = same ? x : x.to(acc);
    dA = at::mm(duA.t(), xa).to(A.scalar_type());
  }
  if (need_dB) {
    dB = at::mm(gf.t(), Um).view({d_out, E, r}).permute({1, 0, 2}).to(B.scalar_type()).contiguous();
  }
  if (need_dw) dw = dwa.to(expert_weights.scalar_type());
  (void)d_in;
  return {dx, dA, dB, dw};
}

}  // namespace
}  // namespace alter_kernels

TORCH_LIBRARY_FRAGMENT(alter_kernels, m) {
  m.def("asym_lora_fwd(Tensor x, Tensor weight, Tensor A, Tensor B, Tensor expert_weights, float scale, "
        "Tensor? bias, int mode=0) -> (Tensor, Tensor)");
  m.def("asym_lora_bwd(Tensor grad, Tensor x, Tensor weight, Tensor A, Tensor B, Tensor expert_weights, Tensor u, "
        "float scale, Tensor? a_grad_mask, Tensor? b_grad_mask, bool need_dx, bool need_dA, bool need_dB, "
        "bool need_dw) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(alter_kernels, CPU, m) {
  m.impl("asym_lora_fwd", &alter_kernels::asym_lora_fwd_cpu);
  m.impl("asym_lora_bwd", &alter_kernels::asym_lora_bwd_cpu);
}
