// A C++ program that uses the alter_kernels ops through libtorch's dispatcher, with no Python:
// it calls alter_kernels::tsallis_entropy_fwd on random logits and checks the entropies against
// the textbook formula computed with plain libtorch ops in float64.
//
//   cmake -S . -B build-cmake -DALTER_BUILD_EXAMPLES=ON -DCMAKE_PREFIX_PATH=...
//   cmake --build build-cmake && ./build-cmake/alter_embed_check
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <cstdio>
#include <tuple>

int main() {
  using Fwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, double);
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("alter_kernels::tsallis_entropy_fwd", "")
                .typed<Fwd>();
  torch::manual_seed(0);
  int failures = 0;
  for (double q : {0.5, 1.0, 1.5, 2.0}) {
    auto logits = torch::randn({5, 1003}) * 3;
    auto out = op.call(logits, q);
    auto ent = std::get<0>(out).to(torch::kDouble);
    auto p = torch::softmax(logits.to(torch::kDouble), -1);
    auto want = q == 1.0 ? -(p * p.log()).sum(-1) : (1 - p.pow(q).sum(-1)) / (q - 1);
    double err = (ent - want).abs().max().item<double>();
    bool ok = err < 1e-5 && ent.sizes() == want.sizes();
    std::printf("tsallis_entropy_fwd q=%.1f  max|err|=%.3g  %s\n", q, err, ok ? "ok" : "FAILED");
    failures += ok ? 0 : 1;
  }
  return failures == 0 ? 0 : 1;
}
