"""``alter-unlearn``: run ALTER (or a baseline) on a causal LM from the command line.

    alter-unlearn --model PATH_OR_HF_NAME --forget forget.json --retain retain.json \
                  --method alter --out runs/alter

Writes to --out: ``adapter/`` (adapter methods, via save_adapter) or ``model/`` (full-parameter
baselines, via save_pretrained), ``metrics.json`` (one entry per epoch), ``history.json`` (one
entry per step), ``checkpoint.pt`` (periodic, atomic; --resume continues from it) and
``run.json`` (the options). Exit codes: 0 done, 1 bad input, 2 diverged (non-finite loss).

Data parallel: launch the same command with ``torchrun --nproc_per_node=N -m alter_kernels.cli ...``
(or ``accelerate launch``); ``--distributed auto`` (default) uses DDP when WORLD_SIZE > 1,
``--distributed fsdp2`` shards the model with FSDP2. Each process takes cuda:LOCAL_RANK (or the
CPU, gloo); only rank 0 writes --out and prints the summary. docs/scaling.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

METHOD_HELP = None


def unescape_newlines(text: str) -> str:
    """A prompt format typed in a shell: the two characters backslash-n become a newline (as the
    default is shown in --help)."""
    return text.replace("\\n", "\n")


def build_parser() -> argparse.ArgumentParser:
    from .unlearn.methods import DESCRIPTIONS
    methods = "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items())
    p = argparse.ArgumentParser(
        prog="alter-unlearn",
        description="Unlearn a forget set from a causal LM with ALTER (entropy-routed asymmetric LoRA) or a "
                    "baseline, keeping a retain set. Data: TOFU-format JSON array / JSON lines (question, "
                    "answer; optional domain), plain-text .txt (passages separated by blank lines), or "
                    "hf:NAME[:CONFIG][@SPLIT] (needs the optional `datasets` package).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--model", required=True, help="local directory or Hugging Face name of a causal LM (from_pretrained)")
    g.add_argument("--tokenizer", default=None, help="tokenizer directory or name (default: the --model one)")
    g.add_argument("--forget", required=True, help="forget set: .json / .jsonl / .txt file or hf:NAME[:CONFIG][@SPLIT]")
    g.add_argument("--retain", default=None, help="retain set (same formats); required except for ga and npo")
    g.add_argument("--method", default="alter", choices=["alter", "asymlora", "lora", "ga", "graddiff", "kl", "npo",
                                                          "npo_retain"], help=f"method. {methods}")
    g.add_argument("--out", required=True, help="output directory (adapter/ or model/, metrics, checkpoints)")
    g.add_argument("--epochs", type=int, default=3, help="passes over the forget set")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=4, help="forget rows per step (plus as many retain rows)")
    g.add_argument("--seed", type=int, default=0, help="seed of A's init, k-means and the data order")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu; "
                                                   "under torchrun cuda:LOCAL_RANK)")
    g.add_argument("--distributed", default="auto", choices=["auto", "none", "ddp", "fsdp2"],
                   help="data parallel when launched by torchrun / accelerate launch: auto = DDP if WORLD_SIZE > 1, "
                        "ddp, fsdp2 (fully_shard), none (each process runs alone)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the base model weights (adapters stay in --adapter-dtype)")
    g.add_argument("--checkpoint-every", type=int, default=0, help="write a checkpoint every N steps (0: only at the end)")
    g.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt (same data and options)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    g.add_argument("--trust-remote-code", action="store_true", help="pass trust_remote_code=True to from_pretrained")

    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=1e-5, help="learning rate of the full-parameter baselines")
    g.add_argument("--lr-A", dest="lr_A", type=float, default=1e-5, help="learning rate of the shared A (ALTER, AsymLoRA)")
    g.add_argument("--lr-B", dest="lr_B", type=float, default=1e-3, help="learning rate of the B experts (and of plain LoRA)")
    g.add_argument("--lr-router", type=float, default=1e-3, help="learning rate of the routers W_g")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm (0: off)")
    g.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps")

    g = p.add_argument_group("loss")
    g.add_argument("--beta", type=float, default=1.0, help="weight of the forget term (IHL / ascent / NPO)")
    g.add_argument("--gamma", type=float, default=1.0, help="weight of the retain term (NLL / KL)")
    g.add_argument("--lam", type=float, default=0.01, help="weight of R_struct (ALTER)")
    g.add_argument("--rho", type=float, default=1.0, help="weight of the router cross-entropy (ALTER, AsymLoRA)")
    g.add_argument("--npo-beta", type=float, default=0.1, help="NPO beta")
    g.add_argument("--struct-mode", default="drift", choices=["drift", "grad_norm"],
                   help="R_struct form: drift of S_q(adapted) from S_q(base) on high-entropy tokens, or the paper's "
                        "||grad_A S_q||^2 (double backward, runs on the reference backend)")
    g.add_argument("--struct-q", type=float, default=0.5, help="Tsallis q of R_struct")

    g = p.add_argument_group("adapter (ALTER, AsymLoRA, LoRA)")
    g.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    g.add_argument("--alpha", type=float, default=16, help="LoRA alpha (scale alpha / r)")
    g.add_argument("--num-forget-experts", default=None,
                   help="forget experts N: an int, or 'auto' (k-means + silhouette); default: one per 'domain' "
                        "label in the data, else 2")
    g.add_argument("--kmeans-max-k", type=int, default=8, help="largest N tried by --num-forget-experts auto")
    g.add_argument("--no-router-init", action="store_true", help="do not start the router at the centroids")
    g.add_argument("--q-route", type=float, default=1.5, help="Tsallis q of the routing entropy")
    g.add_argument("--threshold", type=float, default=1.2, help="entropy threshold theta (high: e > theta)")
    g.add_argument("--threshold-quantile", type=float, default=None,
                   help="ALTER: set theta to this quantile (0..1) of the base model's answer-token entropies "
                        "instead of --threshold (0.5: half the answer tokens high); stored in the adapter config")
    g.add_argument("--top-k", type=int, default=3, help="forget experts mixed into high-entropy tokens")
    g.add_argument("--tau-high", type=float, default=0.8, help="router temperature of high-entropy tokens")
    g.add_argument("--tau-low", type=float, default=0.01, help="router temperature of low-entropy tokens")
    g.add_argument("--target-modules", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                   help="comma-separated names of the linears to adapt")
    g.add_argument("--adapter-dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                   help="dtype of A, B and the routers")
    g.add_argument("--adapter", default=None,
                   help="continue unlearning: load this adapter directory first (written by an earlier run)")
    g.add_argument("--add-experts", type=int, default=0,
                   help="with --adapter: add N new forget experts and train only them (earlier experts stay fixed)")

    g = p.add_argument_group("data")
    g.add_argument("--max-length", type=int, default=512, help="truncate rows (and split passages) to this many tokens")
    g.add_argument("--chat-template", action="store_true", help="wrap questions with the tokenizer's chat template")
    g.add_argument("--prompt-format", default="Question: {question}\nAnswer:", type=unescape_newlines,
                   help="prompt of a question without --chat-template ({question} is replaced; a typed \\n "
                        "is a newline) (default: %(default)r)")
    g.add_argument("--eval-max-examples", type=int, default=256,
                   help="rows of each set scored (answer NLL) at the end of every epoch")
    g.add_argument("--no-eval", action="store_true", help="skip the per-epoch NLL evaluation")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    import alter_kernels as ak
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from .unlearn.data import DataError
    from .unlearn.trainer import UnlearnDivergedError, UnlearnError

    from .unlearn.distributed import launcher_device, resolve_mode
    import torch.distributed as dist
    device = args.device or str(launcher_device())
    try:
        mode = resolve_mode(args.distributed)
    except ValueError as exc:
        print(f"alter-unlearn: {exc}", file=sys.stderr)
        return 1
    main_rank = mode is None or int(os.environ.get("RANK", "0")) == 0
    os.makedirs(args.out, exist_ok=True)
    nfe = args.num_forget_experts
    if nfe is not None and nfe != "auto":
        try:
            nfe = int(nfe)
        except ValueError:
            print(f"alter-unlearn: --num-forget-experts must be an int or 'auto', got {nfe!r}", file=sys.stderr)
            return 1
    try:
        tok = AutoTokenizer.from_pretrained(args.tokenizer or args.model, trust_remote_code=args.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype),
                                                     trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as exc:
        print(f"alter-unlearn: cannot load model/tokenizer {args.model!r}: {exc}", file=sys.stderr)
        return 1
    model.to(device)
    cfg = ak.AlterConfig(rank=args.rank, alpha=args.alpha, num_forget_experts=2, q_route=args.q_route,
                         threshold=args.threshold, top_k=args.top_k, tau_high=args.tau_high, tau_low=args.tau_low,
                         target_modules=tuple(t.strip() for t in args.target_modules.split(",") if t.strip()),
                         adapter_dtype=args.adapter_dtype, init_seed=args.seed)
    alter_config = None
    try:
        if args.adapter:
            if args.method not in ("alter", "asymlora"):
                raise UnlearnError("--adapter (continue unlearning) works with --method alter or asymlora")
            saved, _ = ak.read_adapter_config(args.adapter)
            ak.patch(model, saved)
            ak.load_adapter(model, args.adapter)
            if args.add_experts:
                ak.add_forget_experts(model, args.add_experts)
        elif args.add_experts:
            raise UnlearnError("--add-experts needs --adapter (the adapter to continue from)")
        elif nfe is None or nfe == "auto":
            alter_config = None  # N from the labels / k-means; the other fields from the flags below
        else:
            import dataclasses
            alter_config = dataclasses.replace(cfg, num_forget_experts=nfe)
        if main_rank:
            with open(os.path.join(args.out, "run.json.tmp"), "w") as f:
                json.dump(vars(args), f, indent=1)
            os.replace(os.path.join(args.out, "run.json.tmp"), os.path.join(args.out, "run.json"))
        hp = dict(lr=args.lr, lr_A=args.lr_A, lr_B=args.lr_B, lr_router=args.lr_router, beta=args.beta,
                  gamma=args.gamma, lam=args.lam, rho=args.rho, npo_beta=args.npo_beta,
                  struct_mode=args.struct_mode, struct_q=args.struct_q, max_length=args.max_length,
                  chat_template=args.chat_template, prompt_format=args.prompt_format,
                  kmeans_max_k=args.kmeans_max_k, router_init=not args.no_router_init,
                  weight_decay=args.weight_decay, grad_clip=args.grad_clip, warmup_steps=args.warmup_steps,
                  checkpoint_every=args.checkpoint_every, resume=args.resume, eval_each_epoch=not args.no_eval,
                  eval_max_examples=args.eval_max_examples, threshold_quantile=args.threshold_quantile)
        if alter_config is None and not args.adapter:
            hp["num_forget_experts"] = nfe
            hp["base_config"] = cfg
        res = ak.unlearn(model, args.forget, args.retain, method=args.method, tokenizer=tok,
                         alter_config=alter_config, epochs=args.epochs, max_steps=args.max_steps,
                         batch_size=args.batch_size, seed=args.seed, device=device,
                         progress=not args.no_progress, out_dir=args.out, distributed=mode or "none", **hp)
    except UnlearnDivergedError as exc:
        print(f"alter-unlearn: {exc}", file=sys.stderr)
        return 2
    except (DataError, UnlearnError, ak.PatchError, ak.AdapterError, ValueError) as exc:
        print(f"alter-unlearn: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if mode is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if not main_rank:
        return 0
    last = res.metrics[-1] if res.metrics else {}
    print(json.dumps({"method": res.method, "steps": res.steps, "seconds": round(res.seconds, 2),
                      "adapter": res.adapter_dir, "model": res.model_dir, "domains": {str(k): v for k, v in
                                                                                       res.domain_map.items()},
                      "high_entropy_share": res.high_entropy_share, "last_epoch": last}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
