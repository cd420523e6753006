"""alter-eval's checks before any model work (issue 26): every option, every path, the output
targets, the adapter files; and after the tokenizer and model config are known, what depends on
them (the chat template, the model's positions).

Options are checked with alter-unlearn's rules where they exist (its seed range, prompt-format
fields, --device, model directories); a bad option or path is a :class:`UsageError` (exit 2), a
damaged file a :class:`RunError` (exit 1). ``--out`` and ``--save-reference`` may be neither
an input nor under one (the model, tokenizer, retain model and adapter directories, the data
files, the reference), must not be symlinks, directories or special files, and their directory
must take a new file now: a temp file is made there and removed before any model work.
"""
from __future__ import annotations

import os
import tempfile
from types import SimpleNamespace

from .eval_inputs import RunError, UsageError

BATCH_SIZE_CAP = 65536           # rows per batch; larger is a typo (and an allocation that cannot succeed)


def check_options(args) -> None:
    """The options on their own (exit 2)."""
    from ..eval.tofu import MAX_NEW_TOKENS_CAP
    from ..unlearn.options import OptionError, check_prompt_format, check_run_args
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS_CAP:
        raise UsageError(f"--max-new-tokens: expected an int in 1..{MAX_NEW_TOKENS_CAP}, got {args.max_new_tokens} "
                         "(the model's positions bound it too)")
    if not 1 <= args.batch_size <= BATCH_SIZE_CAP:
        raise UsageError(f"--batch-size: expected an int in 1..{BATCH_SIZE_CAP}, got {args.batch_size}")
    try:
        check_run_args(seed=args.seed)                      # alter-unlearn's seed range (numpy's)
        if args.chat_template != "on":                       # the plain format may be used
            check_prompt_format(args.prompt_format)
    except OptionError as exc:
        flag = "--seed" if exc.option == "seed" else "--prompt-format"
        raise UsageError(f"{flag}: {exc.detail}") from None
    if args.save_reference and not args.retain_model:
        raise UsageError("--save-reference needs --retain-model (it saves that model's truth ratios)")
    if args.task_id is not None and not [t for t in str(args.task_id).split(",") if t.strip()]:
        raise UsageError(f"--task-id: expected a task_id (or several, comma-separated), got {args.task_id!r}")
    if args.device:
        from .unlearn import _Exit, _check_device
        try:
            _check_device(args.device)
        except _Exit as exc:
            raise UsageError(exc.msg) from None


def check_sources(args, model_name: str) -> None:
    """Local model / tokenizer / retain-model directories, the adapter directory and the
    reference file exist and are of the right kind (exit 2)."""
    from .unlearn import _Exit, _check_model_dirs
    for flag, name, tok in (("--model", model_name, args.tokenizer), ("--retain-model", args.retain_model, args.tokenizer or model_name)):
        if name is None:
            continue
        try:
            _check_model_dirs(SimpleNamespace(model=name, tokenizer=tok))
        except _Exit as exc:
            raise UsageError(exc.msg.replace("--model:", f"{flag}:", 1)) from None
    if args.reference and not os.path.isfile(args.reference):
        raise UsageError(f"--reference: {args.reference} is not a file; expected a JSON file written by "
                         "--save-reference or an alter-eval output")


def _inputs(args, model_name: str, files: dict) -> list[tuple[str, str]]:
    """(what, local path) of every input of the run."""
    named = [("the --model directory", model_name), ("the --tokenizer directory", args.tokenizer),
             ("the --retain-model directory", args.retain_model), ("the --adapter directory", args.adapter),
             ("the --reference file", args.reference)]
    named += [(f"the {split.replace('_', ' ')} data file", path) for split, path in files.items()]
    return [(what, p) for what, p in named if p and os.path.exists(p)]


def check_outputs(args, model_name: str, files: dict) -> None:
    """--out and --save-reference: not an input nor under one, writable now (exit 2)."""
    from ..common.fsio import is_within
    targets = [("--out", args.out)] + ([("--save-reference", args.save_reference)] if args.save_reference else [])
    for flag, path in targets:
        for what, src in _inputs(args, model_name, files):
            if is_within(path, src):
                rel = "is" if os.path.realpath(path) == os.path.realpath(src) else "lies under"
                raise UsageError(f"{flag}: {path} {rel} {what} {src}; it would be overwritten; choose another path")
        _check_writable(flag, path)
    if args.save_reference and os.path.realpath(args.save_reference) == os.path.realpath(args.out):
        raise UsageError(f"--save-reference and --out are the same file {args.out}; give them different paths")


def _check_writable(flag: str, path: str) -> None:
    import stat

    from ..common.fsio import TMP_PREFIX, OutputError, check_file_target
    try:
        check_file_target(path)
    except OutputError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise UsageError(f"{flag}: {path} exists and is not a regular file (a device, pipe or socket); "
                         "expected a JSON file path")
    d = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(d):                 # made when the result is written; probe the nearest parent
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        raise UsageError(f"{flag}: {path}: {d} is not a directory")
    try:                                         # the writer's temp name, so a name too long fails here too
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX, suffix="-" + os.path.basename(path), dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{flag}: cannot write to {d} ({exc.strerror or exc}); choose another path") from None


def check_adapter_files(path: str, kind: str) -> None:
    """An adapter's config and weights, read and checked before the model is loaded (exit 1):
    valid config, weights file of this save, readable, every tensor finite and of sane size."""
    import alter_kernels as ak
    from ..model.io import check_tensor, read_adapter_weights
    try:
        if kind == "alter":
            _, meta = ak.read_adapter_config(path)
            tensors, wpath = read_adapter_weights(path, meta)
        else:
            tensors, wpath = _peft_tensors(path)
        for name, t in tensors.items():
            check_tensor(name, t, wpath)
    except ak.AdapterError as exc:
        raise RunError(f"--adapter {path}: {str(exc).removeprefix('load_adapter: ')}") from None


def _peft_tensors(path: str) -> tuple[dict, str]:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..model.io import AdapterError
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        wpath = os.path.join(path, name)
        if not os.path.isfile(wpath):
            continue
        try:
            if name.endswith(".safetensors"):
                return load_file(wpath), wpath
            return torch.load(wpath, map_location="cpu", weights_only=True), wpath
        except (SafetensorError, OSError, ValueError, RuntimeError, EOFError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AdapterError(f"{wpath} is truncated or corrupted ({msg})") from None
    raise AdapterError(f"no adapter_model.safetensors or adapter_model.bin in {path}")


def check_model_fit(args, tok, name: str) -> None:
    """What needs the tokenizer and the model's config, still before the weights are loaded:
    --chat-template needs a template, --max-new-tokens must fit the model's positions (exit 2)."""
    if args.chat_template == "on" and not getattr(tok, "chat_template", None):
        raise UsageError(f"--chat-template on: the tokenizer of {args.tokenizer or name!r} has no chat template; "
                         "use --chat-template auto or off (the plain --prompt-format) or pass a --tokenizer "
                         "that has one")
    from transformers import AutoConfig

    from ..eval.tofu import model_positions
    try:
        cfg = AutoConfig.from_pretrained(name, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"cannot load the model config of {name!r}: {str(exc).splitlines()[0]}") from None
    positions = model_positions(cfg)
    if positions is not None and args.max_new_tokens >= positions:
        raise UsageError(f"--max-new-tokens: the model {name!r} has {positions} positions (prompt and answer "
                         f"together); expected at most {positions - 1}, got {args.max_new_tokens}")
