"""Adapter files: ``adapter_config.json`` (the AlterConfig plus metadata) and
``adapter_model.safetensors`` (A, B and router tensors keyed by their path in the model).

Files are written with the package's atomic writer (:func:`alter_kernels.common.fsio.atomic_write`: a
new temp file in the target directory, fsync, ``os.replace``), so a crash never leaves a
half-written adapter file behind; a target directory or file that is a symbolic link is refused.
The two files are one save: the config records the sha256 of the weights file (``weights_sha256``)
and :func:`load_adapter` checks it against the bytes it reads, so a config is never paired with
the weights of another save (a kill -9 between the two writes, a reader during a save). Configs
written before the digest existed still load.

Loading is strict: the config must carry every field that changes what the patched model
computes (``REQUIRED_FIELDS``; a missing one is named, never defaulted), and every tensor must
be finite. Fields added after the format's first release are the exception, so that older
adapters keep loading: a missing ``inference_entropy`` means "base" (the rule they were trained
for; docs/decoding.md).
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load, save

from ..common.fsio import OutputError, atomic_write, ensure_dir
from ..config import AlterConfig
from ..version import __version__
from .params import adapter_state_dict
from .state import get_state

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "alter_kernels.adapter"
FORMAT_VERSION = 1
# sha256 of the weights file, recorded in the config by save_adapter: the two files of a directory
# are one save (load_adapter refuses a config whose weights were replaced by another save)
DIGEST_KEY = "weights_sha256"
# the largest |value| load_adapter accepts in an adapter tensor: trained A, B and router weights
# are O(1); a B of 1e6 already moves a layer's output by ~1e6 per unit of activation, and values
# near fp32's 3.4e38 overflow to inf in the first matmul
MAX_ABS_VALUE = 1e6


class AdapterError(ValueError):
    """An adapter directory does not match the model, or is damaged."""


# AlterConfig fields that change the patched model's function: an adapter config must state them
REQUIRED_FIELDS = ("rank", "alpha", "num_forget_experts", "q_route", "threshold", "top_k", "tau_high",
                   "tau_low", "target_modules", "adapter_dtype")


def _base_model_name(model: nn.Module) -> str | None:
    """The base model as ``from_pretrained`` was given it: a local directory becomes an absolute
    path (so the adapter can be found from any working directory), a hub name stays as it is."""
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    if isinstance(name, str) and name and os.path.isdir(name):
        return os.path.abspath(name)
    return name or None


def save_adapter(model: nn.Module, path: str | os.PathLike, extra: dict | None = None) -> str:
    """Write the adapter of a patched model to directory ``path`` (created if needed)."""
    state = get_state(model)
    path = os.fspath(path)
    try:
        ensure_dir(path)
    except OutputError as exc:
        raise AdapterError(f"save_adapter: {exc}") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter_state_dict(model).items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "alter_kernels_version": __version__,
        "base_model": _base_model_name(model),
        "base_model_class": type(model).__name__,
        "alter_config": state.config.to_dict(),
        "modules": [p for p, _ in state.replaced],
        "routers": list(state.routers),
    }
    if extra:
        meta["extra"] = extra
    blob = save(tensors, metadata={"format": "pt"})
    meta[DIGEST_KEY] = hashlib.sha256(blob).hexdigest()
    try:
        # the config (naming the weights' digest) first, then the weights: at every instant (a kill -9
        # included) the directory holds one complete save, or a new config that load_adapter refuses
        # with the old weights (also when the old config is a legacy one without a digest)
        atomic_write(os.path.join(path, CONFIG_NAME), json.dumps(meta, indent=2, sort_keys=True) + "\n")
        atomic_write(os.path.join(path, WEIGHTS_NAME), blob)
    except OutputError as exc:
        raise AdapterError(f"save_adapter: {exc}") from None
    return path


def read_adapter_config(path: str | os.PathLike) -> tuple[AlterConfig, dict]:
    cfg_path = os.path.join(os.fspath(path), CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise AdapterError(f"load_adapter: {cfg_path} not found; expected an adapter directory written by save_adapter")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterError(f"load_adapter: {cfg_path} is not valid JSON ({exc})") from exc
    except RecursionError:
        raise AdapterError(f"load_adapter: {cfg_path} is nested too deeply to be an adapter config") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "alter_config" not in meta:
        raise AdapterError(f"load_adapter: {cfg_path} is not an alter_kernels adapter config "
                           f"(expected format {FORMAT!r} with an 'alter_config' entry)")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise AdapterError(f"load_adapter: {cfg_path}: 'format_version' must be an int >= 0, got {version!r}")
    if version > FORMAT_VERSION:
        raise AdapterError(f"load_adapter: {cfg_path} has format_version {version}; this "
                           f"alter_kernels reads up to {FORMAT_VERSION}")
    for key, kinds, want in (("base_model", (str, type(None)), "a string or null"),
                             ("extra", (dict, type(None)), "an object or null")):
        if not isinstance(meta.get(key), kinds):
            raise AdapterError(f"load_adapter: {cfg_path}: {key!r} must be {want}, got {meta.get(key)!r}")
    digest = meta.get(DIGEST_KEY)
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
        raise AdapterError(f"load_adapter: {cfg_path}: {DIGEST_KEY!r} must be a sha256 hex string, got {digest!r}")
    fields = meta["alter_config"]
    if not isinstance(fields, dict):
        raise AdapterError(f"load_adapter: 'alter_config' in {cfg_path} must be an object, got "
                           f"{type(fields).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in fields]
    if missing:
        raise AdapterError(f"load_adapter: alter_config in {cfg_path} lacks field(s) {missing}; they change what the "
                           "adapted model computes, so they are never defaulted (write the adapter with "
                           "save_adapter, or add the fields)")
    try:
        cfg = AlterConfig.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise AdapterError(f"load_adapter: bad alter_config in {cfg_path}: {exc}") from exc
    return cfg, meta


def read_adapter_weights(path: str | os.PathLike, meta: dict) -> tuple[dict, str]:
    """The tensors of ``path``'s weights file and its path. The file is read once; when ``meta``
    (its config) records the weights' digest, the bytes read must match it, so a config is never
    paired with the weights of another save (a save in progress, or one killed between its two
    files). Configs without a digest (written before it existed) load as before."""
    wpath = os.path.join(os.fspath(path), WEIGHTS_NAME)
    if not os.path.isfile(wpath):
        raise AdapterError(f"load_adapter: {wpath} not found")
    try:
        with open(wpath, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise AdapterError(f"load_adapter: cannot read {wpath} ({exc.strerror or exc})") from None
    want = meta.get(DIGEST_KEY)
    if want is not None and hashlib.sha256(blob).hexdigest() != want:
        raise AdapterError(f"load_adapter: {wpath} does not match the sha256 that {CONFIG_NAME} records: it is "
                           "truncated or corrupted, or comes from another save (a save in progress or interrupted); "
                           "save the adapter again")
    try:
        tensors = load(blob)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"load_adapter: {wpath} is truncated or corrupted ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return tensors, wpath


def check_tensor(name: str, t: torch.Tensor, wpath: str, prefix: str = "") -> None:
    """AdapterError unless ``t`` (tensor ``name`` of file ``wpath``) is a float tensor whose values
    are finite and at most MAX_ABS_VALUE in magnitude."""
    if not t.dtype.is_floating_point:
        raise AdapterError(f"{prefix}tensor {name!r} has dtype {t.dtype}, expected a float dtype")
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise AdapterError(f"{prefix}tensor {name!r} in {wpath} holds {n_bad} non-finite value(s) "
                           "(NaN or inf); the adapter is damaged or comes from a diverged run")
    if t.numel() and float(t.abs().max()) > MAX_ABS_VALUE:
        raise AdapterError(f"{prefix}tensor {name!r} in {wpath} holds a value of magnitude "
                           f"{float(t.abs().max()):.3g} (> {MAX_ABS_VALUE:g}); the adapter is damaged or comes "
                           "from a diverged run (its outputs would overflow to inf / NaN)")


# fields that change tensor shapes or the computation; a mismatch cannot be loaded
_MUST_MATCH = ("rank", "alpha", "num_forget_experts", "target_modules")


def load_adapter(model: nn.Module, path: str | os.PathLike, strict_config: bool = True) -> nn.Module:
    """Load an adapter directory onto a model patched with a matching config.

    Every tensor is checked (name and shape) before any is copied, so a mismatch leaves the
    model unchanged. With strict_config, the routing hyper-parameters must match too.
    """
    state = get_state(model)
    path = os.fspath(path)
    cfg, meta = read_adapter_config(path)
    fields = _MUST_MATCH + (() if not strict_config else
                            ("q_route", "threshold", "top_k", "tau_high", "tau_low", "inference_entropy"))
    for name in fields:
        mine, theirs = getattr(state.config, name), getattr(cfg, name)
        if mine != theirs:
            raise AdapterError(f"load_adapter: adapter config field {name!r} is {theirs!r} in {path} but the "
                               f"model is patched with {mine!r}")
    tensors, wpath = read_adapter_weights(path, meta)
    own = adapter_state_dict(model)
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise AdapterError(f"load_adapter: tensors in {wpath} do not match the patched model: "
                           f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for name, p in own.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(p.shape):
            raise AdapterError(f"load_adapter: tensor {name!r} has shape {tuple(t.shape)} in {wpath}, "
                               f"expected {tuple(p.shape)}")
        check_tensor(name, t, wpath, "load_adapter: ")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(tensors[name].to(device=p.device, dtype=p.dtype))
    return model
