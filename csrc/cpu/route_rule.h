// The routing rule of one token (ALTER_SPEC section 3), shared by route_plan (route.cpp) and
// decode_route (asym_lora_decode.cpp); the Python reference is kernels/reference/routing.py.
//
// logits [E] un-tempered router logits; high = !(entropy <= threshold) (NaN counts as high);
// g = softmax(logits / tau), tau = tau_high or tau_low. High rows: w_0 = 1 and the top-k forget
// experts (1..E-1) get g. Low rows: one-hot of the label when label >= 0, else of argmax g (first
// maximum, NaN as the largest, as torch.argmax). w [E] must be zero on entry; g and taken are
// scratch of E entries.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace alter_kernels {

// e > threshold in fp32, as torch compares an fp32 tensor with a Python float (NaN: high).
inline bool is_high(float entropy, double threshold) { return !(entropy <= static_cast<float>(threshold)); }

inline bool nan_greater(float a, float b) { return a > b || (std::isnan(a) && !std::isnan(b)); }

inline void route_token(const float* logits, int64_t E, bool high, float tau_high, float tau_low, int64_t k,
                        int64_t label, float* g, char* taken, float* w) {
  const float inv_tau = 1.0f / (high ? tau_high : tau_low);
  float m = -std::numeric_limits<float>::infinity();
  bool nan = false;
  for (int64_t e = 0; e < E; ++e) {
    const float z = logits[e] * inv_tau;
    g[e] = z;
    if (std::isnan(z)) nan = true;
    else if (z > m) m = z;
  }
  float sum = 0.f;
  for (int64_t e = 0; e < E; ++e) {
    g[e] = std::exp(g[e] - m);
    sum += g[e];
  }
  for (int64_t e = 0; e < E; ++e) g[e] = nan ? std::numeric_limits<float>::quiet_NaN() : g[e] / sum;
  if (high) {
    w[0] = 1.f;
    for (int64_t e = 0; e < E; ++e) taken[e] = 0;
    for (int64_t t = 0; t < k; ++t) {  // k <= 8: selection by repeated maximum is cheapest
      int64_t best = -1;
      for (int64_t e = 1; e < E; ++e)
        if (!taken[e] && (best < 0 || nan_greater(g[e], g[best]))) best = e;
      taken[best] = 1;
      w[best] = g[best];
    }
  } else {
    int64_t choice = label;
    if (choice < 0) {
      choice = 0;
      for (int64_t e = 1; e < E; ++e)
        if (nan_greater(g[e], g[choice])) choice = e;
    }
    w[choice] = 1.f;
  }
}

}  // namespace alter_kernels
