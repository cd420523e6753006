#!/usr/bin/env python
"""One unlearning step (forward + the method's loss + backward), fused vs materialised logits.

Issue 16: the engine's losses straight from the hidden states (``fused_loss="auto"``: the
backbone's output through ``ops.lm_head_token_losses``) against the materialised path
(``fused_loss="off"``: logits [N, V], then the reference losses), for ALTER (patched model,
adapter gradients) and NPO (full parameters, the head included). Measured side by side in one
process: step time (median) and peak extra memory of the step; "backbone" is the floor (the same
forward and backward with a loss on the final hidden states that needs no head), so
loss-part memory = peak(variant) - peak(backbone) - the head's gradient when the head trains
(NPO trains every weight: its [V, d] gradient exists whatever the loss path).

    python bench/loss_step.py [--vocab 32000 128256] [--hidden 1024] [--batch 4] [--seq 256]
    # the GPU target of issue 16 (scripts/gpu_check.sh, step "losses"):
    python bench/loss_step.py --device cuda --dtype bf16 --vocab 128256 --hidden 4096 --seq 2048
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
from alter_kernels.unlearn import heads  # noqa: E402
from alter_kernels.unlearn import methods as M  # noqa: E402
from alter_kernels.unlearn.options import UnlearnOptions  # noqa: E402


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build(vocab, hidden, layers, seed=0, device="cpu", dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=2 * hidden,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 256),
                      vocab_size=vocab, max_position_embeddings=4096)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype)
    model.config.use_cache = False
    return model


def make_batch(vocab, batch, seq, g, device="cpu"):
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 4] = -100                     # the prompt carries no labels
    is_f = torch.arange(batch) < batch // 2
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "is_forget": is_f,
            "domain": torch.where(is_f, 1, 0), "entropy": torch.rand(batch, seq, generator=g) * 3,
            "base_sq": torch.rand(batch, seq, generator=g), "ref_logp": -torch.rand(batch, generator=g) * 50}
    return {k: v.to(device) for k, v in out.items()}


def steps(method, model, batch):
    """(name -> step function) for the three variants of one method."""
    def loss_step(fused):
        opts = UnlearnOptions(fused_loss="auto" if fused else "off")

        def run():
            loss, _ = M.METHODS[method].loss(model, batch, opts, ref_model=None, forward=None, reduce=None)
            loss.backward()
            model.zero_grad(set_to_none=True)
            return None
        return run

    def backbone():
        h = heads.final_hidden(model, model, batch["input_ids"], batch["attention_mask"])
        h.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    if method == "alter":                             # routing inputs, as alter_loss sets them
        def backbone_routed():
            with ak.routing_inputs(model, entropy=batch["entropy"], labels=batch["domain"]):
                backbone()
        return {"backbone": backbone_routed, "materialised": loss_step(False), "fused": loss_step(True)}
    return {"backbone": backbone, "materialised": loss_step(False), "fused": loss_step(True)}


def measure(method, vocab, args, g):
    device = torch.device(args.device)
    model = build(vocab, args.hidden, args.layers, device=device, dtype=DTYPES[args.dtype])
    if method == "alter":
        ak.patch(model, ak.AlterConfig(rank=8, alpha=16, num_forget_experts=1, threshold=1.2,
                                       inference_entropy="none"))
    batch = make_batch(vocab, args.batch, args.seq, g, device)
    fns = steps(method, model, batch)
    out = []
    mem = {k: peak_memory(fn, device) for k, fn in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(args.iters):                       # round robin: every variant once per iteration
        for k, fn in fns.items():
            times[k].append(timed_call(fn, device))
    # a method that trains the head (NPO: full parameters) needs its gradient [V, d] whatever the
    # loss path: it counts in the floor, not in the loss part
    head = model.get_output_embeddings().weight
    head_grad = head.numel() * head.element_size() if head.requires_grad else 0
    for k in fns:
        floor = mem["backbone"] + (head_grad if k != "backbone" else 0)
        out.append({"method": method, "V": vocab, "d": args.hidden, "N": args.batch * args.seq, "variant": k,
                    "step_s": statistics.median(times[k]), "peak_MiB": mem[k] / 2 ** 20,
                    "loss_part_MiB": (mem[k] - floor) / 2 ** 20 if k != "backbone" else 0.0,
                    "head_grad_MiB": head_grad / 2 ** 20})
    mat, fus = out[1], out[2]
    out.append({"method": method, "V": vocab, "d": args.hidden, "N": args.batch * args.seq,
                "variant": "fused / materialised", "step_s": fus["step_s"] / mat["step_s"],
                "peak_MiB": fus["peak_MiB"] / mat["peak_MiB"],
                "loss_part_MiB": fus["loss_part_MiB"] / mat["loss_part_MiB"] if mat["loss_part_MiB"] > 0 else
                float("nan")})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=["alter", "npo"], choices=sorted(M.METHODS))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = [r for v in args.vocab for m in args.methods for r in measure(m, v, args, g)]
    table = md_table(rows, ["method", "V", "d", "N", "variant", "step_s", "peak_MiB", "loss_part_MiB", "head_grad_MiB"])
    desc = (f"Llama, {args.layers} decoder layer(s), hidden {args.hidden}, {args.dtype} on {args.device}, batch {args.batch} x {args.seq}; "
            f"{torch.get_num_threads()} thread(s); ratio rows: fused / materialised (targets: loss-part memory "
            f"<= 1/16 at V = 128256, step time <= 1.1x)")
    print(desc)
    print(table)
    stem = os.path.join(args.out, "loss_step" + ("" if args.device == "cpu" else f"_{args.device}"))
    print("wrote", *write_results(stem, {"machine": machine(), "args": vars(args), "config": desc, "rows": rows},
                                  desc + "\n\n" + table))


if __name__ == "__main__":
    main()
