"""Quickstart: patch a (tiny, random-init) Llama with ALTER, train a few steps, save, reload, unpatch.

    python python/quickstart.py

Everything runs on the CPU in seconds; swap the LlamaConfig for `from_pretrained(...)` to use a
real model.
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

    model = ak.patch(model, ak.AlterConfig(rank=8, alpha=16, num_forget_experts=2))
    print("backends:", ak.backends())
    same = torch.allclose(model(ids).logits, base_logits, atol=1e-5)
    print(f"fresh patch computes the base model: {same}")

    # routing entropies from the base model (adapters off), then a few training steps with
    # sample labels: row 0 and 1 retain (expert 0), row 2 forget domain 1, row 3 forget domain 2
    entropy = ak.token_entropy(model, ids)
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
            print(f"step {step}: loss {loss.item():.4f}  high-entropy share {ak.high_entropy_fraction(model):.2f}")

    with tempfile.TemporaryDirectory() as d:
        ak.save_adapter(model, d)
        with ak.routing_inputs(model, entropy=entropy):
            want = model(ids).logits
        ak.unpatch(model)
        print("unpatched == base:", torch.equal(model(ids).logits, base_logits))
        ak.patch(model, ak.AlterConfig(rank=8, alpha=16, num_forget_experts=2))
        ak.load_adapter(model, d)
        with ak.routing_inputs(model, entropy=entropy):
            print("reloaded adapter reproduces the logits:", torch.equal(model(ids).logits, want))


if __name__ == "__main__":
    main()
