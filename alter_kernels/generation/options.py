"""The options and the output of :func:`alter_kernels.generate`, and the checks of its arguments."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

PREFILL_MODES = ("base", "high")


@dataclasses.dataclass
class GenerateOptions:
    """The keyword arguments of :func:`alter_kernels.generate` (documented there), in one record."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None
    eos_token_id: int | Sequence[int] | None = None
    pad_token_id: int | None = None
    prefill: str | torch.Tensor | None = None
    entropy: str | None = None
    fast: bool = True
    native: bool | None = None
    cuda_graph: bool | None = None
    record_plans: bool = False
    return_dict: bool = False


@dataclasses.dataclass
class GenerationOutput:
    """What :func:`generate` returns with ``return_dict=True``.

    sequences         [B, T + n] prompt (as given, left padding kept) and the n generated tokens
    prompt_entropy    [B, T] routing entropies of the prompt tokens (None for unpatched models)
    entropy           [B, n] entropy S_q of the raw distribution that produced each generated token
                      (= the routing entropy of that token when it is fed back)
    high_fraction     share of high-entropy routed tokens among the decode steps' inputs (real rows)
    prefill_s         wall seconds of the prefill (prompt entropies + the prompt forward + first logits)
    decode_s          wall seconds of the decode loop (synchronised on CUDA)
    plans             with record_plans=True: per forward (prefill first, then one per decode
                      step) a dict layer name -> expert weights [B*T_step, E]
    cuda_graph        whether the decode steps ran as a replayed CUDA graph
    inference_entropy which entropies routed the generated tokens ("base", "self", "none")
    """

    sequences: torch.Tensor
    prompt_entropy: torch.Tensor | None
    entropy: torch.Tensor
    high_fraction: float
    prefill_s: float = 0.0
    decode_s: float = 0.0
    plans: list | None = None
    cuda_graph: bool = False
    inference_entropy: str | None = None


def check_generate_args(input_ids, attention_mask, opts: GenerateOptions) -> None:
    """ValueError / TypeError naming the first bad argument of generate (``opts.prefill`` resolved)."""
    max_new_tokens, prefill, temperature, top_k, top_p = (opts.max_new_tokens, opts.prefill, opts.temperature,
                                                          opts.top_k, opts.top_p)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (
            torch.long, torch.int32, torch.int64):
        raise TypeError("generate: input_ids must be an integer tensor [B, T], got "
                        f"{getattr(input_ids, 'shape', type(input_ids).__name__)} "
                        f"{getattr(input_ids, 'dtype', '')}")
    if input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"generate: input_ids must hold at least one prompt token per row, got shape "
                         f"{tuple(input_ids.shape)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if attention_mask is not None:
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"generate: attention_mask must have input_ids' shape {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        m = attention_mask.bool()
        if bool((~m[:, -1]).any()):
            raise ValueError("generate: attention_mask has padding at the end of a row; pad prompts on the left")
        if bool((m[:, :-1] & ~m[:, 1:]).any()):
            raise ValueError("generate: attention_mask must be left padding only (0...0 1...1 per row)")
    if isinstance(prefill, str):
        if prefill not in PREFILL_MODES:
            raise ValueError(f"generate: prefill must be one of {PREFILL_MODES} or a [B, T] entropy tensor, "
                             f"got {prefill!r}")
    elif isinstance(prefill, torch.Tensor):
        if tuple(prefill.shape) != tuple(input_ids.shape):
            raise ValueError(f"generate: a prefill entropy tensor must be [B, T] = {tuple(input_ids.shape)}, "
                             f"got {tuple(prefill.shape)}")
    else:
        raise TypeError(f"generate: prefill must be 'base', 'high' or a tensor, got {type(prefill).__name__}")
    if not (temperature > 0):
        raise ValueError(f"generate: temperature must be > 0, got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"generate: top_k must be an int >= 0 or None, got {top_k!r}")
    if top_p is not None and not (0 < top_p <= 1):
        raise ValueError(f"generate: top_p must be in (0, 1], got {top_p!r}")
