"""Gated decoding from an ALTER model: ak.generate and Hugging Face generate.

    python python/generate_example.py                                   # tiny random demo model
    python python/generate_example.py --model smollm2-135m-instruct --adapter ADAPTER_DIR --prompt "Who wrote ..."

With --model/--adapter, the model (a folder, hub name, .gguf file or alias; ak.load_pretrained)
and its tokenizer are loaded, the questions go through its chat template when it has one, and
it is patched with the adapter's config and the saved ALTER adapter (ak.save_adapter): the
output is then what the unlearned model generates, next to the base model's answer. Without them a tiny
random Llama with a random adapter shows the API (its tokens are meaningless).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import alter_kernels as ak  # noqa: E402


def demo_model():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8)            # peakier distributions: entropies on both sides of theta
    ak.patch(model, ak.AlterConfig(num_forget_experts=2, init_seed=0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ak.adapter_state_dict(model).items():
            if name.endswith("lora_B") or name.endswith("alter_router.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name.endswith("lora_B") else 1.0))
    ak.get_state(model).config.threshold = 1.77     # about the median entropy of this random model
    prompts = [[5, 17, 33, 9, 41, 60], [8, 70, 12]]
    t = max(map(len, prompts))
    ids = torch.tensor([[0] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    return model, None, ids, mask


def real_model(path, adapter, prompts, chat_template="auto"):
    from alter_kernels.eval import QAFormat, pad_batch
    model, tok = ak.load_pretrained(path)                   # folder, hub name, .gguf file or alias
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg, _ = ak.read_adapter_config(adapter)
    ak.patch(model, cfg)
    ak.load_adapter(model, adapter)
    fmt = QAFormat(chat=chat_template)                      # the chat template when the tokenizer has one
    ids, mask = pad_batch([fmt.prompt_ids(tok, p) for p in prompts], tok.pad_token_id, side="left")
    return model, tok, ids, mask


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--adapter")
    ap.add_argument("--prompt", action="append")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--chat-template", default="auto", choices=["auto", "on", "off"],
                    help="prompt through the tokenizer's chat template (auto: when it has one)")
    args = ap.parse_args()
    if args.model and args.adapter:
        model, tok, ids, mask = real_model(args.model, args.adapter, args.prompt or ["What is the capital of France?"],
                                           args.chat_template)
    else:
        model, tok, ids, mask = demo_model()
    show = (lambda t: tok.decode(t, skip_special_tokens=True)) if tok is not None else (lambda t: t.tolist())
    eos = tok.eos_token_id if tok is not None else None
    t_prompt = ids.shape[1]

    # 1. the fast loop, greedy, base-model prefill entropies (default)
    out = ak.generate(model, ids, args.max_new_tokens, attention_mask=mask, eos_token_id=eos, return_dict=True)
    print(f"ak.generate (greedy): high-entropy share of decode steps {out.high_fraction:.2f}, "
          f"prefill {out.prefill_s * 1e3:.1f} ms, decode {out.decode_s * 1e3:.1f} ms")
    for row, ent in zip(out.sequences, out.entropy):
        print("  ", show(row[t_prompt:]), "| routing entropies", [round(float(e), 2) for e in ent[:6]], "...")

    # 2. sampling, cheap prefill (every prompt token high entropy)
    g = torch.Generator().manual_seed(0)
    sampled = ak.generate(model, ids, args.max_new_tokens, attention_mask=mask, do_sample=True, temperature=0.8,
                          top_p=0.9, generator=g, eos_token_id=eos, prefill="high")
    print("ak.generate (sampled, prefill='high'):")
    for row in sampled:
        print("  ", show(row[t_prompt:]))

    # 3. plain Hugging Face generate: the patched model routes by its inference rule by itself,
    #    so greedy decoding gives the same tokens as 1
    with torch.no_grad():
        hf = model.generate(ids, attention_mask=mask, max_new_tokens=args.max_new_tokens, do_sample=False,
                            pad_token_id=tok.pad_token_id if tok is not None else 0, eos_token_id=eos)
    print("plain HF generate equals ak.generate:", bool(torch.equal(hf[:, :out.sequences.shape[1]], out.sequences)))

    # 4. the base model (adapters off) for comparison
    with ak.disable_adapters(model):
        base = ak.generate(model, ids, args.max_new_tokens, attention_mask=mask, eos_token_id=eos)
    print("base model (adapters off):")
    for row in base:
        print("  ", show(row[t_prompt:]))


if __name__ == "__main__":
    main()
