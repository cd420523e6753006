"""``alter-finetune``: train a causal LM on question / answer files (fully, or with a LoRA merged
afterwards) and write an HF folder that every other command takes.

    alter-finetune --model PATH_OR_HF_NAME --data train.json [more.json ...] --out runs/ft [--lora]
    alter-unlearn  --model runs/ft/model --forget ... --retain ... --out runs/alter
    alter-eval     --model runs/ft/model --data tofu/ ...

Writes to --out: ``model/`` (save_pretrained of the trained model and its tokenizer, built in a
temp folder and renamed), ``metrics.json`` (per epoch: mean loss, the training rows' answer NLL),
``history.json`` (per step), ``checkpoint.pt`` (``--checkpoint-every``, and at the end; --resume
continues from it) and ``run.json`` (the options). The engine is ``ak.finetune``
(:mod:`alter_kernels.unlearn.finetuning`): the unlearning engine's data loading, loop, checkpoints
and outputs. Exit codes as alter-unlearn's: 0 done; 1 the run failed; 2 usage (one line
``alter-finetune: error: ...``); 130 interrupted (the line gives the command that resumes).
"""
from __future__ import annotations

import json
import os
import shlex
import sys

from ._common import DefaultsHelpFormatter, OneLineParser
from .unlearn_options import _data_options, _Sources
from .unlearn import FAILED, INTERRUPTED, USAGE, _check_device, _check_input, _check_model_dirs, _Exit, \
    _load_model, _run_failure

PROG = "alter-finetune"
_FLAGS = {"lora_rank": "--lora-rank", "lora_alpha": "--lora-alpha", "target_modules": "--target-modules",
          "out_dir": "--out", "eval_each_epoch": "--no-eval", "chat_template": "--chat-template"}


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def build_parser():
    import inspect

    from ..config import AlterConfig
    from ..unlearn import finetuning as F
    from ..unlearn.options import OPTION_HELP, FUSED_LOSS, UnlearnOptions
    o, run = UnlearnOptions(), {n: p.default for n, p in inspect.signature(F.finetune).parameters.items()
                                if p.default is not inspect.Parameter.empty}
    p = OneLineParser(prog=PROG, formatter_class=DefaultsHelpFormatter, error_hint=" (see --help)",
                      description="Finetune a causal LM on question/answer rows (TOFU format: JSON array or JSON "
                                  "lines with question, answer; or .txt passages), fully or with a LoRA merged "
                                  "into the weights, and write an HF folder (--out/model).")
    g = p.add_argument_group("run")
    g.add_argument("--model", required=True, help="local directory or Hugging Face name of a causal LM")
    g.add_argument("--tokenizer", default=None, help="tokenizer directory or name (default: the --model one)")
    g.add_argument("--data", required=True, nargs="+", metavar="FILE",
                   help="training rows: one or more .json / .jsonl / .txt files or hf:NAME[:CONFIG][@SPLIT] (joined)")
    g.add_argument("--task-id", default=None, help="keep only the rows of this task_id group (comma-separated for "
                                                   "several) of every file that has a task_id field")
    g.add_argument("--out", required=True, help="output directory (model/, metrics, checkpoints)")
    g.add_argument("--epochs", type=int, default=run["epochs"], help="passes over the data")
    g.add_argument("--max-steps", type=int, default=run["max_steps"], help="stop after this many steps "
                                                                             "(overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=run["batch_size"], help="rows per step")
    g.add_argument("--seed", type=int, default=run["seed"], help="seed of the data order and the LoRA init")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the model weights (trained and saved in it)")
    g.add_argument("--checkpoint-every", type=int, default=o.checkpoint_every, help=OPTION_HELP["checkpoint_every"])
    g.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt (same data and options)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--trust-remote-code", action="store_true", help="pass trust_remote_code=True to from_pretrained")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=o.lr, help="learning rate (every weight, or the LoRA's A and B)")
    g.add_argument("--weight-decay", type=float, default=o.weight_decay, help=OPTION_HELP["weight_decay"])
    g.add_argument("--grad-clip", type=float, default=o.grad_clip, help=OPTION_HELP["grad_clip"])
    g.add_argument("--warmup-steps", type=int, default=o.warmup_steps, help=OPTION_HELP["warmup_steps"])
    g.add_argument("--fused-loss", default=o.fused_loss, choices=list(FUSED_LOSS), help=OPTION_HELP["fused_loss"])
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora", action="store_true", help="train a PEFT LoRA and merge it into the weights at the end "
                                                       "(default: every weight trains)")
    g.add_argument("--lora-rank", type=int, default=run["lora_rank"], help="LoRA rank")
    g.add_argument("--lora-alpha", type=float, default=run["lora_alpha"], help="LoRA alpha (scale alpha / rank)")
    g.add_argument("--target-modules", default=",".join(AlterConfig().target_modules),
                   help="comma-separated names of the linears the LoRA adapts")
    _data_options(p.add_argument_group("data"), _Sources())     # alter-unlearn's: the same flags and rules
    return p


def _options(args) -> tuple[dict, dict]:
    """(engine options, LoRA / run keywords) from the flags, checked before any work (exit 2)."""
    from ..unlearn.finetuning import check_lora_args, finetune_options
    from ..unlearn.options import OptionError, check_run_args
    hp = dict(lr=args.lr, weight_decay=args.weight_decay, grad_clip=args.grad_clip, warmup_steps=args.warmup_steps,
              checkpoint_every=args.checkpoint_every, resume=args.resume, eval_each_epoch=not args.no_eval,
              eval_max_examples=args.eval_max_examples, max_length=args.max_length,
              chat_template=args.chat_template, prompt_format=args.prompt_format, fused_loss=args.fused_loss)
    mods = tuple(t.strip() for t in args.target_modules.split(",") if t.strip())
    try:
        check_run_args(epochs=args.epochs, batch_size=args.batch_size, max_steps=args.max_steps, seed=args.seed)
        finetune_options(hp)
        check_lora_args(args.lora_rank, args.lora_alpha, mods)
    except OptionError as exc:
        raise _Exit(USAGE, f"{_flag(exc.option)}: {exc.detail}") from None
    return hp, dict(lora=args.lora, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, target_modules=mods)


def _check_paths(args, held: list) -> str:
    """Inputs, model and --out (exit 2), then --out's lock; returns the device."""
    from ..common.fsio import OutDirLock, OutputError, OutputLockedError, clean_stale_temp, is_within
    from ..unlearn.options import OptionError
    from ..unlearn.outputs import MODEL_DIR, output_paths, prepare_out_dir
    device = str(_check_device(args.device)) if args.device else ("cuda" if _cuda() else "cpu")
    for path in args.data:
        _check_input("--data", path)
    _check_model_dirs(args)
    out = args.out
    for flag, src in (("--model", args.model), ("--tokenizer", args.tokenizer)):
        if src and os.path.isdir(src) and is_within(src, out):
            raise _Exit(USAGE, f"--out: {out} contains (or is) the {flag[2:]} directory {src}; the run would write "
                               "over its inputs; choose an output directory outside it")
    for src in args.data:
        if not src.startswith("hf:") and any(is_within(src, o) for o in output_paths(out)):
            raise _Exit(USAGE, f"--data: {src} is one of this run's outputs in --out {out} and would be overwritten; "
                               "choose another --out")
    try:
        prepare_out_dir(out, None, "finetune")
    except OptionError as exc:
        raise _Exit(USAGE, f"--out: {exc.detail}") from None
    except OutputError as exc:
        raise _Exit(USAGE, f"--out: {exc}") from None
    try:
        held.append(OutDirLock(out).acquire())
    except OutputLockedError as exc:
        raise _Exit(FAILED, str(exc)) from None
    clean_stale_temp(out, os.path.join(out, MODEL_DIR))
    return device


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _rows(args) -> list:
    """The rows of every --data source, joined (exit 1 naming the file when one cannot be read)."""
    from ..common.rows import DataError, load_rows
    rows = []
    for src in args.data:
        try:
            rows += load_rows(src, "data", task_id=args.task_id)[0]
        except (DataError, OSError, ValueError) as exc:
            raise _Exit(FAILED, str(exc).splitlines()[0]) from None
    return rows


def _run(args, held: list) -> int:
    import alter_kernels as ak
    from ..common.fsio import check_file_target, write_json
    from ..unlearn.outputs import RUN_NAME
    hp, kw = _options(args)
    device = _check_paths(args, held)
    try:
        rows = _rows(args)
        tok, model = _load_model(args, device)
        path = os.path.join(args.out, RUN_NAME)
        check_file_target(path)
        write_json(path, vars(args))
        res = ak.finetune(model, rows, tok, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                          seed=args.seed, progress=not args.no_progress, out_dir=args.out, **kw, **hp)
    except (_Exit, KeyboardInterrupt):
        raise
    except Exception as exc:
        failure = _run_failure(exc, device)
        if failure is None:
            raise
        raise failure from None
    last = res.metrics[-1] if res.metrics else {}
    print(json.dumps({"method": res.method, "steps": res.steps, "seconds": round(res.seconds, 2),
                      "model": res.model_dir, "last_epoch": last}, indent=1, default=str))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    held: list = []
    try:
        return _run(args, held)
    except _Exit as exc:
        print(f"{PROG}: error: {exc.msg}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt as exc:
        ck = getattr(exc, "checkpoint", None)
        again = "alter-finetune " + shlex.join(argv + ([] if "--resume" in argv else ["--resume"]))
        print(f"{PROG}: " + (f"interrupted after step {getattr(exc, 'step', '?')}; checkpoint saved to {ck}; resume "
                             f"with: {again}" if ck else "interrupted before any checkpoint was written"),
              file=sys.stderr)
        return INTERRUPTED
    finally:
        for lock in held:
            lock.release()


if __name__ == "__main__":
    sys.exit(main())
