"""The fast decode loop: :func:`generate` (static KV cache, in-place step buffers, the decode-shaped
adapter path, the base stream as extra batch rows of the same GEMMs, CUDA graphs on GPU)."""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Sequence

import torch
import torch.nn as nn

from ..config import BASE_TOP_ROUTERS, INFERENCE_ENTROPY
from ..model.base_pass import base_entropy
from ..model.hf import backbone_of, lm_head_of, position_ids_from_mask
from ..model.inference import routing_from_next
from ..model.state import AlterState, add_plan_hook, get_state, is_patched
from ..ops.entropy import tsallis_entropy
from .adapters import DecodeAdapters
from .options import GenerateOptions, GenerationOutput, check_generate_args
from .native import compiled_decode_linear
from .prefill import q_route, stack_static_caches
from .sampling import eos_tensor, sample_next_token


@dataclasses.dataclass
class _Run:
    """One call of :func:`generate`: its options and what the prefill leaves for the decode steps."""

    model: nn.Module
    opts: GenerateOptions
    state: AlterState | None       # None: an unpatched model (plain decoding)
    mode: str                      # which entropies route the generated tokens
    device: torch.device
    bsz: int
    t_prompt: int
    q: float
    eos: torch.Tensor | None
    pad_token_id: int
    backbone: nn.Module
    head: nn.Module
    fastpath: DecodeAdapters | None = None
    plans_out: list | None = None
    cache: object = None           # the StaticCache of both streams
    slot_mask: torch.Tensor | None = None
    pos: torch.Tensor | None = None
    p_ent: torch.Tensor | None = None
    last_base: torch.Tensor | None = None
    used_graph: bool = False

    @property
    def patched(self) -> bool:
        return self.state is not None

    @property
    def two_stream(self) -> bool:
        return self.patched and self.mode == "base"    # base rows beside the adapted ones

    @property
    def rows(self) -> int:
        return 2 * self.bsz if self.two_stream else self.bsz

    def plans_now(self) -> dict:
        return {k: v.expert_weights.clone() for k, v in self.state.plans.items()} if self.patched else {}


def _start(model: nn.Module, input_ids: torch.Tensor, attention_mask, opts: GenerateOptions) -> _Run:
    """Resolve the options (entropy source, prefill, pad id, CUDA graphs) and check them."""
    state = get_state(model) if is_patched(model) else None
    mode = opts.entropy if opts.entropy is not None else (state.config.inference_entropy if state else "none")
    if mode not in INFERENCE_ENTROPY:
        raise ValueError(f"generate: entropy must be one of {INFERENCE_ENTROPY} or None, got {opts.entropy!r}")
    opts = dataclasses.replace(opts)
    if opts.prefill is None:
        opts.prefill = "high" if mode == "none" else "base"
    check_generate_args(input_ids, attention_mask, opts)
    device = input_ids.device
    eos = eos_tensor(opts.eos_token_id, device)
    pad = opts.pad_token_id if opts.pad_token_id is not None else (int(eos[0]) if eos is not None else 0)
    if opts.cuda_graph is None:
        opts.cuda_graph = device.type == "cuda" and opts.fast
    if opts.cuda_graph and device.type != "cuda":
        raise ValueError("generate: cuda_graph=True needs CUDA tensors")
    bsz, t_prompt = input_ids.shape
    return _Run(model=model, opts=opts, state=state, mode=mode, device=device, bsz=bsz, t_prompt=t_prompt,
                q=q_route(model, None), eos=eos, pad_token_id=pad, backbone=backbone_of(model),
                head=lm_head_of(model), plans_out=[] if opts.record_plans else None)


# --------------------------------------------------------------------------- prefill
def _prompt_routing(run: _Run, input_ids, attention_mask, prefill_mask, max_len: int):
    """Routing entropies of the prompt [B, T] (None unpatched) and, with two streams, the base
    stream's prefilled KV cache; sets ``run.last_base`` (base S_q at the last prompt position)."""
    from transformers import StaticCache
    prefill, bsz, t_prompt, device = run.opts.prefill, run.bsz, run.t_prompt, run.device
    if not run.patched:
        return None, None
    if isinstance(prefill, torch.Tensor) and not run.two_stream:
        return prefill.to(device=device, dtype=torch.float32), None
    if not (prefill == "base" or run.two_stream):
        return torch.full((bsz, t_prompt), math.inf, device=device), None
    # the base pass over the prompt: its entropies route the prompt, and with two streams its KV
    # cache becomes the base rows of the decode cache
    base_cache = StaticCache(config=run.model.config, max_cache_len=max_len) if run.two_stream else None
    nxt_ent = base_entropy(run.model, run.q, input_ids=input_ids, position_ids=run.pos, cache=base_cache,
                           attention_mask=prefill_mask if run.two_stream else attention_mask,
                           backbone=run.backbone, head=run.head).float()
    run.last_base = nxt_ent[:, -1]
    p_ent = routing_from_next(nxt_ent, attention_mask)
    if isinstance(prefill, torch.Tensor):
        p_ent = prefill.to(device=device, dtype=torch.float32)
    elif prefill == "high":
        p_ent = torch.full((bsz, t_prompt), math.inf, device=device)
    return p_ent, base_cache


def _prefill(run: _Run, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The prompt forward (many tokens: FLOP-bound, so through the generic path, i.e. the dispatched
    route / asym_lora kernels); installs the decode-shaped path after it. Returns logits [B, V]."""
    from transformers import StaticCache
    bsz, t_prompt, rows, device = run.bsz, run.t_prompt, run.rows, run.device
    max_len = t_prompt + run.opts.max_new_tokens
    run.pos = position_ids_from_mask(attention_mask)
    run.cache = StaticCache(config=run.model.config, max_cache_len=max_len)
    # 4D boolean mask over the static cache slots: a key is visible if it is a real token
    # already written (slots > current step stay False); updated in place per step.
    run.slot_mask = torch.zeros(rows, 1, 1, max_len, dtype=torch.bool, device=device)
    run.slot_mask[:, 0, 0, :t_prompt] = attention_mask.bool().repeat(rows // bsz, 1)
    causal = torch.ones(t_prompt, t_prompt, dtype=torch.bool, device=device).tril()
    prefill_mask = torch.zeros(bsz, 1, t_prompt, max_len, dtype=torch.bool, device=device)
    prefill_mask[:, :, :, :t_prompt] = causal[None, None] & attention_mask.bool()[:, None, None, :]
    run.p_ent, base_cache = _prompt_routing(run, input_ids, attention_mask, prefill_mask, max_len)
    if run.patched:
        run.state.entropy, run.state.labels = run.p_ent, None
    hidden = run.backbone(input_ids=input_ids, attention_mask=prefill_mask, position_ids=run.pos, cache=run.cache,
                          use_cache=True).last_hidden_state[:, -1]
    if run.patched:
        run.state.entropy = None
    logits = run.head(hidden).float()                                    # [B, V]
    if run.plans_out is not None:
        run.plans_out.append(run.plans_now())
    if run.two_stream:
        stack_static_caches(run.cache, base_cache)
    if run.fastpath is not None:
        run.fastpath.install()
    return logits


# --------------------------------------------------------------------------- decode
def _capture(step_fn):
    """Capture one decode step as a CUDA graph. Returns (graph, static logits) or (None, None).

    The step before the capture ran eagerly (warm-up: kernels chosen, workspaces allocated). The
    capture itself executes nothing, so the static cache and its position counter are untouched;
    every replay advances them exactly like an eager step.
    """
    try:
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = step_fn()
        return graph, logits
    except Exception as exc:  # anything that syncs or allocates outside the pool inside the step
        warnings.warn(f"alter_kernels.generate: CUDA graph capture failed ({type(exc).__name__}: {exc}); "
                      "decoding eagerly", RuntimeWarning, stacklevel=4)
        return None, None


class _Decoder:
    """The decode steps of one run: static step buffers, the step forward, its CUDA graph."""

    def __init__(self, run: _Run):
        self.run = run
        rows, device = run.rows, run.device
        self.tok_buf = torch.empty(rows, 1, dtype=torch.long, device=device)
        self.pos_buf = (run.pos[:, -1:] + 1).repeat(rows // run.bsz, 1)
        self.ent_buf = torch.empty(rows, 1, dtype=torch.float32, device=device)
        if run.patched:
            run.state.entropy = self.ent_buf        # explicit: the model's own inference rule stays out
        # CPU, 2-4 fp32 rows (the two streams of batch 1-2): the compiled decode_linear reads the LM
        # head once for all rows (ATen's GEMM costs 1.1-3x its 1-row GEMV there: bench/few_rows.py);
        # elsewhere the head's own forward
        w = getattr(run.head, "weight", None)
        self.head_fn = None
        if (device.type == "cpu" and 2 <= rows <= 4 and isinstance(run.head, nn.Linear)
                and w.dtype == torch.float32 and run.opts.native is not False):
            fn = compiled_decode_linear(run.opts.native)
            if fn is not None:
                b = run.head.bias
                self.head_fn = lambda h: fn(h, w.detach(), b.detach() if b is not None else None)
        self.cuda_graph = run.opts.cuda_graph
        self.graph = None
        self.graph_logits = None

    def step_eager(self) -> torch.Tensor:
        run = self.run
        if run.fastpath is not None:
            run.fastpath.set_entropy(self.ent_buf)
        hid = run.backbone(input_ids=self.tok_buf, attention_mask=run.slot_mask, position_ids=self.pos_buf,
                           cache=run.cache, use_cache=True).last_hidden_state[:, -1]
        if self.head_fn is not None:
            return self.head_fn(hid)
        return run.head(hid)                    # [rows, V]: one LM-head GEMM for both streams

    def step(self, step: int) -> torch.Tensor:
        """Logits [rows, V] of the step's forward: eager, or captured once then replayed."""
        if self.graph is not None:
            self.graph.replay()
            return self.graph_logits
        if self.cuda_graph and step >= 1 and not self.run.opts.record_plans:
            self.graph, self.graph_logits = _capture(self.step_eager)
            if self.graph is not None:
                self.run.used_graph = True
                self.graph.replay()
                return self.graph_logits
            self.cuda_graph = False
        return self.step_eager()

    def feed(self, nxt: torch.Tensor, ent: torch.Tensor, step: int) -> None:
        reps = self.run.rows // self.run.bsz
        self.tok_buf.copy_(nxt[:, None].repeat(reps, 1))
        self.ent_buf.copy_(ent[:, None].repeat(reps, 1))
        self.run.slot_mask[:, 0, 0, self.run.t_prompt + step] = True


def _next_entropy(run: _Run, step_logits: torch.Tensor, base_logits: torch.Tensor | None) -> torch.Tensor:
    """S_q of the distribution that produced the token sampled from ``step_logits``."""
    if not run.patched or run.mode == "none":
        return torch.full((run.bsz,), math.inf, device=run.device)
    return tsallis_entropy(base_logits if run.mode == "base" else step_logits, run.q)


def _decode(run: _Run, logits: torch.Tensor):
    """The decode steps. Returns (tokens [B, n_max], their entropies [B, n_max], n done)."""
    o, bsz, device = run.opts, run.bsz, run.device
    out_tokens = torch.empty(bsz, o.max_new_tokens, dtype=torch.long, device=device)
    out_ent = torch.empty(bsz, o.max_new_tokens, dtype=torch.float32, device=device)
    dec = _Decoder(run)
    finished = torch.zeros(bsz, dtype=torch.bool, device=device)
    n_done = 0
    # the entropy of the distribution that produces a token routes it when it is fed back
    ent = run.last_base if (run.patched and run.mode == "base") else _next_entropy(run, logits, None)
    for step in range(o.max_new_tokens):
        nxt = sample_next_token(logits, o.do_sample, o.temperature, o.top_k, o.top_p, o.generator)
        if run.eos is not None:
            nxt = nxt.masked_fill(finished, run.pad_token_id)
            finished = finished | torch.isin(nxt, run.eos)
        out_tokens[:, step] = nxt
        out_ent[:, step] = ent
        n_done = step + 1
        if step == o.max_new_tokens - 1 or (run.eos is not None and bool(finished.all())):
            break
        dec.feed(nxt, ent, step)
        if run.plans_out is not None and run.fastpath is not None:
            run.fastpath.records.append({})
        out_all = dec.step(step)
        logits = out_all[:bsz].float()
        ent = _next_entropy(run, logits, out_all[bsz:] if run.two_stream else None)
        dec.pos_buf += 1
        if run.plans_out is not None:
            run.plans_out.append(run.fastpath.records[-1] if run.fastpath is not None else
                                 {k: v[:bsz] for k, v in run.plans_now().items()})
    return out_tokens, out_ent, n_done


def _high_fraction(run: _Run, out_tokens: torch.Tensor, ent_done: torch.Tensor, n_done: int) -> float:
    """Share of high-entropy inputs among the decode steps' live rows (computed once, at the end)."""
    if not run.patched or n_done <= 1:
        return float("nan")
    fed = ent_done[:, :n_done - 1]
    live = torch.ones_like(fed, dtype=torch.bool)
    if run.eos is not None:
        hit = torch.isin(out_tokens[:, :n_done - 1], run.eos).long().cumsum(1)
        live = torch.cat([torch.ones_like(live[:, :1]), hit[:, :-1] == 0], 1)
    real_count = int(live.sum())
    high_count = (~(fed <= run.state.config.threshold) & live).sum()
    return float(high_count) / real_count if real_count else float("nan")


def _zero_base_rows(run: _Run):
    """Generic path with two streams: the base rows (after the adapted ones) get no adapter."""
    def hook(plan, layer_name):
        if plan.num_tokens == run.rows:
            plan.expert_weights[run.bsz:] = 0
    return hook


def generate_with(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  opts: GenerateOptions):
    """:func:`generate` with its keyword arguments in a :class:`GenerateOptions`."""
    if is_patched(model) and get_state(model).config.router_input in BASE_TOP_ROUTERS:
        return _generate_hf(model, input_ids, attention_mask, opts)
    run = _start(model, input_ids, attention_mask, opts)
    o, state = run.opts, run.state
    input_ids = input_ids.long()
    attention_mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).long()
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    was_training = model.training
    prev_inputs = (state.entropy, state.labels) if run.patched else None
    plan_hook = None
    t0 = time.perf_counter()
    try:
        model.eval()
        if run.patched and o.fast:
            run.fastpath = DecodeAdapters(model, record=o.record_plans, native=o.native)
            if run.two_stream:
                run.fastpath.adapted_rows = run.bsz
        elif run.two_stream:
            plan_hook = add_plan_hook(model, _zero_base_rows(run))
        with torch.inference_mode():
            logits = _prefill(run, input_ids, attention_mask)
            sync()
            t1 = time.perf_counter()
            out_tokens, out_ent, n_done = _decode(run, logits)
            sequences = torch.cat([input_ids, out_tokens[:, :n_done]], dim=1)
            ent_done = out_ent[:, :n_done].clone()
            high = _high_fraction(run, out_tokens, ent_done, n_done)
            sync()
            t2 = time.perf_counter()
    finally:
        if run.fastpath is not None:
            run.fastpath.remove()
        if plan_hook is not None:
            plan_hook.remove()
        if run.patched:
            state.entropy, state.labels = prev_inputs
        if was_training:
            model.train()
    if not o.return_dict:
        return sequences
    return GenerationOutput(sequences=sequences, prompt_entropy=run.p_ent, entropy=ent_done, high_fraction=high,
                            prefill_s=t1 - t0, decode_s=t2 - t1, plans=run.plans_out, cuda_graph=run.used_graph,
                            inference_entropy=run.mode if run.patched else None)


def _generate_hf(model: nn.Module, input_ids: torch.Tensor, attention_mask, opts: GenerateOptions) -> torch.Tensor:
    """The answer-key router routes token t by the base model's next token at t, which the two-stream
    loop (base rows beside the adapted ones, layer by layer) does not have before the adapted step;
    HF ``generate`` through the inference rule does (a base step, then the adapted one)."""
    unsupported = [name for name, bad in (("return_dict", opts.return_dict), ("record_plans", opts.record_plans),
                                          ("prefill", opts.prefill not in (None, "base")),
                                          ("entropy", opts.entropy not in (None, "base")),
                                          ("generator", opts.generator is not None)) if bad]
    if unsupported:
        raise NotImplementedError(f"generate: {', '.join(unsupported)} not supported with a router that reads the base "
                                  f"model's next tokens (router_input in {BASE_TOP_ROUTERS}) "
                                  "(it decodes through HF generate and the inference rule)")
    check_generate_args(input_ids, attention_mask, dataclasses.replace(opts, prefill="base"))
    kw = {"max_new_tokens": opts.max_new_tokens, "do_sample": opts.do_sample, "pad_token_id": opts.pad_token_id,
          "eos_token_id": opts.eos_token_id}
    if opts.do_sample:
        kw.update(temperature=opts.temperature, top_k=opts.top_k or 0, top_p=opts.top_p or 1.0)
    with torch.inference_mode():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)


def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int = 32,
             attention_mask: torch.Tensor | None = None, *, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             prefill: str | torch.Tensor | None = None, entropy: str | None = None, fast: bool = True,
             native: bool | None = None, cuda_graph: bool | None = None,
             record_plans: bool = False, return_dict: bool = False):
    """Gated (entropy-routed) generation with a static KV cache. Returns [B, T + n] token ids.

    model: a Hugging Face causal LM (Llama family), patched with ALTER or not (unpatched: plain
        decoding with the same loop, for comparisons).
    input_ids [B, T], attention_mask [B, T] (left padding only; None: no padding).
    entropy: which entropies route the generated tokens: "base", "self" or "none" (default: the
        model's ``config.inference_entropy``, the rule every other forward of the model follows).
        "base": the base model's next-token distribution, from a base stream that runs beside the
        adapted one as extra batch rows through the same frozen GEMMs (weights read once per step,
        its own KV cache rows; the adapters only touch the adapted rows); its logits come out of
        the same LM-head GEMM and only their entropy is kept. "self": S_q of the adapted model's
        raw logits that produced the token (before temperature / top-k / top-p). "none": every
        token high entropy.
    prefill: how the prompt tokens are routed: "base" (base-model entropies of the prompt, from a
        base pass over the prompt with adapters off; the default unless entropy is "none"),
        "high" (every prompt token high entropy) or a [B, T] tensor of routing entropies.
    do_sample, temperature, top_k, top_p, generator: sampling (greedy when do_sample is False).
    eos_token_id: int or list; a finished row gets pad_token_id (default: the first eos id)
        afterwards; the loop stops when every row has finished.
    fast: use the decode-shaped ALTER path (see generation.adapters.DecodeAdapters); False: the generic AlterLinear
        path through the dispatched ``asym_lora`` and ``route`` ops.
    native: with fast=True on the CPU, use the extension's decode ops (``decode_route``,
        ``decode_group_linear``) for forwards of at most 16 tokens when the model and adapter are
        both fp32 (or fp64): None (default) when the extension has them, False never, True
        require them.
    cuda_graph: capture the decode step as a CUDA graph and replay it (default: on for CUDA
        tensors with fast=True). Falls back to eager (with a warning) if the capture fails.
    record_plans: keep every forward's expert weights per layer (tests, analysis).
    return_dict: return a :class:`GenerationOutput` instead of the sequences.
    """
    opts = GenerateOptions(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                           top_p=top_p, generator=generator, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                           prefill=prefill, entropy=entropy, fast=fast, native=native, cuda_graph=cuda_graph,
                           record_plans=record_plans, return_dict=return_dict)
    return generate_with(model, input_ids, attention_mask, opts)
