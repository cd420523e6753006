"""Data-parallel ALTER unlearning with ``ak.unlearn`` under torchrun (DDP or FSDP2).

Every process runs this same script; ``ak.unlearn`` reads RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT (set by torchrun and by accelerate launch), initialises the process
group (nccl on GPUs, gloo on CPU), gives each rank its shard of every batch and normalises the
loss so that the adapter equals the one a single process trains on the whole batch. Only rank 0
writes the output directory.

Offline demo on this CPU (a tiny random Llama and invented TOFU rows written to --out/data):

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 python/distributed_unlearn.py \
        --distributed ddp --out runs/dist_ddp
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 python/distributed_unlearn.py \
        --distributed fsdp2 --out runs/dist_fsdp2
    python python/distributed_unlearn.py --distributed none --out runs/dist_single   # the reference

A real model on 8 GPUs of one node (each process takes cuda:LOCAL_RANK):

    torchrun --standalone --nproc_per_node=8 python/distributed_unlearn.py \
        --model meta-llama/Llama-3.1-8B-Instruct --forget forget.json --retain retain.json \
        --distributed fsdp2 --dtype bfloat16 --out runs/alter_8b
    accelerate launch --num_processes 8 python/distributed_unlearn.py --model ... (same flags)

``--batch-size`` is the GLOBAL number of forget rows per step (plus as many retain rows); the
result does not depend on the number of processes.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

import alter_kernels as ak
from alter_kernels.unlearn.distributed import launcher_device


def toy_setup(out: str):
    """Write a tiny random Llama, its tokenizer and forget / retain rows under out/data (rank 0)."""
    from alter_kernels.unlearn.toy import toy_model, toy_rows, toy_tokenizer
    d = os.path.join(out, "data")
    forget, retain = toy_rows(5, seed=1), toy_rows(6, seed=2, offset=6)
    if int(os.environ.get("RANK", "0")) == 0 and not os.path.isfile(os.path.join(d, "retain.json")):
        os.makedirs(d, exist_ok=True)
        tok = toy_tokenizer(forget + retain)
        model = toy_model(len(tok))
        model.save_pretrained(os.path.join(d, "model"))
        tok.save_pretrained(os.path.join(d, "model"))
        with open(os.path.join(d, "forget.json"), "w") as f:
            json.dump(forget, f)
        with open(os.path.join(d, "retain.json.tmp"), "w") as f:
            json.dump(retain, f)
        os.replace(os.path.join(d, "retain.json.tmp"), os.path.join(d, "retain.json"))   # written last: "ready"
    else:
        import time
        while not os.path.isfile(os.path.join(d, "retain.json")):
            time.sleep(0.2)
    return os.path.join(d, "model"), os.path.join(d, "forget.json"), os.path.join(d, "retain.json")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="HF model name or directory (default: a tiny offline toy)")
    p.add_argument("--forget", default=None, help="forget rows (TOFU JSON / JSONL)")
    p.add_argument("--retain", default=None, help="retain rows")
    p.add_argument("--out", required=True, help="output directory (rank 0 writes adapter/, metrics.json, ...)")
    p.add_argument("--distributed", default="auto", choices=["auto", "none", "ddp", "fsdp2"],
                   help="auto: DDP when launched with WORLD_SIZE > 1")
    p.add_argument("--method", default="alter")
    p.add_argument("--max-steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2, help="global forget rows per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr-A", dest="lr_A", type=float, default=1e-5)
    p.add_argument("--lr-B", dest="lr_B", type=float, default=1e-3)
    p.add_argument("--lr-router", type=float, default=1e-3)
    p.add_argument("--threshold-quantile", type=float, default=0.5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args(argv)

    model_path, forget, retain = args.model, args.forget, args.retain
    if model_path is None:
        model_path, forget, retain = toy_setup(args.out)
    model, tok = ak.load_pretrained(model_path, dtype=getattr(torch, args.dtype))     # folder, hub name, .gguf, alias
    res = ak.unlearn(model, forget, retain, method=args.method, tokenizer=tok, max_steps=args.max_steps,
                     batch_size=args.batch_size, seed=args.seed, device=launcher_device(),
                     distributed=args.distributed, out_dir=args.out, progress=False,
                     lr_A=args.lr_A, lr_B=args.lr_B, lr_router=args.lr_router,
                     threshold_quantile=args.threshold_quantile if args.method == "alter" else None)
    summary = {"world_size": dist.get_world_size() if dist.is_initialized() else 1, "steps": res.steps,
               "losses": [h["loss"] for h in res.history], "adapter": res.adapter_dir,
               "high_entropy_share": res.high_entropy_share}
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(json.dumps(summary))
    if dist.is_initialized():
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
