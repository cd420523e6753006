"""ALTER's inference rule: a patched model with no routing inputs routes by entropies it computes itself.

ALTER_SPEC section 2: token t is routed by ``e_t = S_q(softmax(z_{t-1}))``, the entropy of the
distribution that predicted it, ``+inf`` at the first real token. Training takes ``z`` from the
frozen base model (adapters off); so does every forward of a patched model that is given no
routing inputs, whoever calls it (a plain ``model(ids)``, HF ``generate`` with any decoding
strategy, ``pipeline``, an evaluation harness). ``AlterConfig.inference_entropy`` picks the source:

- ``"base"`` (default): a forward that starts a sequence runs the backbone once more with the
  adapters off and takes ``S_q`` of each position's base distribution from the fused
  ``lm_head_entropy`` (no [B, T, V] logits kept). When the forward uses a KV cache, the base
  pass fills a base-model KV cache of its own, attached to the caller's cache object, so each
  later forward (a decode step) costs one base step, not a pass over the whole sequence.
  Beam-search reorders, crops and batch selections of the caller's cache are mirrored on it.
- ``"self"``: prompts and teacher-forced forwards as ``"base"``; in decoding, each generated token
  is routed by ``S_q`` of the adapted model's raw logits that produced it (before any logits
  processor). Needs the top-level causal-LM forward (it reads its logits) and one token per step.
- ``"none"``: every token counts as high entropy (the retain expert plus the router's top-k
  forget experts); no extra work. An explicit opt-out, e.g. for methods that do not route.

Explicit routing inputs (:func:`alter_kernels.set_routing_inputs`, used by training and by
:func:`alter_kernels.generate`) take precedence. Positions of the base pass are counted over
real tokens when the caller passes an attention mask but no position ids (as
:func:`alter_kernels.token_entropy` does), and a token whose predecessor is padding gets +inf.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import BASE_TOP_ROUTERS, INFERENCE_ENTROPY
from .hf import backbone_of, cache_kwarg, head_problem, position_ids_from_mask
from ..ops.entropy import tsallis_entropy
from .base_pass import base_entropy

STREAM_ATTR = "_alter_entropy_stream"
_MIRRORED = ("reorder_cache", "crop", "batch_repeat_interleave", "batch_select_indices")


class EntropyStream:
    """The inference rule's per-sequence state, attached to the caller's KV cache object.

    next_entropy [B, T_seen] fp32: S_q of the distribution at each position seen so far (the one
    that predicts the following token); base_cache: the base model's KV cache (mode "base").
    """

    def __init__(self, mode: str, base_cache, next_entropy: torch.Tensor):
        self.mode = mode
        self.base_cache = base_cache
        self.next_entropy = next_entropy
        self.append_self = False          # "self": the next top-level output appends (True) or replaces

    # mirrors of the caller's cache operations (beam search, assisted decoding, contrastive search)
    def reorder_cache(self, cache, beam_idx) -> None:
        if self.base_cache is not None:
            self.base_cache.reorder_cache(beam_idx)
        self.next_entropy = self.next_entropy.index_select(0, beam_idx.to(self.next_entropy.device))

    def crop(self, cache, *args, **kwargs) -> None:
        keep = int(cache.get_seq_length())
        if self.base_cache is not None:
            drop = int(self.base_cache.get_seq_length()) - keep
            if drop > 0:
                self.base_cache.crop(-drop)        # negative: remove that many tokens (any transformers)
        self.next_entropy = self.next_entropy[:, :keep]

    def batch_repeat_interleave(self, cache, repeats) -> None:
        if self.base_cache is not None:
            self.base_cache.batch_repeat_interleave(repeats)
        self.next_entropy = self.next_entropy.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, cache, indices) -> None:
        if self.base_cache is not None:
            self.base_cache.batch_select_indices(indices)
        self.next_entropy = self.next_entropy[indices]


def routing_from_next(next_entropy: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Routing entropies [B, T] of a sequence from the entropies at its positions (spec 2):
    e_t = next_entropy[:, t-1]; +inf at t = 0 and wherever token t-1 is padding."""
    routed = torch.full_like(next_entropy, math.inf)
    routed[:, 1:] = next_entropy[:, :-1]
    if attention_mask is not None:
        prev_real = torch.zeros_like(attention_mask, dtype=torch.bool)
        prev_real[:, 1:] = attention_mask[:, :-1].bool()
        routed = torch.where(prev_real, routed, torch.full_like(routed, math.inf))
    return routed


_MIRROR_CLASSES: dict[type, type] = {}       # an HF cache class -> its subclass that mirrors the states


def _mirror_method(name: str, base: type):
    original = getattr(base, name)

    def method(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        for attr in getattr(self, "_alter_mirrored", ()):
            state = getattr(self, attr, None)
            if state is not None:
                getattr(state, name)(self, *args, **kwargs)
        return out
    method.__name__ = method.__qualname__ = name
    return method


def _mirrored_class(cls: type) -> type:
    """The subclass of cache class ``cls`` whose reorders, crops and batch selections are mirrored
    on the states attached to the instance they are called on."""
    if cls in _MIRROR_CLASSES.values():
        return cls
    sub = _MIRROR_CLASSES.get(cls)
    if sub is None:
        ns = {name: _mirror_method(name, cls) for name in _MIRRORED if callable(getattr(cls, name, None))}
        ns.update(__module__=cls.__module__, __qualname__=cls.__qualname__)
        sub = _MIRROR_CLASSES[cls] = type(cls.__name__, (cls,), ns)
    return sub


def attach_cache_state(cache, attr: str, state) -> None:
    """Attach a per-sequence state object to an HF cache object as ``cache.<attr>``.

    From then on the cache's own reorders, crops and batch selections (beam search, assisted
    decoding, contrastive search: ``_MIRRORED``) are mirrored on every state attached this way;
    each state implements methods of those names taking ``(cache, *args)``. The mirroring lives
    in the cache's class (a subclass of its HF class, made once per class), not in closures
    over this object, so the states follow the object they belong to: a ``copy.deepcopy`` of the
    cache (HF's pattern for reusing a prompt cache) carries deep copies of the states and mirrors
    onto them; a ``copy.copy`` shares its states with the original as it shares its layers.
    """
    setattr(cache, attr, state)
    if type(cache) not in _MIRROR_CLASSES.values():
        cache.__class__ = _mirrored_class(type(cache))
    attrs = tuple(getattr(cache, "_alter_mirrored", ()))
    if attr not in attrs:
        cache._alter_mirrored = attrs + (attr,)


def attach_stream(cache, stream: EntropyStream) -> None:
    """Attach the inference rule's ``stream`` to an HF cache object (see :func:`attach_cache_state`)."""
    attach_cache_state(cache, STREAM_ATTR, stream)


def _output_cache(output, cache_kw: str):
    for name in (cache_kw, "cache", "past_key_values"):
        c = getattr(output, name, None) if not isinstance(output, dict) else output.get(name)
        if c is not None and not isinstance(c, (tuple, list)):
            return c
    return None


class InferenceRule:
    """Hooks of one patched model that supply the routing entropies when none are given.

    A forward pre-hook and an always-called forward hook on the backbone (so ``model.model(...)``
    is covered too), and a forward hook on the top-level model for ``"self"``.
    """

    def __init__(self, model: nn.Module, state):
        self.model = model
        self.state = state
        self.backbone = backbone_of(model)
        self.cache_kw = cache_kwarg(self.backbone)
        self.head = model.get_output_embeddings()
        self.prefill_high = False          # gated_decoding(prefill="high"): prompt tokens +inf
        self.last_entropy: torch.Tensor | None = None   # routing entropies of the last forward it served
        self.last_stream: EntropyStream | None = None
        self._pending: EntropyStream | None = None
        self._served: EntropyStream | None = None
        self.handles = [self.backbone.register_forward_pre_hook(self._pre, with_kwargs=True),
                        self.backbone.register_forward_hook(self._post, with_kwargs=True, always_call=True)]
        if model is not self.backbone:
            self.handles.append(model.register_forward_hook(self._top_post, with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    # ---------------------------------------------------------------- the base pass
    def base_entropy(self, input_ids, inputs_embeds, attention_mask, position_ids, cache) -> torch.Tensor:
        """S_q [B, T] of the base model's distribution at every position of these tokens; with the
        answer-key router, also its greedy next tokens (``state.auto_top``, from the same pass)."""
        top = self.state.config.router_input in BASE_TOP_ROUTERS
        out = base_entropy(self.model, self.state.config.q_route, input_ids=input_ids, inputs_embeds=inputs_embeds,
                           attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                           backbone=self.backbone, head=self.head, cache_kw=self.cache_kw, top=top)
        if top:
            self.state.auto_top = out[1]
            return out[0].float()
        return out.float()

    def _top_only(self, ids, embeds, mask, pos, past: int) -> None:
        """The answer-key router's base pass for a forward whose entropies are given (or not used):
        only the greedy next tokens, of a forward that starts its sequence."""
        if past:
            raise RuntimeError(
                f"ALTER {self.state.config.router_input} router: this forward continues a KV cache of {past} "
                "tokens with explicit routing inputs, so the base model's greedy next tokens are unknown; pass "
                "set_routing_inputs(..., base_top=...) or let the inference rule route (no routing inputs)")
        if mask is not None and pos is None and mask.dim() == 2:
            pos = position_ids_from_mask(mask)
        self.base_entropy(ids, embeds, mask, pos, None)

    # ---------------------------------------------------------------- hooks
    def _pre(self, module, args, kwargs):
        state = self.state
        state.auto_entropy = state.auto_top = None
        self._pending = None
        mode = state.config.inference_entropy
        explicit = state.entropy is not None or state.labels is not None or mode == "none"
        if not state.enabled or (explicit and (state.base_top is not None or
                                               state.config.router_input not in BASE_TOP_ROUTERS)):
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        x = ids if ids is not None else embeds
        if x is None:
            return None
        bsz, n = x.shape[0], x.shape[1]
        cache = kwargs.get(self.cache_kw)
        past = int(cache.get_seq_length()) if cache is not None else 0
        mask = kwargs.get("attention_mask")
        if explicit:
            with torch.no_grad():
                self._top_only(ids, embeds, mask, kwargs.get("position_ids"), past)
            return None
        mask2d = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] == past + n else None
        pos = kwargs.get("position_ids")
        if pos is None and mask2d is not None:
            pos = position_ids_from_mask(mask2d)[:, past:]
        with torch.no_grad():
            if past == 0:
                base_cache = None
                if mode == "base" and (cache is not None or kwargs.get("use_cache")):
                    from transformers import DynamicCache
                    base_cache = DynamicCache(config=self.backbone.config)
                ent = self.base_entropy(ids, embeds, mask, pos, base_cache)
                routed = torch.full_like(ent, math.inf) if self.prefill_high else routing_from_next(ent)
                stream = EntropyStream(mode, base_cache, ent)
            else:
                stream = getattr(cache, STREAM_ATTR, None)
                if stream is None:
                    raise RuntimeError(
                        f"ALTER: this forward continues a KV cache of {past} tokens that ALTER's inference rule did "
                        "not start (its prefill ran with explicit routing inputs or on another model), so the "
                        "routing entropies of its earlier tokens are unknown; start the sequence without routing "
                        "inputs, or pass routing inputs for every forward")
                if stream.next_entropy.shape[0] != bsz:
                    raise RuntimeError(f"ALTER: this forward has {bsz} rows but its KV cache holds "
                                       f"{stream.next_entropy.shape[0]}")
                if stream.mode == "base":
                    ent = self.base_entropy(ids, embeds, mask, pos, stream.base_cache)
                    routed = torch.cat([stream.next_entropy[:, -1:], ent[:, :-1]], dim=1)
                    stream.next_entropy = torch.cat([stream.next_entropy, ent], dim=1)
                else:
                    if n != 1:
                        raise NotImplementedError(
                            f"ALTER inference_entropy='self': a forward of {n} new tokens on a KV cache (assisted "
                            "decoding, prompt continuation) has no adapted logits for its inner tokens yet; use "
                            "inference_entropy='base' or one token per step")
                    routed = stream.next_entropy[:, -1:].clone()
                stream.append_self = True
            if mask2d is not None:
                prev_real = torch.zeros_like(mask2d, dtype=torch.bool)
                prev_real[:, 1:] = mask2d[:, :-1].bool()
                routed = torch.where(prev_real[:, past:], routed, torch.full_like(routed, math.inf))
        if cache is not None:
            attach_stream(cache, stream)
        self._pending = stream
        state.auto_entropy = routed
        self.last_entropy = routed
        return None

    def _post(self, module, args, kwargs, output):
        stream, self._pending = self._pending, None
        self.state.auto_entropy = self.state.auto_top = None
        self._served = stream
        if stream is not None:
            self.last_stream = stream
            if output is not None:
                c = _output_cache(output, self.cache_kw)
                if c is not None and getattr(c, STREAM_ATTR, None) is not stream:
                    attach_stream(c, stream)
        return None

    def _top_post(self, module, args, kwargs, output):
        stream, self._served = self._served, None
        if stream is None or stream.mode != "self":
            return None
        logits = output["logits"] if isinstance(output, dict) or hasattr(output, "keys") else output[0]
        with torch.no_grad():
            e = tsallis_entropy(logits[:, -1, :].detach(), self.state.config.q_route)[:, None]
        if stream.append_self:
            stream.next_entropy = torch.cat([stream.next_entropy, e.to(stream.next_entropy.device)], dim=1)
        else:
            stream.next_entropy = stream.next_entropy.clone()
            stream.next_entropy[:, -1:] = e
        return None


def check_model(model: nn.Module, mode: str) -> str | None:
    """Why ``mode`` cannot run on this model (None: it can). Checked at patch time."""
    if mode not in INFERENCE_ENTROPY:
        raise ValueError(f"inference_entropy: got {mode!r}, expected one of {', '.join(map(repr, INFERENCE_ENTROPY))}")
    if mode == "none":
        return None
    why = head_problem(model)
    if why is None:
        try:
            backbone_of(model)
        except TypeError as exc:
            why = str(exc)
    return why
