"""The prefix-match router's inputs (``AlterConfig.router_input == "prefix_match"``).

Its features are the running key matches of the prefix (:func:`prefix_match_features`); the
backbone's hooks remember each forward's 2D attention mask and KV cache, and while decoding the
running matches of the cached tokens live on the HF cache object (:class:`PrefixRouterState`).
"""
from __future__ import annotations

import torch

from .inference import attach_cache_state
from .router import LayerRouter
from .state import AlterState


def backbone_pre_hook(state: AlterState):
    """Remember the forward's 2D attention mask and KV cache (prefix-match router: which tokens are
    real, and where the running prefix state of incremental decoding lives)."""
    def hook(module, args, kwargs):
        if not state.enabled:                   # a base-model pass (adapters off): not routed
            return None
        att = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        state.route_ids = ids if isinstance(ids, torch.Tensor) and ids.dim() == 2 else None
        state.route_hits = None
        state.route_mask = att if isinstance(att, torch.Tensor) and att.dim() == 2 else None
        cache = kwargs.get("past_key_values", None)
        if cache is None:
            cache = kwargs.get("cache", None)
        state.route_cache = cache if kwargs.get("use_cache", True) is not False or cache is not None else None
        past = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            try:
                past = int(cache.get_seq_length())
            except Exception:                   # noqa: BLE001 - caches that cannot tell: no history
                past = 0
        state.route_past = past
        return None
    return hook


def backbone_post_hook(state: AlterState):
    def hook(module, args, kwargs, out):
        if not state.enabled:
            return None
        # h0 and the mask stay: gradient checkpointing re-runs the layers after this forward
        state.route_cache = None
        state.route_past = 0
        return None
    return hook


PREFIX_STATE_ATTR = "_alter_prefix_state"


class PrefixRouterState:
    """Per-cache state of the prefix-match routers while decoding: for each decoder layer, the
    running key matches of every row at every cached position ([B, L, K]); the last position
    continues the prefix, ``reorder`` follows beam search and ``crop`` follows the cache.
    Attached to the HF cache object (``cache._alter_prefix_state``)."""

    def __init__(self):
        self.hist: dict[str, torch.Tensor] = {}

    def last(self, layer: str) -> torch.Tensor | None:
        h = self.hist.get(layer)
        return None if h is None or h.shape[1] == 0 else h[:, -1]

    def append(self, layer: str, m: torch.Tensor, past: int) -> None:
        h = self.hist.get(layer)
        if h is None or past == 0:
            self.hist[layer] = m
        else:
            self.hist[layer] = torch.cat([_tile_rows(h[:, :past], m.shape[0]), m], 1)

    # mirrors of the cache's own operations (beam search, assisted decoding, contrastive search),
    # with the same semantics as the inference rule's EntropyStream beside it
    def reorder_cache(self, cache, beam_idx) -> None:
        for k, h in self.hist.items():
            self.hist[k] = h.index_select(0, beam_idx.to(h.device))

    def crop(self, cache, *args, **kwargs) -> None:
        keep = int(cache.get_seq_length())
        for k, h in self.hist.items():
            self.hist[k] = h[:, :keep]

    def batch_repeat_interleave(self, cache, repeats) -> None:
        for k, h in self.hist.items():
            self.hist[k] = h.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, cache, indices) -> None:
        for k, h in self.hist.items():
            self.hist[k] = h[indices]


def _tile_rows(t: torch.Tensor, b: int) -> torch.Tensor:
    """ak.generate's fast path decodes the base stream as extra batch rows after the adapted ones
    (the same sequences): a state of B rows continues a batch of k*B rows by tiling."""
    if t.shape[0] == b or t.shape[0] == 0 or b % t.shape[0]:
        return t
    return t.repeat(b // t.shape[0], *([1] * (t.dim() - 1)))


def prefix_state(cache, create: bool = True) -> PrefixRouterState | None:
    """The prefix-router state attached to an HF cache object (``cache._alter_prefix_state``),
    made on first use; the cache's reorder / crop / batch operations are mirrored on it."""
    st = getattr(cache, PREFIX_STATE_ATTR, None)
    if st is None and create:
        st = PrefixRouterState()
        try:
            attach_cache_state(cache, PREFIX_STATE_ATTR, st)
        except (AttributeError, TypeError):
            return None
    return st


def prefix_match_features(router: LayerRouter, hidden: torch.Tensor, running: bool = True) -> torch.Tensor:
    """Router features of the prefix-match router: [N, K + 1] fp32 for the N tokens of ``hidden``.

    f_{t,k} = max_{s <= t, s real} relu(cos(x_s, key_k) - m) / (1 - m), x_s the first patched
    decoder layer's input at token s (for Llama: the token embedding), m = config.router_match;
    then a constant 1 (the bias row of W_g). Causal: token t depends on tokens <= t only; padding
    (attention mask 0) never matches; while decoding with a KV cache, the running maximum of the
    cached tokens is carried in the cache's :class:`PrefixRouterState`.

    running=False (``router_input="key_tokens"``): f_{t,k} = relu(cos(x_t, key_k) - m) / (1 - m),
    token t's own match only (no state: what a token routes to depends on that token alone).
    """
    state: AlterState = router.state
    lead = hidden.shape[:-1]
    h0 = state.route_h0
    if h0 is None or tuple(h0.shape[:-1]) != tuple(lead):
        h0 = hidden
    keys = router.keys
    if h0.dim() == 2:
        h0 = h0.unsqueeze(0)
    b, t = h0.shape[0], h0.shape[1]
    x = h0.detach().to(torch.float32)
    x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    m_cos = float(state.config.router_match)
    a = torch.relu(x @ keys.detach().to(torch.float32).t() - m_cos) / (1.0 - m_cos)     # [B, T, K]
    mask = state.route_mask
    if mask is not None and mask.shape[0] == b and mask.shape[1] >= t:
        a = a * mask[:, -t:].to(a.dtype).unsqueeze(-1)
    if running and keys.shape[0] > 0 and t > 0:
        a = torch.cummax(a, dim=1).values
    cache = state.route_cache
    if running and cache is not None and keys.shape[0] > 0:
        ps = prefix_state(cache)
        if ps is not None:
            prev = ps.last(router.layer_name) if state.route_past > 0 else None
            if prev is not None:
                prev = _tile_rows(prev, b)
            if prev is not None and prev.shape[0] == b:
                a = torch.maximum(a, prev.unsqueeze(1).to(a.dtype))
            ps.append(router.layer_name, a.detach(), state.route_past)
    feats = torch.cat([a, torch.ones(*a.shape[:-1], 1, dtype=a.dtype, device=a.device)], -1)
    return feats.reshape(-1, feats.shape[-1])

