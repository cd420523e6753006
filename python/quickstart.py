"""Quickstart: patch a (tiny, random-init) Llama with ALTER, train a few steps, save, reload, unpatch.

    python python/quickstart.py

A CPU is enough. Measured on the shared 2-core machine while it was busy (load average above
10): 44-54 s wall-clock for about 5.5 s of CPU time, of which importing torch, transformers and
alter_kernels alone took 32 s wall-clock (4.5 s CPU). Swap the LlamaConfig for `from_pretrained(...)` to use a real model.

The threshold theta only means something with its q (docs/entropy.md): a random model's
next-token distributions are near uniform, so its Tsallis entropies (q 1.5, 128 tokens) sit near
the maximum 1.82, above the default theta 1.2, and every token would take the high-entropy path.
The example sets theta to the median of the base model's entropies instead: about half the
tokens take each path, and the script checks that at every step.
"""
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import alter_kernels as ak


def main():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg)
    ids = torch.randint(0, 128, (4, 16))
    base_logits = model(ids).logits.detach()

    # routing entropies from the base model (spec 2: the entropy of the distribution that predicted
    # each token; +inf at the first position), and theta at their median, for this q
    q = ak.AlterConfig().q_route
    entropy = ak.token_entropy(model, ids, q=q)
    theta = float(entropy[torch.isfinite(entropy)].median())
    acfg = ak.AlterConfig(rank=8, alpha=16, num_forget_experts=2, q_route=q, threshold=theta)
    print(f"theta {theta:.4f}: the median base-model entropy (q {q}; default theta {ak.AlterConfig().threshold})")

    model = ak.patch(model, acfg)
    print("backends:", ak.backends())
    same = torch.allclose(model(ids).logits, base_logits, atol=1e-5)
    print(f"fresh patch computes the base model: {same}")

    # a few training steps with sample labels: row 0 and 1 retain (expert 0), row 2 forget domain 1,
    # row 3 forget domain 2
    assert torch.equal(ak.token_entropy(model, ids), entropy)   # adapters off: the same base entropies
    labels = torch.tensor([0, 0, 1, 2])
    groups = ak.adapter_parameters(model)
    opt = torch.optim.AdamW([{"params": groups["A"], "lr": 1e-3}, {"params": groups["B"], "lr": 1e-2},
                             {"params": groups["router"], "lr": 1e-2}])
    with ak.routing_inputs(model, entropy=entropy, labels=labels):
        for step in range(5):
            out = model(ids, labels=ids)
            loss = out.loss + 0.1 * ak.router_loss(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            share = ak.high_entropy_fraction(model)
            print(f"step {step}: loss {loss.item():.4f}  high-entropy share {share:.2f}")
            assert 0.0 < share < 1.0, "theta does not suit q: every token on one side"

    with tempfile.TemporaryDirectory() as d:
        ak.save_adapter(model, d)
        with ak.routing_inputs(model, entropy=entropy):
            want = model(ids).logits
        ak.unpatch(model)
        print("unpatched == base:", torch.equal(model(ids).logits, base_logits))
        ak.patch(model, acfg)
        ak.load_adapter(model, d)
        with ak.routing_inputs(model, entropy=entropy):
            print("reloaded adapter reproduces the logits:", torch.equal(model(ids).logits, want))


if __name__ == "__main__":
    main()
