"""Adapter files: ``adapter_config.json`` (the AlterConfig plus metadata) and
``adapter_model.safetensors`` (A, B and router tensors keyed by their path in the model).

Files are written with the package's atomic writer (:func:`alter_kernels.common.fsio.atomic_write`: a
new temp file in the target directory, fsync, ``os.replace``), so a crash never leaves a
half-written adapter file behind; a target directory or file that is a symbolic link is refused.

Loading is strict: the config must carry every field that changes what the patched model
computes (``REQUIRED_FIELDS``; a missing one is named, never defaulted), and every tensor must
be finite. Fields added after the format's first release are the exception, so that older
adapters keep loading: a missing ``inference_entropy`` means "base" (the rule they were trained
for; docs/decoding.md).
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..common.fsio import OutputError, atomic_write, ensure_dir
from ..config import AlterConfig
from ..version import __version__
from .params import adapter_state_dict
from .state import get_state

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "alter_kernels.adapter"
FORMAT_VERSION = 1


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
    try:
        atomic_write(os.path.join(path, WEIGHTS_NAME), save(tensors, metadata={"format": "pt"}))
        atomic_write(os.path.join(path, CONFIG_NAME), json.dumps(meta, indent=2, sort_keys=True) + "\n")
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "alter_config" not in meta:
        raise AdapterError(f"load_adapter: {cfg_path} is not an alter_kernels adapter config "
                           f"(expected format {FORMAT!r} with an 'alter_config' entry)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise AdapterError(f"load_adapter: {cfg_path} has format_version {meta['format_version']}; this "
                           f"alter_kernels reads up to {FORMAT_VERSION}")
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


# fields that change tensor shapes or the computation; a mismatch cannot be loaded
_MUST_MATCH = ("rank", "alpha", "num_forget_experts", "target_modules")


def load_adapter(model: nn.Module, path: str | os.PathLike, strict_config: bool = True) -> nn.Module:
    """Load an adapter directory onto a model patched with a matching config.

    Every tensor is checked (name and shape) before any is copied, so a mismatch leaves the
    model unchanged. With strict_config, the routing hyper-parameters must match too.
    """
    state = get_state(model)
    path = os.fspath(path)
    cfg, _ = read_adapter_config(path)
    fields = _MUST_MATCH + (() if not strict_config else
                            ("q_route", "threshold", "top_k", "tau_high", "tau_low", "inference_entropy"))
    for name in fields:
        mine, theirs = getattr(state.config, name), getattr(cfg, name)
        if mine != theirs:
            raise AdapterError(f"load_adapter: adapter config field {name!r} is {theirs!r} in {path} but the "
                               f"model is patched with {mine!r}")
    wpath = os.path.join(path, WEIGHTS_NAME)
    if not os.path.isfile(wpath):
        raise AdapterError(f"load_adapter: {wpath} not found")
    try:
        tensors = load_file(wpath)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"load_adapter: {wpath} is truncated or corrupted ({type(exc).__name__}: {exc})") from exc
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
        if not t.dtype.is_floating_point:
            raise AdapterError(f"load_adapter: tensor {name!r} has dtype {t.dtype}, expected a float dtype")
        if not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise AdapterError(f"load_adapter: tensor {name!r} in {wpath} holds {n_bad} non-finite value(s) "
                               "(NaN or inf); the adapter is damaged or comes from a diverged run")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(tensors[name].to(device=p.device, dtype=p.dtype))
    return model
