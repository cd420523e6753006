"""``alter-unlearn``: run ALTER (or a baseline) on a causal LM from the command line.

    alter-unlearn --model FOLDER_HF_NAME_GGUF_OR_ALIAS --forget forget.json --retain retain.json \
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

import json
import os
import shlex
import sys
import warnings

from ._common import first_line as _first_line
from .unlearn_options import build_parser

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
    are not local paths are left to the Hugging Face hub; a .gguf file and an alias are resolved by
    ak.resolve_model when the model is loaded)."""
    from ..model.load import ALIASES, ModelNameError, packaged_gguf
    for flag, name in (("--model", args.model), ("--tokenizer", args.tokenizer)):
        if name and name.lower().endswith(".gguf") and not os.path.isfile(name):
            raise _Exit(USAGE, f"{flag}: GGUF file {name} not found")
        if name and name.lower() in ALIASES and not os.path.exists(name):
            try:
                packaged_gguf(name)                 # the wheel is there: checked before --out is touched
            except ModelNameError as exc:
                raise _Exit(FAILED, f"{flag}: {exc}") from None
    if os.path.exists(args.model) and not _is_gguf(args.model):
        if not os.path.isdir(args.model):
            raise _Exit(USAGE, f"--model: {args.model} is a file; expected a model directory (save_pretrained), a "
                               ".gguf file, a Hugging Face name or an alias (alter_kernels.model.load.ALIASES)")
        if not os.path.isfile(os.path.join(args.model, "config.json")):
            raise _Exit(USAGE, f"--model: {args.model} has no config.json; expected a directory written by "
                               "save_pretrained")
    tok_flag, tok = ("--tokenizer", args.tokenizer) if args.tokenizer else ("--model", args.model)
    if os.path.exists(tok) and not _is_gguf(tok):
        if not os.path.isdir(tok):
            raise _Exit(USAGE, f"{tok_flag}: {tok} is a file; expected a tokenizer directory or a Hugging Face name")
        if not any(os.path.isfile(os.path.join(tok, n)) for n in _TOKENIZER_FILES):
            raise _Exit(USAGE, f"{tok_flag}: {tok} has no tokenizer files (none of {', '.join(_TOKENIZER_FILES[:3])}, "
                               "...); pass --tokenizer with the tokenizer's directory or Hugging Face name")


def _is_gguf(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(".gguf")


def _check_out(args, method: str) -> None:
    """--out before any work: not the model's directory or a parent of it, no input among its
    outputs, then the engine's checks (a directory we can write, no symlinked or blocked outputs)."""
    from ..common.fsio import OutputError, is_within
    from ..unlearn.options import OptionError
    from ..unlearn.outputs import output_paths, prepare_out_dir
    out = args.out
    for flag, src in (("--model", args.model), ("--tokenizer", args.tokenizer)):
        if src and os.path.isdir(src) and is_within(src, out):
            raise _Exit(USAGE, f"--out: {out} contains (or is) the {flag[2:]} directory {src}; the run would write "
                               "over its inputs; choose an output directory outside it")
    outputs = output_paths(out)
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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The engine's warnings (rows, routing, a run that did not unlearn) as one line each."""
    _say(f"warning: {message}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)       # argparse: usage errors exit 2 with one line
    held: list = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            return _run(args, held)
    except _Exit as exc:
        _say(f"error: {exc.msg}")
        return exc.code
    except KeyboardInterrupt as exc:
        step, ck = getattr(exc, "step", None), getattr(exc, "checkpoint", None)
        if ck:
            _say(f"interrupted after step {step}; checkpoint saved to {ck}; resume with: {_resume_command(argv)}")
        else:
            from ..unlearn.checkpoint import CHECKPOINT_NAME
            ck = os.path.join(args.out, CHECKPOINT_NAME)
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


def _hparams(args) -> tuple[dict, object]:
    """The engine's keyword options from the flags, and --num-forget-experts parsed (int, "auto" or None)."""
    nfe = args.num_forget_experts
    if nfe is not None and nfe != "auto":
        try:
            nfe = int(nfe)
        except ValueError:
            raise _Exit(USAGE, f"--num-forget-experts: expected an int or 'auto', got {nfe!r}") from None
    hp = dict(lr=args.lr, lr_A=args.lr_A, lr_B=args.lr_B, lr_router=args.lr_router, beta=args.beta,
              gamma=args.gamma, lam=args.lam, rho=args.rho, npo_beta=args.npo_beta,
              struct_mode=args.struct_mode, struct_q=args.struct_q, fused_loss=args.fused_loss, max_length=args.max_length,
              chat_template=args.chat_template, prompt_format=args.prompt_format,
              kmeans_max_k=args.kmeans_max_k, router_init=not args.no_router_init,
              weight_decay=args.weight_decay, grad_clip=args.grad_clip, warmup_steps=args.warmup_steps,
              checkpoint_every=args.checkpoint_every, resume=args.resume, eval_each_epoch=not args.no_eval,
              eval_max_examples=args.eval_max_examples, threshold_quantile=args.threshold_quantile,
              threshold_auto=None if args.no_threshold_auto else args.threshold_auto,
              retain_expert=args.retain_expert, ihl_until=args.ihl_until, forget_loss=args.forget_loss,
              forget_ihl=args.forget_ihl)
    return hp, nfe


def _check_options(args, hp: dict, nfe):
    """Every option before any work (exit 2); returns the base AlterConfig."""
    import alter_kernels as ak
    from ..config import ConfigError, MAX_FORGET_EXPERTS
    from ..unlearn.options import OptionError, UnlearnOptions, check_run_args
    try:
        check_run_args(epochs=args.epochs, batch_size=args.batch_size, max_steps=args.max_steps, seed=args.seed)
        UnlearnOptions(**hp, num_forget_experts=nfe)
        cfg = ak.AlterConfig(rank=args.rank, alpha=args.alpha, q_route=args.q_route,
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
    return cfg


def _check_paths(args, held: list):
    """Device, inputs and --out (exit 2), then --out's lock; returns (distributed mode, device, main rank)."""
    from ..common.fsio import OutDirLock, OutputLockedError, clean_stale_temp
    from ..unlearn.outputs import ADAPTER_DIR
    from ..unlearn.distributed import launcher_device, resolve_mode
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
    if main_rank:
        _check_out(args, args.method)
        try:
            held.append(OutDirLock(args.out).acquire())
        except OutputLockedError as exc:
            raise _Exit(FAILED, str(exc)) from None
        clean_stale_temp(args.out, os.path.join(args.out, ADAPTER_DIR))
    return mode, device, main_rank


def _load_model(args, device: str):
    """(tokenizer, model on ``device``); exit 1 when either cannot be loaded."""
    import torch
    from ..model.load import ModelNameError, load_model, load_tokenizer
    if args.no_progress:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    kw = dict(trust_remote_code=args.trust_remote_code, progress=not args.no_progress)
    try:
        tok = load_tokenizer(args.tokenizer or args.model, **kw)
    except ModelNameError as exc:
        raise _Exit(FAILED, f"{'--tokenizer' if args.tokenizer else '--model'}: {exc}") from None
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise _Exit(FAILED, f"cannot load the tokenizer {args.tokenizer or args.model!r}: {_first_line(exc)}") from None
    try:
        model = load_model(args.model, dtype=getattr(torch, args.dtype), **kw)
    except ModelNameError as exc:
        raise _Exit(FAILED, f"--model: {exc}") from None
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise _Exit(FAILED, f"cannot load the model {args.model!r}: {_first_line(exc)}") from None
    model.to(device)
    return tok, model


def _prepare_adapter(args, model, cfg, nfe, hp: dict):
    """--adapter (+ --add-experts) onto ``model``; returns the AlterConfig to patch with, or None."""
    import dataclasses

    import alter_kernels as ak
    from ..config import MAX_FORGET_EXPERTS
    if args.adapter:
        saved, _ = ak.read_adapter_config(args.adapter)
        if saved.num_forget_experts + args.add_experts > MAX_FORGET_EXPERTS:
            raise _Exit(USAGE, f"--add-experts: the adapter has {saved.num_forget_experts} forget experts; "
                               f"expected at most {MAX_FORGET_EXPERTS} in all, got {args.add_experts} more")
        ak.patch(model, saved)
        ak.load_adapter(model, args.adapter)
        if args.add_experts:
            ak.add_forget_experts(model, args.add_experts)
        return None
    if nfe is not None and nfe != "auto":
        return dataclasses.replace(cfg, num_forget_experts=nfe)
    hp.update(num_forget_experts=nfe, base_config=cfg)
    return None


def _train(args, cfg, nfe, hp: dict, mode, device: str, main_rank: bool):
    """Load, patch and unlearn (ak.unlearn); returns its UnlearnResult."""
    import alter_kernels as ak
    from ..common.fsio import check_file_target, write_json
    from ..unlearn.outputs import RUN_NAME
    tok, model = _load_model(args, device)
    alter_config = _prepare_adapter(args, model, cfg, nfe, hp)
    if main_rank:
        path = os.path.join(args.out, RUN_NAME)
        check_file_target(path)
        write_json(path, vars(args))
    return ak.unlearn(model, args.forget, args.retain, method=args.method, tokenizer=tok,
                      alter_config=alter_config, epochs=args.epochs, max_steps=args.max_steps,
                      batch_size=args.batch_size, seed=args.seed, device=device,
                      progress=not args.no_progress, out_dir=args.out, distributed=mode or "none", **hp)


def _run_failure(exc: Exception, device: str) -> "_Exit | None":
    """The one-line _Exit of an exception raised by the run, or None for an unexpected one."""
    import torch

    import alter_kernels as ak
    from ..common.fsio import OutputError, OutputLockedError
    from ..config import ConfigError
    from ..unlearn.checkpoint import CheckpointError
    from ..unlearn.data import DataError
    from ..unlearn.options import OptionError
    from ..unlearn.result import UnlearnDivergedError, UnlearnError
    if isinstance(exc, OptionError):
        return _Exit(USAGE, f"{_flag(exc.option)}: {exc.detail}")
    if isinstance(exc, ConfigError):
        return _Exit(USAGE, f"{_flag(exc.field)}: {str(exc).split(': ', 1)[-1]}")
    if isinstance(exc, ak.PatchError) and getattr(exc, "field", None):   # an option that does not fit the model
        return _Exit(USAGE, f"{_flag(exc.field)}: {_first_line(exc)}")
    if isinstance(exc, UnlearnDivergedError):
        return _Exit(FAILED, f"diverged: {exc}")
    if isinstance(exc, OutputLockedError):
        return _Exit(FAILED, str(exc))
    if isinstance(exc, (DataError, UnlearnError, CheckpointError, ak.PatchError, ak.AdapterError, OutputError)):
        return _Exit(FAILED, _first_line(exc))
    if isinstance(exc, torch.OutOfMemoryError):
        return _Exit(FAILED, f"out of memory on {device} ({_first_line(exc)}); lower --batch-size or --max-length, "
                             "or use a smaller --dtype")
    if isinstance(exc, OSError):
        return _Exit(FAILED, f"{exc.filename + ': ' if getattr(exc, 'filename', None) else ''}"
                             f"{exc.strerror or _first_line(exc)}")
    if isinstance(exc, ValueError):
        return _Exit(FAILED, _first_line(exc))
    return None


def _run(args, held: list) -> int:
    hp, nfe = _hparams(args)
    cfg = _check_options(args, hp, nfe)                 # options, before any work (exit 2)
    mode, device, main_rank = _check_paths(args, held)
    try:                                                # the run (exit 1 on failure)
        res = _train(args, cfg, nfe, hp, mode, device, main_rank)
    except _Exit:
        raise
    except Exception as exc:
        failure = _run_failure(exc, device)
        if failure is None:
            raise
        raise failure from None
    if not main_rank:
        return 0
    last = res.metrics[-1] if res.metrics else {}
    print(json.dumps({"method": res.method, "steps": res.steps, "seconds": round(res.seconds, 2),
                      "adapter": res.adapter_dir, "model": res.model_dir, "domains": {str(k): v for k, v in
                                                                                       res.domain_map.items()},
                      "high_entropy_share": res.high_entropy_share,
                      "forget_nll": dict(zip(("before", "after"), res.forget_nll)),
                      "forget_unchanged": res.forget_unchanged, "last_epoch": last}, indent=1, default=str))
    return 0

if __name__ == "__main__":
    sys.exit(main())
