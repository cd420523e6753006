#!/usr/bin/env python
"""One training step of a patched Llama (random init): ALTER vs PEFT LoRA, same targets and rank.

Step = forward + LM loss (+ the router loss for ALTER) + backward + AdamW step on the adapter
parameters. ALTER runs with mixed routing (about 40% high-entropy tokens, per-sample labels),
so the masked backward is exercised; also a bare (frozen, no adapter) forward + backward to x
is timed for reference. Round-robin timing: every iteration runs every variant once.

    python bench/train_step.py [--quick] [--out DIR] [--threads T] [--size tiny|medium]
    # the GPU target of issue 15 (scripts/gpu_check.sh): alter x_peft <= 1.2
    python bench/train_step.py --device cuda --dtype bf16 --size 1b8l --iters 5 --no-decode

Size 1b8l: 8 decoder layers of Llama-3.2-1B's shape (hidden 2048, intermediate 8192, 32 heads,
8 KV heads, vocab 128256; about 0.75 B parameters with the untied embeddings), batch 4 x 512.
--dtype bf16 casts the models (adapters stay in their default fp32 for both ALTER and PEFT);
on CUDA the models are initialised on the GPU and steps are timed with CUDA events.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import machine, md_table, peak_memory, timed_call, write_results  # noqa: E402

import alter_kernels as ak  # noqa: E402

SIZES = {
    # name: (hidden, layers, intermediate, heads, kv_heads, vocab, batch, seq)
    "tiny": (256, 2, 688, 4, 2, 1024, 4, 128),
    "medium": (1024, 4, 2816, 16, 4, 8192, 2, 512),
    "1b8l": (2048, 8, 8192, 32, 8, 128256, 4, 512),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build(size, seed=0, device="cpu", dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM
    h, L, inter, heads, kv, vocab, _, _ = SIZES[size]
    cfg = LlamaConfig(hidden_size=h, num_hidden_layers=L, intermediate_size=inter, num_attention_heads=heads,
                      num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=4096)
    torch.manual_seed(seed)
    with torch.device(device):                 # initialised where it runs (a 1B init on the CPU is slow)
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype)
    model.config.use_cache = False
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", default=None, choices=sorted(SIZES))
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--no-decode", action="store_true", help="skip the decoding tokens/s comparison")
    ap.add_argument("--forget-experts", type=int, default=4, help="N forget experts (E = N + 1)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="model dtype")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or ("tiny" if args.quick else "medium")
    iters = args.iters or (2 if args.quick else 5)
    _, _, _, _, _, vocab, batch, seq = SIZES[size]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    entropy = (torch.rand(batch, seq, generator=g) * 2.0).to(device)          # ~40% above theta = 1.2
    labels = torch.randint(0, args.forget_experts + 1, (batch,), generator=g).to(device)

    from peft import LoraConfig, get_peft_model
    peft_model = get_peft_model(build(size, 0, device, dtype), LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                                        target_modules=list(TARGETS), lora_dropout=0.0))
    alter_model = ak.patch(build(size, 0, device, dtype), ak.AlterConfig(rank=args.rank, alpha=2 * args.rank,
                                                      num_forget_experts=args.forget_experts,
                                                      target_modules=TARGETS))
    for m in alter_model.modules():            # non-zero B, as after some training
        if isinstance(m, ak.AlterLinear):
            torch.nn.init.normal_(m.lora_B, std=0.01)
    base_model = build(size, 0, device, dtype)
    for p in base_model.parameters():
        p.requires_grad_(False)

    opt_peft = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    opt_alter = torch.optim.AdamW([p for grp in ak.adapter_parameters(alter_model).values() for p in grp], lr=1e-4)

    def step_peft():
        out = peft_model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt_peft.step()
        opt_peft.zero_grad(set_to_none=True)
        return out.loss.detach()

    def step_alter():
        with ak.routing_inputs(alter_model, entropy=entropy, labels=labels):
            out = alter_model(input_ids=ids, labels=ids)
            loss = out.loss + 0.1 * ak.router_loss(alter_model)
        loss.backward()
        opt_alter.step()
        opt_alter.zero_grad(set_to_none=True)
        return loss.detach()

    emb = base_model.get_input_embeddings()

    def step_base():  # frozen model, gradient to the input embeddings only (the floor)
        x = emb(ids).detach().requires_grad_(True)
        out = base_model(inputs_embeds=x, labels=ids)
        out.loss.backward()
        return out.loss.detach()

    variants = {"base (frozen, dx only)": step_base, "peft_lora": step_peft, "alter": step_alter}
    times = {k: [] for k in variants}
    for it in range(1 + iters):
        for name, fn in variants.items():
            t = timed_call(fn, device)          # CUDA events on a GPU, perf_counter on the CPU
            if it:
                times[name].append(t)
    mem = {name: peak_memory(fn, device) for name, fn in variants.items()}
    high_share = ak.high_entropy_fraction(alter_model)      # of the training steps (before decoding)
    tp = statistics.median(times["peft_lora"])
    rows = [{"size": size, "dtype": args.dtype, "device": device.type, "variant": k, "step_s": statistics.median(v), "step_min_s": min(v),
             "x_peft": statistics.median(v) / tp, "peak_MiB": mem[k] / 2 ** 20} for k, v in times.items()]
    # decoding (no grad, KV cache, batch 1): tokens/s of the patched model vs the base model
    # (every token high-entropy: retain expert + top-k forget experts; the worst case for the adapter)
    dec_rows = []
    if not args.no_decode:
        alter_model.eval()
        base_model.eval()
        alter_model.config.use_cache = base_model.config.use_cache = True
        prompt = ids[:1, :16]
        new = 8 if args.quick else 32

        def gen(m):
            return m.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True,
                              pad_token_id=0)
        dec = {"base": [], "alter": []}
        for it in range(1 + (1 if args.quick else 3)):
            for name, m in (("base", base_model), ("alter", alter_model)):
                t = timed_call(lambda: gen(m), device)
                if it:
                    dec[name].append(t)
        tb_dec = statistics.median(dec["base"])
        for name, v in dec.items():
            dec_rows.append({"size": size, "model": name, "new_tokens": new, "tokens_per_s": new / statistics.median(v),
                             "x_base_tokens_per_s": tb_dec / statistics.median(v)})
    h, L, inter, *_ = SIZES[size]
    desc = (f"Llama {size}: hidden {h}, {L} layers, intermediate {inter}, vocab {vocab}, batch {batch} x seq {seq}; "
            f"rank {args.rank}, E = {args.forget_experts + 1}, targets {','.join(TARGETS)}; "
            f"ALTER high-entropy share in the training step {high_share:.2f}; {args.dtype} on {device}; "
            f"backend {ak.backends(device)}")
    table = md_table(rows, ["size", "dtype", "device", "variant", "step_s", "step_min_s", "x_peft", "peak_MiB"])
    print(desc)
    print(table)
    md = f"# training-step benchmark\n\nmachine: {machine()}\n\n{desc}\n\n{table}"
    if dec_rows:
        dtable = md_table(dec_rows, ["size", "model", "new_tokens", "tokens_per_s", "x_base_tokens_per_s"])
        print(dtable)
        md += "\n## greedy decoding, batch 1, KV cache (prompt 16 tokens)\n\n" + dtable
    stem = os.path.join(args.out, f"train_step_{size}" + ("_quick" if args.quick else "")
                        + (f"_{device.type}" if device.type != "cpu" else ""))
    print("wrote", *write_results(stem, {"machine": machine(), "args": vars(args), "config": desc, "rows": rows,
                                         "decode": dec_rows}, md))


if __name__ == "__main__":
    main()
