"""THE registration table: every implementation of every op, in one place.

Columns: op, backend, function, devices it runs on, input dtypes it takes (None: all), priority
(an int, or a dict by device type). ``pick`` takes the highest priority among the rows that
support the input's device and dtype. Kernels that accumulate in fp32 list FP_KERNEL: float64
input then goes to the reference (or, for asym_lora, the torch implementation). Triton rows run
on the CPU only under TRITON_INTERPRET=1 and only when forced (priority -10 there).
"""
from __future__ import annotations

import torch

from . import registry
from .asym_lora import NATIVE_IMPL, TORCH_IMPL, make_backend
from .entropy import lm_head_native, lm_head_triton, tsallis_native, tsallis_triton
from .lm_head_losses import kl_native, kl_triton, token_losses_native, token_losses_triton
from .native import on_native, on_triton
from .reference.asym_lora import asym_lora_ref
from .reference.decode import decode_group_linear_ref, decode_linear_ref, decode_route_ref
from .reference.entropy import lm_head_entropy_ref, tsallis_entropy_ref
from .reference.lm_head_losses import lm_head_kl_ref, lm_head_token_losses_ref
from .reference.routing import route_plan_ref, route_ref
from .routing import (decode_group_linear_native, decode_linear_native, decode_route_native, route_native,
                      route_plan_native)

FP_KERNEL = (torch.float32, torch.bfloat16, torch.float16)
TRITON = {"cuda": 20, "cpu": -10, "default": -10}
CPP = {"cpu": 10, "default": -1}
CUDA = {"cuda": 15, "default": -1}


def asym_lora_triton(*args, **kwargs):
    from .triton.asym_lora import TRITON_IMPL
    return make_backend(TRITON_IMPL)(*args, **kwargs)


def _asym_on(dev: str):
    return on_native("asym_lora_fwd", "asym_lora_bwd", device_type=dev)


def _losses_on(prefix: str, dev: str):
    return on_native(prefix + "_fwd", prefix + "_bwd", device_type=dev)


TABLE = [
    # op                 backend       function                      devices                                     dtypes    priority
    ("asym_lora",        "reference",  asym_lora_ref,                None,                                       None,     0),
    ("asym_lora",        "torch",      make_backend(TORCH_IMPL),     None,                                       None,     5),
    ("asym_lora",        "cpp",        make_backend(NATIVE_IMPL),    _asym_on("cpu"),                            None,     CPP),
    ("asym_lora",        "cuda",       make_backend(NATIVE_IMPL),    _asym_on("cuda"),                           None,     CUDA),
    ("asym_lora",        "triton",     asym_lora_triton,             on_triton,                                  FP_KERNEL, TRITON),
    ("tsallis_entropy",  "reference",  tsallis_entropy_ref,          None,                                       None,     0),
    ("tsallis_entropy",  "cpp",        tsallis_native,               on_native("tsallis_entropy_fwd", device_type="cpu"),  FP_KERNEL, CPP),
    ("tsallis_entropy",  "cuda",       tsallis_native,               on_native("tsallis_entropy_fwd", device_type="cuda"), FP_KERNEL, CUDA),
    ("tsallis_entropy",  "triton",     tsallis_triton,               on_triton,                                  FP_KERNEL, TRITON),
    ("lm_head_entropy",  "reference",  lm_head_entropy_ref,          None,                                       None,     0),
    ("lm_head_entropy",  "cpp",        lm_head_native,               on_native("lm_head_entropy_fwd", device_type="cpu"),  FP_KERNEL, CPP),
    ("lm_head_entropy",  "cuda",       lm_head_native,               on_native("lm_head_entropy_fwd", device_type="cuda"), FP_KERNEL, CUDA),
    ("lm_head_entropy",  "triton",     lm_head_triton,               on_triton,                                  FP_KERNEL, TRITON),
    ("lm_head_token_losses", "reference", lm_head_token_losses_ref,  None,                                    None,     0),
    ("lm_head_token_losses", "cpp",    token_losses_native,          _losses_on("lm_head_losses", "cpu"),        FP_KERNEL, CPP),
    ("lm_head_token_losses", "cuda",   token_losses_native,          _losses_on("lm_head_losses", "cuda"),       FP_KERNEL, CUDA),
    ("lm_head_token_losses", "triton", token_losses_triton,          on_triton,                                  FP_KERNEL, TRITON),
    ("lm_head_kl",       "reference",  lm_head_kl_ref,               None,                                       None,     0),
    ("lm_head_kl",       "cpp",        kl_native,                    _losses_on("lm_head_kl", "cpu"),            FP_KERNEL, CPP),
    ("lm_head_kl",       "cuda",       kl_native,                    _losses_on("lm_head_kl", "cuda"),           FP_KERNEL, CUDA),
    ("lm_head_kl",       "triton",     kl_triton,                    on_triton,                                  FP_KERNEL, TRITON),
    ("route",            "reference",  route_ref,                    None,                                       None,     0),
    ("route",            "cpp",        route_native,                 on_native("route_plan", device_type="cpu"), None,     CPP),
    ("route_plan",       "reference",  route_plan_ref,               None,                                       None,     0),
    ("route_plan",       "cpp",        route_plan_native,            on_native("route_plan", device_type="cpu"), None,     CPP),
    ("decode_route",     "reference",  decode_route_ref,             None,                                       None,     0),
    ("decode_route",     "cpp",        decode_route_native,          on_native("decode_route", device_type="cpu"), None,   CPP),
    ("decode_group_linear", "reference", decode_group_linear_ref,    None,                                       None,     0),
    ("decode_group_linear", "cpp",     decode_group_linear_native,   on_native("decode_group_linear", device_type="cpu"),
     (torch.float32, torch.float64), CPP),
    ("decode_linear",    "reference",  decode_linear_ref,            None,                                       None,     0),
    ("decode_linear",    "cpp",        decode_linear_native,         on_native("decode_linear", device_type="cpu"),
     (torch.float32, torch.float64), CPP),
]


def register_all() -> None:
    for op, backend, fn, devices, dtypes, priority in TABLE:
        registry.register(op, backend, fn, devices, dtypes, priority)
