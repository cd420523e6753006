"""Training checkpoints without pickled code.

``checkpoint.pt`` holds tensors only (trainable weights, optimizer moments, RNG states) and is
read with ``torch.load(weights_only=True)``: a tampered file cannot run code, it is refused.
Everything else (step, method, fingerprint, history, optimizer hyper-parameters, the python and
numpy RNG states, ``extra``) is JSON. That JSON is stored inside ``checkpoint.pt`` as a uint8
tensor (so weights and state always come from the same atomic write) and, for people and
tools, also as the sidecar ``checkpoint.json`` (written right after, atomically; informational:
resuming reads the copy inside ``checkpoint.pt``).

The JSON encodes the non-tensor structure with a few tags: ``{"__tensor__": key}`` (a tensor
of the .pt file), ``{"__ndarray__": key, "dtype": ...}`` (a numpy array stored as a tensor),
``{"__tuple__": [...]}`` and ``{"__dict__": [[k, v], ...]}`` (a dict with non-string keys, such
as the optimizer's per-parameter state). Decoding builds only dicts, lists, tuples, numbers,
strings, tensors and numpy arrays.

Both files are written with :func:`alter_kernels.common.fsio.atomic_write` (temp file, fsync,
``os.replace``): a crash leaves the previous complete checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import warnings
import zipfile

import numpy as np
import torch

from ..common.fsio import atomic_write, write_json
from . import _model_api as _m
from .result import UnlearnError

CHECKPOINT_NAME = "checkpoint.pt"
SIDECAR_NAME = "checkpoint.json"
FORMAT_VERSION = 2
_META_KEY = "meta_json"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, truncated, not ours, or holding more than tensors."""


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# --------------------------------------------------------------------------- JSON <-> tensors
_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__")


def _encode(obj, tensors: dict, path: str):
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).astype(np.int64) if obj.dtype.kind in "ui"
                                        else np.ascontiguousarray(obj))
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k in _TAGS for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors, path), _encode(v, tensors, f"{path}[{k!r}]")]
                             for k, v in obj.items()]}
    raise TypeError(f"checkpoint: cannot store {type(obj).__name__} at {path} (only tensors, numbers, strings, "
                    "lists, tuples and dicts)")


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in obj["__dict__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _hashable(k):
    return tuple(k) if isinstance(k, list) else k


def encode_checkpoint(state: dict) -> tuple[dict, dict]:
    """state -> (tensors for checkpoint.pt, JSON-able metadata)."""
    tensors: dict = {}
    meta = _encode(state, tensors, "checkpoint")
    return tensors, meta


def atomic_torch_save(tensors: dict, path: str) -> None:
    """torch.save of a flat dict of tensors through the package's atomic writer."""
    atomic_write(path, writer=lambda f: torch.save(tensors, f))


def save_checkpoint(out_dir: str, *, method: str, step: int, trainable: dict, optimizer, history: list,
                    fingerprint: str, extra: dict | None = None) -> str:
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    state = {
        "format_version": FORMAT_VERSION,
        "method": method,
        "step": int(step),
        "trainable": {k: v.detach().cpu().clone() for k, v in trainable.items()},
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "history": history,
        "fingerprint": fingerprint,
        "extra": extra or {},
    }
    tensors, meta = encode_checkpoint(state)
    text = json.dumps(meta, indent=None)
    tensors[_META_KEY] = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)
    atomic_torch_save(tensors, path)
    write_json(os.path.join(out_dir, SIDECAR_NAME), {k: v for k, v in meta.items() if k != "trainable"}
               | {"tensors_file": CHECKPOINT_NAME, "note": "informational copy; resuming reads the JSON "
                                                           "stored inside checkpoint.pt"})
    return path


def load_checkpoint(out_dir: str) -> dict | None:
    """The checkpoint in ``out_dir`` (None if there is none). Raises CheckpointError, naming the file,
    for anything but a complete checkpoint of this format (never runs code from the file)."""
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    if not os.path.lexists(path):
        return None
    if os.path.islink(path) or not os.path.isfile(path):
        raise CheckpointError(f"resume: {path} is not a regular file")
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        why = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        raise CheckpointError(f"resume: refusing to load {path}: it holds objects other than tensors, which could "
                              f"run code (a tampered file, or one written by alter_kernels < 0.2); delete it and "
                              f"start without --resume{' (' + why[0] + ')' if why else ''}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError,
            TypeError, IndexError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"resume: {path} is truncated or corrupted and cannot be read "
                              f"({type(exc).__name__}{': ' + msg if msg else ''}); delete it and start without "
                              "--resume") from None
    bad = f"resume: {path} is not an alter_kernels checkpoint this version can read"
    if (not isinstance(tensors, dict) or _META_KEY not in tensors
            or not all(isinstance(v, torch.Tensor) for v in tensors.values())):
        raise CheckpointError(f"{bad} (expected tensors and a {_META_KEY!r} entry)")
    try:
        meta = json.loads(bytes(tensors.pop(_META_KEY).numpy().tobytes()).decode("utf-8"))
        ck = _decode(meta, tensors)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{bad} (its metadata does not decode: {exc})") from None
    if (not isinstance(ck, dict) or not isinstance(ck.get("format_version"), int)
            or ck["format_version"] > FORMAT_VERSION or not isinstance(ck.get("step"), int)
            or not isinstance(ck.get("trainable"), dict) or "optimizer" not in ck or "rng" not in ck):
        raise CheckpointError(bad)
    return ck


# --------------------------------------------------------------------------- a run's checkpoints
def fingerprint(method, forget: list, retain: list, hp, seed, batch_size) -> str:
    """What a resumed run must share with the run that wrote the checkpoint: method, seed, batch
    size, options (but ``resume`` and ``checkpoint_every``) and the tokenised data."""
    h = hashlib.sha256()
    h.update(json.dumps([method, seed, batch_size, {k: v for k, v in sorted(hp.items())
                                                     if k not in ("resume", "checkpoint_every")}],
                        default=str).encode())
    for ex in forget + retain:
        h.update(np.asarray(ex.input_ids, dtype=np.int64).tobytes())
        h.update(np.asarray(ex.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def trainable_state(run) -> dict:
    """The weights a run trains: the adapter's (adapter methods) or the whole model's."""
    return _m.adapter_state_dict(run.model) if run.spec.adapter else dict(run.model.state_dict())


class _Plain:
    """An already-built optimizer state dict where save_checkpoint expects an optimizer."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


def _load_into(own: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole checkpoint tensor into a parameter, or into this rank's shard of an FSDP2 DTensor."""
    if hasattr(own, "to_local"):
        from torch.distributed.tensor import distribute_tensor
        src = distribute_tensor(full.to(dtype=own.dtype), own.device_mesh, own.placements, src_data_rank=None)
        own.to_local().copy_(src.to_local().to(own.to_local().device))
        return
    own.copy_(full.to(device=own.device, dtype=own.dtype))


def save_run_checkpoint(run, st, step: int) -> None:
    """Checkpoint the state after ``step`` steps into ``run.out_dir`` (no-op without one). In a
    data-parallel run every rank joins (FSDP2 gathers the full tensors); only rank 0 writes."""
    if run.out_dir is None:
        return
    path = os.path.join(run.out_dir, CHECKPOINT_NAME)
    cfg = run.cfg
    extra = {"domain_map": {str(k): v for k, v in run.data.domain_map.items()},
             "alter_config": cfg.to_dict() if cfg else None}
    kw = dict(method=run.method, step=step, history=st.history, fingerprint=st.fingerprint, extra=extra)
    ctx = run.dist
    if ctx is None:
        st.last_ckpt = save_checkpoint(run.out_dir, trainable=trainable_state(run), optimizer=st.optimizer, **kw)
        return
    extra["fsdp2"] = run.mode == "fsdp2"
    with ctx.full_params(run.model):
        tensors = {k: v.detach().cpu().clone() for k, v in trainable_state(run).items()}
    opt_state = ctx.optimizer_state(run.model, st.optimizer)
    if run.main:
        save_checkpoint(run.out_dir, trainable=tensors, optimizer=_Plain(opt_state), **kw)
    ctx.barrier()
    st.last_ckpt = path


def resume_run(run, st) -> None:
    """``resume=True``: load the checkpoint in ``run.out_dir`` into the model, the optimizer and
    the RNGs; ``st`` gets its history and step (a warning and step 0 without a checkpoint)."""
    out_dir = run.out_dir
    if out_dir is None:
        raise UnlearnError("unlearn: resume=True needs out_dir (where the checkpoint is)")
    ck = load_checkpoint(out_dir)
    if ck is None:
        warnings.warn(f"unlearn: resume requested but {out_dir} has no checkpoint; starting from step 0")
        return
    if ck["method"] != run.method or ck["fingerprint"] != st.fingerprint:
        raise UnlearnError(f"resume: the checkpoint in {out_dir} was written by a different run (method "
                           f"{ck['method']!r}, data/options fingerprint {ck['fingerprint']}); this run is "
                           f"{run.method!r} with fingerprint {st.fingerprint}")
    if ck.get("extra", {}).get("fsdp2", False) != (run.mode == "fsdp2"):
        raise UnlearnError(f"resume: the checkpoint in {out_dir} was written "
                           f"{'under' if ck.get('extra', {}).get('fsdp2') else 'without'} FSDP2 and this "
                           "run must be the same (the optimizer state layouts differ)")
    own = trainable_state(run)
    with torch.no_grad():
        for k, v in ck["trainable"].items():
            if k not in own or tuple(own[k].shape) != tuple(v.shape):
                raise UnlearnError(f"resume: checkpoint tensor {k!r} does not match the model")
            _load_into(own[k], v)
    if run.dist is not None:
        run.dist.load_optimizer_state(run.model, st.optimizer, ck["optimizer"])
    else:
        st.optimizer.load_state_dict(ck["optimizer"])
    set_rng_state(ck["rng"])
    st.history = list(ck["history"])
    st.start = int(ck["step"])
    st.last_ckpt = os.path.join(out_dir, CHECKPOINT_NAME)
