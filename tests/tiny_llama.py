"""The tiny random Llama (and its ALTER-patched twin) that the model, inference and generation
tests share; tests/ is on sys.path (tests/conftest.py lives there)."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import alter_kernels as ak

VOCAB = 97


def tiny_llama(seed=0, layers=2, tied=False, dtype=torch.float32):
    """``tied``: the LM head shares the input embedding (as SmolLM2, Llama-3.2-1B, Qwen2-0.5B)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=tied)
    m = LlamaForCausalLM(cfg).to(dtype).eval()
    assert (m.lm_head.weight is m.model.embed_tokens.weight) == tied
    with torch.no_grad():   # peakier next-token distributions: entropies on both sides of theta
        m.lm_head.weight.mul_(8.0)
    return m


def patched_model(seed=0, zero_b=False, num_forget=2, top_k=3, threshold=None, layers=2):
    """A tiny random Llama with a random ALTER adapter; theta at the median prompt entropy."""
    m = tiny_llama(seed, layers)
    cfg = ak.AlterConfig(rank=4, alpha=8, num_forget_experts=num_forget, top_k=top_k, init_seed=seed)
    ak.patch(m, cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ak.adapter_state_dict(m).items():
            if name.endswith("lora_B") and not zero_b:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if name.endswith("alter_router.weight"):
                p.copy_(torch.randn(p.shape, generator=g))
    if threshold is None:
        ids = torch.randint(3, VOCAB, (4, 16), generator=g)
        e = ak.token_entropy(m, ids)[:, 1:]
        threshold = float(e.median())
    ak.get_state(m).config.threshold = threshold
    return m


def tiny_keyed_model(seed, keys, experts, random_b=True, router_input="prefix_match", beta=10.0):
    """A tiny Llama with a random adapter and a keyed router: key token keys[i] points to forget
    expert experts[i] (W_g ``beta`` there, bias beta / 2 at expert 0). prefix_match / key_tokens
    keep the keys' unit embeddings, answer_keys the token ids themselves."""
    m = tiny_llama(seed)
    cfg = ak.AlterConfig(rank=4, alpha=8, num_forget_experts=2, init_seed=seed, router_keys=len(keys),
                         router_input=router_input)
    ak.patch(m, cfg)
    emb = m.get_input_embeddings().weight.detach()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ak.adapter_state_dict(m).items():
            if name.endswith("lora_B") and random_b:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            if name.endswith("alter_router.keys"):
                if router_input == "answer_keys":
                    p.copy_(torch.tensor(keys, dtype=p.dtype))
                else:
                    v = emb[list(keys)]
                    p.copy_(v / v.norm(dim=1, keepdim=True))
            if name.endswith("alter_router.weight"):
                p.zero_()
                for i, e in enumerate(experts):
                    p[i, e] = beta
                p[-1, 0] = beta / 2
    return m


def prompts(batch=3, length=7, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def left_pad(rows, pad=0):
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r):] = torch.tensor(r)
        mask[i, t - len(r):] = 1
    return ids, mask


def argmax_routes(m, ids, mask=None):
    """{layer: expert chosen per token [B, T]} of one forward with every token low entropy (argmax routing)."""
    with ak.routing_inputs(m, entropy=torch.zeros(ids.shape)):
        m(input_ids=ids, attention_mask=mask, use_cache=False)
    return {k: p.router_logits.argmax(-1).view(ids.shape) for k, p in ak.last_plans(m).items()}
