"""``alter-unlearn``: run ALTER (or a baseline) on a causal LM from the command line.

    alter-unlearn --model PATH_OR_HF_NAME --forget forget.json --retain retain.json \
                  --method alter --out runs/alter

Writes to --out: ``adapter/`` (adapter methods, via save_adapter) or ``model/`` (full-parameter
baselines, via save_pretrained), ``metrics.json`` (one entry per epoch), ``history.json`` (one
entry per step), ``checkpoint.pt`` (periodic, atomic; --resume continues from it) and
``run.json`` (the options). ``--out`` is locked for the run (a second run into it fails at once),
may not contain the model's directory, and is never written through a symlink.

Every expected failure is one line on stderr, ``alter-unlearn: error: ...``, naming the option or
file and what was expected. Exit codes: 0 done; 1 the run failed (bad data, unreadable model or
checkpoint, another run holds --out, a non-finite loss, an I/O error); 2 usage (an option out of
range or of the wrong kind: numbers, --device, paths); 130 interrupted (Ctrl-C: the current
step finishes, a checkpoint is written and the line gives the command that resumes).

Data parallel: launch the same command with ``torchrun --nproc_per_node=N -m alter_kernels.cli ...``
(or ``accelerate launch``); ``--distributed auto`` (default) uses DDP when WORLD_SIZE > 1,
``--distributed fsdp2`` shards the model with FSDP2. Each process takes cuda:LOCAL_RANK (or the
CPU, gloo); only rank 0 writes --out and prints the summary. docs/scaling.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block): ``alter-unlearn: error: ...``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def unescape_newlines(text: str) -> str:
    """A prompt format typed in a shell: the two characters backslash-n become a newline (as the
    default is shown in --help)."""
    return text.replace("\\n", "\n")


def build_parser() -> argparse.ArgumentParser:
    from .unlearn.methods import DESCRIPTIONS
    methods = "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items())
    p = _Parser(
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
    g.add_argument("--retain-expert", default="train", choices=["train", "frozen"],
                   help="ALTER / AsymLoRA: train the retain expert B_0, or keep it frozen (zero: retain-routed "
                        "tokens compute the base model; docs/unlearning.md)")
    g.add_argument("--router-input", default="prefix_match", choices=["prefix_match", "token"],
                   help="router form: prefix_match (keys fitted from the data; docs/unlearning.md) or token (the "
                        "per-token linear router of ALTER_SPEC section 3)")
    g.add_argument("--q-route", type=float, default=1.5, help="Tsallis q of the routing entropy")
    g.add_argument("--threshold", type=float, default=1.2, help="entropy threshold theta (high: e > theta)")
    g.add_argument("--threshold-quantile", type=float, default=None,
                   help="ALTER: set theta to this quantile (0..1) of the base model's answer-token entropies "
                        "instead of --threshold (0.5: half the answer tokens high); stored in the adapter config")
    g.add_argument("--threshold-auto", type=float, default=0.5,
                   help="ALTER: when --threshold puts >= 98%% of the answer tokens on one side, use this quantile of "
                        "the base answer-token entropies instead (logged, stored in the adapter config)")
    g.add_argument("--no-threshold-auto", action="store_true", help="always keep --threshold")
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


USAGE, FAILED, INTERRUPTED = 2, 1, 130

# hparams / AlterConfig names whose flag is not "--" + name with "-" for "_"
_FLAGS = {"lr_A": "--lr-A", "lr_B": "--lr-B", "eval_each_epoch": "--no-eval", "router_init": "--no-router-init",
          "out_dir": "--out", "init_seed": "--seed", "alter_config": "--num-forget-experts",
          "base_config": "--rank/--alpha/...", "chat_template": "--chat-template"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model", "sentencepiece.bpe.model")
_INPUT_KINDS = "a .json, .jsonl or .txt file, or hf:NAME[:CONFIG][@SPLIT]"


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


class _Exit(Exception):
    """An expected failure: one line, one exit code."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code, self.msg = code, msg


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_device(spec: str):
    import torch
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise _Exit(USAGE, f"--device: expected cpu, cuda, cuda:N, mps ..., got {spec!r}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
            raise _Exit(USAGE, f"--device {spec}: {why}; use --device cpu (or leave --device out)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise _Exit(USAGE, f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                               f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return dev
    backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(torch, dev.type, None)
    ok = getattr(backend, "is_available", None)
    if ok is None or not ok():
        raise _Exit(USAGE, f"--device {spec}: {dev.type} is not available here; use --device cpu")
    return dev


def _check_input(flag: str, path: str | None) -> None:
    if path is None or path.startswith("hf:"):
        return
    if not os.path.exists(path):
        raise _Exit(USAGE, f"{flag}: {path} not found; expected {_INPUT_KINDS}")
    if os.path.isdir(path):
        raise _Exit(USAGE, f"{flag}: {path} is a directory; expected {_INPUT_KINDS}")
    if not os.access(path, os.R_OK):
        raise _Exit(USAGE, f"{flag}: {path} is not readable")


def _check_model_dirs(args) -> None:
    """Local --model / --tokenizer directories must hold what from_pretrained reads (names that
    are not local paths are left to the Hugging Face hub)."""
    if os.path.exists(args.model):
        if not os.path.isdir(args.model):
            raise _Exit(USAGE, f"--model: {args.model} is a file; expected a model directory (save_pretrained) or a "
                               "Hugging Face name")
        if not os.path.isfile(os.path.join(args.model, "config.json")):
            raise _Exit(USAGE, f"--model: {args.model} has no config.json; expected a directory written by "
                               "save_pretrained")
    tok_flag, tok = ("--tokenizer", args.tokenizer) if args.tokenizer else ("--model", args.model)
    if os.path.exists(tok):
        if not os.path.isdir(tok):
            raise _Exit(USAGE, f"{tok_flag}: {tok} is a file; expected a tokenizer directory or a Hugging Face name")
        if not any(os.path.isfile(os.path.join(tok, n)) for n in _TOKENIZER_FILES):
            raise _Exit(USAGE, f"{tok_flag}: {tok} has no tokenizer files (none of {', '.join(_TOKENIZER_FILES[:3])}, "
                               "...); pass --tokenizer with the tokenizer's directory or Hugging Face name")


def _check_out(args, method: str) -> None:
    """--out before any work: not the model's directory or a parent of it, no input among its
    outputs, then the engine's checks (a directory we can write, no symlinked or blocked outputs)."""
    from ._fsio import OutputError, is_within
    from .unlearn.options import OptionError
    from .unlearn.trainer import prepare_out_dir
    out = args.out
    for flag, src in (("--model", args.model), ("--tokenizer", args.tokenizer)):
        if src and os.path.isdir(src) and is_within(src, out):
            raise _Exit(USAGE, f"--out: {out} contains (or is) the {flag[2:]} directory {src}; the run would write "
                               "over its inputs; choose an output directory outside it")
    outputs = [os.path.join(out, n) for n in ("run.json", "metrics.json", "history.json", "checkpoint.pt",
                                              "checkpoint.json", "adapter", "model")]
    for flag, src in (("--forget", args.forget), ("--retain", args.retain), ("--adapter", args.adapter)):
        if src and not src.startswith("hf:") and any(is_within(src, o) for o in outputs):
            raise _Exit(USAGE, f"{flag}: {src} is one of this run's outputs in --out {out} and would be overwritten; "
                               "choose another --out")
    try:
        prepare_out_dir(out, None, method)
    except OptionError as exc:
        raise _Exit(USAGE, f"--out: {exc.detail}") from None
    except OutputError as exc:
        raise _Exit(USAGE, f"--out: {exc}") from None


def _resume_command(argv: list) -> str:
    args = list(argv) + ([] if "--resume" in argv else ["--resume"])
    return "alter-unlearn " + shlex.join(args)


def _say(msg: str) -> None:
    print(f"alter-unlearn: {msg}", file=sys.stderr)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)       # argparse: usage errors exit 2 with one line
    held: list = []
    try:
        return _run(args, held)
    except _Exit as exc:
        _say(f"error: {exc.msg}")
        return exc.code
    except KeyboardInterrupt as exc:
        step, ck = getattr(exc, "step", None), getattr(exc, "checkpoint", None)
        if ck:
            _say(f"interrupted after step {step}; checkpoint saved to {ck}; resume with: {_resume_command(argv)}")
        else:
            ck = os.path.join(args.out, "checkpoint.pt")
            _say(f"interrupted; the last checkpoint is {ck}; resume with: {_resume_command(argv)}"
                 if held and os.path.isfile(ck) else "interrupted before any checkpoint was written; nothing to resume")
        return INTERRUPTED
    finally:
        for lock in held:
            lock.release()
        try:
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass


def _run(args, held: list) -> int:
    import dataclasses

    import torch
    import alter_kernels as ak
    from ._fsio import OutDirLock, OutputError, OutputLockedError, check_file_target, clean_stale_temp, write_json
    from .config import ConfigError, MAX_FORGET_EXPERTS
    from .unlearn.checkpoint import CheckpointError
    from .unlearn.data import DataError
    from .unlearn.distributed import launcher_device, resolve_mode
    from .unlearn.options import OptionError, validate_options
    from .unlearn.trainer import DEFAULTS, UnlearnDivergedError, UnlearnError

    # ------------------------------------------------------------ options, before any work (exit 2)
    nfe = args.num_forget_experts
    if nfe is not None and nfe != "auto":
        try:
            nfe = int(nfe)
        except ValueError:
            raise _Exit(USAGE, f"--num-forget-experts: expected an int or 'auto', got {nfe!r}") from None
    hp = dict(lr=args.lr, lr_A=args.lr_A, lr_B=args.lr_B, lr_router=args.lr_router, beta=args.beta,
              gamma=args.gamma, lam=args.lam, rho=args.rho, npo_beta=args.npo_beta,
              struct_mode=args.struct_mode, struct_q=args.struct_q, max_length=args.max_length,
              chat_template=args.chat_template, prompt_format=args.prompt_format,
              kmeans_max_k=args.kmeans_max_k, router_init=not args.no_router_init,
              weight_decay=args.weight_decay, grad_clip=args.grad_clip, warmup_steps=args.warmup_steps,
              checkpoint_every=args.checkpoint_every, resume=args.resume, eval_each_epoch=not args.no_eval,
              eval_max_examples=args.eval_max_examples, threshold_quantile=args.threshold_quantile,
              threshold_auto=None if args.no_threshold_auto else args.threshold_auto,
              retain_expert=args.retain_expert)
    try:
        validate_options({**DEFAULTS, **hp, "num_forget_experts": nfe}, epochs=args.epochs,
                         batch_size=args.batch_size, max_steps=args.max_steps, seed=args.seed)
        cfg = ak.AlterConfig(rank=args.rank, alpha=args.alpha, num_forget_experts=2, q_route=args.q_route,
                             threshold=args.threshold, top_k=args.top_k, tau_high=args.tau_high,
                             tau_low=args.tau_low,
                             target_modules=tuple(t.strip() for t in args.target_modules.split(",") if t.strip()),
                             adapter_dtype=args.adapter_dtype, init_seed=args.seed, router_input=args.router_input)
    except OptionError as exc:
        raise _Exit(USAGE, f"{_flag(exc.option)}: {exc.detail}") from None
    except ConfigError as exc:
        raise _Exit(USAGE, f"{_flag(exc.field)}: {str(exc).split(': ', 1)[-1]}") from None
    if not 0 <= args.add_experts <= MAX_FORGET_EXPERTS:
        raise _Exit(USAGE, f"--add-experts: expected an int in 0..{MAX_FORGET_EXPERTS}, got {args.add_experts}")
    if args.add_experts and not args.adapter:
        raise _Exit(USAGE, "--add-experts needs --adapter (the adapter to continue from)")
    if args.adapter and args.method not in ("alter", "asymlora"):
        raise _Exit(USAGE, "--adapter (continue unlearning) works with --method alter or asymlora")
    try:
        mode = resolve_mode(args.distributed)
    except ValueError as exc:
        raise _Exit(USAGE, f"--distributed: {exc}") from None
    device = str(_check_device(args.device)) if args.device else str(launcher_device())
    main_rank = mode is None or int(os.environ.get("RANK", "0")) == 0
    _check_input("--forget", args.forget)
    _check_input("--retain", args.retain)
    if args.adapter and not os.path.isdir(args.adapter):
        raise _Exit(USAGE, f"--adapter: {args.adapter} is not a directory; expected an adapter directory written "
                           "by an earlier run (its adapter/)")
    _check_model_dirs(args)
    method = args.method
    if main_rank:
        _check_out(args, method)
        try:
            held.append(OutDirLock(args.out).acquire())
        except OutputLockedError as exc:
            raise _Exit(FAILED, str(exc)) from None
        clean_stale_temp(args.out, os.path.join(args.out, "adapter"))

    # ------------------------------------------------------------ the run (exit 1 on failure)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        if args.no_progress:
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
        try:
            tok = AutoTokenizer.from_pretrained(args.tokenizer or args.model, trust_remote_code=args.trust_remote_code)
        except (OSError, ValueError, ImportError, KeyError) as exc:
            raise _Exit(FAILED, f"cannot load the tokenizer {args.tokenizer or args.model!r}: {_first_line(exc)}") from None
        try:
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype),
                                                         trust_remote_code=args.trust_remote_code)
        except (OSError, ValueError, ImportError, KeyError) as exc:
            raise _Exit(FAILED, f"cannot load the model {args.model!r}: {_first_line(exc)}") from None
        model.to(device)
        alter_config = None
        if args.adapter:
            saved, _ = ak.read_adapter_config(args.adapter)
            if saved.num_forget_experts + args.add_experts > MAX_FORGET_EXPERTS:
                raise _Exit(USAGE, f"--add-experts: the adapter has {saved.num_forget_experts} forget experts; "
                                   f"expected at most {MAX_FORGET_EXPERTS} in all, got {args.add_experts} more")
            ak.patch(model, saved)
            ak.load_adapter(model, args.adapter)
            if args.add_experts:
                ak.add_forget_experts(model, args.add_experts)
        elif nfe is not None and nfe != "auto":
            alter_config = dataclasses.replace(cfg, num_forget_experts=nfe)
        if main_rank:
            path = os.path.join(args.out, "run.json")
            check_file_target(path)
            write_json(path, vars(args))
        if alter_config is None and not args.adapter:
            hp["num_forget_experts"] = nfe
            hp["base_config"] = cfg
        res = ak.unlearn(model, args.forget, args.retain, method=method, tokenizer=tok,
                         alter_config=alter_config, epochs=args.epochs, max_steps=args.max_steps,
                         batch_size=args.batch_size, seed=args.seed, device=device,
                         progress=not args.no_progress, out_dir=args.out, distributed=mode or "none", **hp)
    except OptionError as exc:
        raise _Exit(USAGE, f"{_flag(exc.option)}: {exc.detail}") from None
    except ConfigError as exc:
        raise _Exit(USAGE, f"{_flag(exc.field)}: {str(exc).split(': ', 1)[-1]}") from None
    except ak.PatchError as exc:
        if getattr(exc, "field", None):                  # an option that does not fit the model (--rank)
            raise _Exit(USAGE, f"{_flag(exc.field)}: {_first_line(exc)}") from None
        raise _Exit(FAILED, _first_line(exc)) from None
    except UnlearnDivergedError as exc:
        raise _Exit(FAILED, f"diverged: {exc}") from None
    except OutputLockedError as exc:
        raise _Exit(FAILED, str(exc)) from None
    except (DataError, UnlearnError, CheckpointError, ak.PatchError, ak.AdapterError, OutputError) as exc:
        raise _Exit(FAILED, _first_line(exc)) from None
    except torch.OutOfMemoryError as exc:
        raise _Exit(FAILED, f"out of memory on {device} ({_first_line(exc)}); lower --batch-size or --max-length, or "
                            "use a smaller --dtype") from None
    except OSError as exc:
        raise _Exit(FAILED, f"{exc.filename + ': ' if getattr(exc, 'filename', None) else ''}"
                            f"{exc.strerror or _first_line(exc)}") from None
    except ValueError as exc:
        raise _Exit(FAILED, _first_line(exc)) from None
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
