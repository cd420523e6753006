"""A run's output directory: checked and locked before any work, and what the run writes there
(metrics.json, history.json, the checkpoint, ``adapter/`` or ``model/``)."""
from __future__ import annotations

import contextlib
import functools
import inspect
import os

from ..common.fsio import (OutDirLock, OutputError, atomic_dir, check_dir_target, check_file_target, clean_stale_temp,
                     ensure_dir, is_within, write_json)
from . import _model_api as _m
from . import checkpoint as ckpt
from . import distributed as D
from .methods import METHODS
from .options import OptionError, method_name

# What a run writes in its output directory: the one table of names (alter-unlearn reads it too).
METRICS_NAME = "metrics.json"     # one entry per epoch
HISTORY_NAME = "history.json"     # one entry per step
RUN_NAME = "run.json"             # alter-unlearn: the command's options
ADAPTER_DIR = "adapter"           # adapter methods (save_adapter)
MODEL_DIR = "model"               # full-parameter methods (save_pretrained)
OUT_FILES = (METRICS_NAME, HISTORY_NAME, ckpt.CHECKPOINT_NAME, ckpt.SIDECAR_NAME, RUN_NAME)
OUT_DIRS = (ADAPTER_DIR, MODEL_DIR)


def output_paths(out_dir) -> list[str]:
    """Every path a run may write in ``out_dir`` (files and directories)."""
    return [os.path.join(out_dir, n) for n in OUT_FILES + OUT_DIRS]


def _is_adapter(method: str) -> bool:
    return method in METHODS and METHODS[method].adapter


def prepare_out_dir(out_dir, model=None, method: str = "alter") -> str:
    """Check ``out_dir`` before any work: create it, refuse it if it is (or sits under) a file or
    a symlinked output, if it is unwritable, if it equals or contains the model's own directory
    (a full-parameter run would overwrite the base weights), or if an output name there is a
    directory or a symlink. Raises OutputError or OptionError (option "out_dir")."""
    out_dir = os.fspath(out_dir)
    src = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if isinstance(src, str) and src and os.path.isdir(src) and is_within(src, out_dir):
        raise OptionError("out_dir", "", out_dir,
                          detail=f"{out_dir} contains (or is) the model's directory {src}; the run would write over "
                                 "its inputs; choose an output directory outside it")
    try:
        ensure_dir(out_dir)
    except FileExistsError:
        raise OutputError(f"{out_dir} exists and is not a directory") from None
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot create the output directory {out_dir} ({exc.strerror or exc})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to the output directory {out_dir} (permission denied)")
    for name in OUT_FILES:
        check_file_target(os.path.join(out_dir, name))
    sub = os.path.join(out_dir, ADAPTER_DIR if _is_adapter(method) else MODEL_DIR)
    check_dir_target(sub)
    if _is_adapter(method):
        for name in (_m.CONFIG_NAME, _m.WEIGHTS_NAME):
            check_file_target(os.path.join(sub, name))
    return out_dir


def guard_out_dir(fn):
    """unlearn(..., out_dir=...): check out_dir (prepare_out_dir), hold its lock for the whole run
    (the main process of a data-parallel run) and remove temp files a killed run left there."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            b = sig.bind(*args, **kwargs)
            mode = D.resolve_mode(b.arguments.get("distributed"))
        except (TypeError, ValueError):
            return fn(*args, **kwargs)                # fn raises the error
        out_dir = b.arguments.get("out_dir")
        if out_dir is None:
            return fn(*args, **kwargs)
        if mode is not None:
            import torch.distributed as dist
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))
            if rank != 0:
                return fn(*args, **kwargs)
        prepare_out_dir(out_dir, b.arguments.get("model"), method_name(b.arguments.get("method", "alter")))
        with OutDirLock(out_dir):
            clean_stale_temp(out_dir, os.path.join(out_dir, ADAPTER_DIR))
            return fn(*args, **kwargs)
    return run


def write_run_json(run, name: str, obj) -> None:
    """``out_dir/name`` as JSON (the main process only; no-op without ``out_dir``)."""
    if run.out_dir is not None and run.main:
        write_json(os.path.join(run.out_dir, name), obj, indent=1, default=str)


def save_outputs(run, st) -> tuple[str | None, str | None]:
    """The end of a run with ``out_dir``: the final checkpoint, metrics, history, and the adapter
    (``adapter/``) or the model and tokenizer (``model/``). Returns (adapter_dir, model_dir)."""
    if run.out_dir is None:
        return None, None
    ckpt.save_run_checkpoint(run, st, st.total)
    write_run_json(run, METRICS_NAME, st.metrics)
    write_run_json(run, HISTORY_NAME, st.history)
    adapter_dir = model_dir = None
    if run.spec.adapter:
        adapter_dir = os.path.join(run.out_dir, ADAPTER_DIR)
        d = run.data
        with (run.dist.full_params(run.model) if run.dist is not None else contextlib.nullcontext()):
            if run.main:
                write_adapter_dir(run.model, adapter_dir,
                                  {"method": run.method, "domain_map": {str(k): v for k, v in d.domain_map.items()},
                                   "trained_experts": run.trained_experts, "steps": st.total,
                                   "threshold_source": run.threshold_source})
    else:
        model_dir = os.path.join(run.out_dir, MODEL_DIR)
        _save_model(run, model_dir)
    if run.dist is not None:
        run.dist.barrier()
    return adapter_dir, model_dir


def write_adapter_dir(model, adapter_dir: str, extra: dict) -> str:
    """The run's adapter, built in a temp directory beside ``adapter_dir`` and swapped into place
    (fsio.atomic_dir): a kill -9 at any point leaves the previous run's adapter or this one whole
    (or, between the two renames, none), never one file of each; a reader during the swap is
    refused by the weights digest that save_adapter records."""
    return atomic_dir(adapter_dir, lambda d: _m.save_adapter(model, d, extra=extra))


def _save_model(run, model_dir: str) -> None:
    model, sd = run.model, None
    if run.mode == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if run.main:
        atomic_dir(model_dir, lambda d: (model.save_pretrained(d, **({"state_dict": sd} if sd is not None else {})),
                                         run.tokenizer.save_pretrained(d)))
