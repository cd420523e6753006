"""Interop with PEFT: start ALTER from an existing PEFT LoRA adapter of the same rank and targets.

Users who already fine-tuned with LoRA keep what they learned: ALTER's shared ``A`` takes the
LoRA ``A`` and the retain expert ``B_0`` takes the LoRA ``B`` (rescaled when the two scales
alpha/r differ); the forget experts and routers are left as they are. Since the retain expert
is the only one on for retain traffic, the patched model then computes what the PEFT model
computes wherever the router picks B_0 (and everywhere while the forget experts are zero).
"""
from __future__ import annotations

import json
import math
import os

import torch
import torch.nn as nn

from .io import AdapterError
from .state import get_state

_PREFIX = "base_model.model."


def _read_peft(source, adapter_name: str):
    """(config dict, {module path: (lora_A [r, d_in], lora_B [d_out, r])}) from a dir or a PeftModel."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        cfg_path = os.path.join(path, "adapter_config.json")
        w_path = os.path.join(path, "adapter_model.safetensors")
        for p in (cfg_path, w_path):
            if not os.path.isfile(p):
                raise AdapterError(f"init_from_peft: {p} not found; expected a PEFT LoRA adapter directory "
                                   "(adapter_config.json + adapter_model.safetensors)")
        with open(cfg_path) as f:
            cfg = json.load(f)
        from safetensors.torch import load_file
        try:
            sd = load_file(w_path)
        except Exception as exc:
            raise AdapterError(f"init_from_peft: {w_path} is truncated or corrupted ({exc})") from exc
    else:
        try:
            from peft.utils import get_peft_model_state_dict
        except ImportError as exc:
            raise ImportError("init_from_peft: reading a live PeftModel needs the `peft` package") from exc
        if not hasattr(source, "peft_config"):
            raise TypeError(f"init_from_peft: source must be a PEFT adapter directory or a PeftModel, "
                            f"got {type(source).__name__}")
        cfg = source.peft_config[adapter_name].to_dict()
        sd = get_peft_model_state_dict(source, adapter_name=adapter_name)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                mod = key.split(marker)[0]
                mod = mod[len(_PREFIX):] if mod.startswith(_PREFIX) else mod
                pairs.setdefault(mod, {})[part] = t
    return cfg, {m: (p.get("lora_A"), p.get("lora_B")) for m, p in pairs.items()}


def init_from_peft(model: nn.Module, source, adapter_name: str = "default", strict: bool = True) -> nn.Module:
    """Initialise a patched model's A and retain experts from a PEFT LoRA adapter.

    source: a PEFT adapter directory (``save_pretrained`` output) or a live ``PeftModel``.
    strict: every patched module must have a LoRA counterpart (and vice versa).
    """
    state = get_state(model)
    cfg, pairs = _read_peft(source, adapter_name)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"init_from_peft: peft_type is {cfg.get('peft_type')!r}, expected 'LORA'")
    for flag in ("use_dora", "fan_in_fan_out"):
        if cfg.get(flag):
            raise AdapterError(f"init_from_peft: LoRA adapters with {flag}=True are not supported")
    for pattern in ("rank_pattern", "alpha_pattern"):
        if cfg.get(pattern):
            raise AdapterError(f"init_from_peft: per-module {pattern} is not supported (got {cfg[pattern]})")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    if r != state.config.rank:
        raise AdapterError(f"init_from_peft: the PEFT adapter has rank r={r}, the model is patched with "
                           f"rank={state.config.rank}; patch with AlterConfig(rank={r})")
    peft_scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    ratio = peft_scale / state.config.scale
    ours = {path: alin for path, alin in state.replaced}
    missing = sorted(set(ours) - set(pairs))
    extra = sorted(set(pairs) - set(ours))
    if strict and (missing or extra):
        raise AdapterError(f"init_from_peft: targets differ: patched modules without LoRA weights "
                           f"{missing[:4]}, LoRA weights without a patched module {extra[:4]}")
    todo = []
    for path in sorted(set(ours) & set(pairs)):
        a, b = pairs[path]
        alin = ours[path]
        if a is None or b is None:
            raise AdapterError(f"init_from_peft: module {path!r} has only one of lora_A / lora_B")
        if tuple(a.shape) != tuple(alin.lora_A.shape):
            raise AdapterError(f"init_from_peft: {path}.lora_A has shape {tuple(a.shape)}, expected "
                               f"{tuple(alin.lora_A.shape)}")
        if tuple(b.shape) != tuple(alin.lora_B.shape[1:]):
            raise AdapterError(f"init_from_peft: {path}.lora_B has shape {tuple(b.shape)}, expected "
                               f"{tuple(alin.lora_B.shape[1:])}")
        todo.append((alin, a, b))
    with torch.no_grad():
        for alin, a, b in todo:
            alin.lora_A.copy_(a.to(alin.lora_A))
            alin.lora_B[0].copy_(b.to(alin.lora_B) * ratio)
    return model
