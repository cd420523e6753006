"""The answer-key router's inputs (``AlterConfig.router_input == "answer_keys"``, issue 23).

Token t is routed to a forget expert when the base model (adapters off) is about to state a forget
answer: its greedy next token at t is one of the router's key tokens (fitted from the forget
answers by the unlearning engine), and that key token does not occur among tokens <= t (a word
the user wrote is repeated, not recalled). The decision reads what the base model knows, not how
the prompt spells the entity: a paraphrase, a lower-case or misspelt name, a reference by an
attribute or a fill-in-the-blank prompt all route as long as the base model would answer.

Routing stays causal: the base model's prediction at t depends on tokens <= t only, and the base
pass of the inference rule (:mod:`.inference`) runs on a token before the adapted pass does, so
scoring (a teacher-forced forward) and generation (HF ``generate``, any strategy) route a token
the same way. While decoding, the running "seen" state of the cached tokens lives on the HF cache
object (the prefix router's :class:`~.prefix.PrefixRouterState`, which follows reorders and crops).

Features of token t: ``hit_k`` (1.0 when key k fires at t, else 0), then a constant 1 (the bias row
of W_g [K + 1, E]). The keys are stored as a float buffer of token ids (saved with the adapter).
"""
from __future__ import annotations

import torch

from .prefix import _tile_rows, prefix_match_features, prefix_state
from .router import LayerRouter
from .state import AlterState

SEEN_KEY = "answer_keys:seen"          # the PrefixRouterState entry of the running "seen" matches


def key_hits(top: torch.Tensor, ids: torch.Tensor | None, key_ids: torch.Tensor,
             mask: torch.Tensor | None = None, seen_before: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule, written once: (hits [B, T, K] bool, seen [B, T, K] bool).

    top [B, T]: the base model's greedy next token at each position; ids [B, T]: the tokens (None:
    unknown, e.g. a forward given ``inputs_embeds``, so no key counts as seen); key_ids [K] long;
    mask [B, T] (0: padding, which never fires nor counts as seen); seen_before [B, K]: keys seen
    in the cached tokens before this forward. hits[b, t, k] = top[b, t] == key_k and key_k does
    not occur in tokens <= t; seen[b, t, k] = key_k occurs in tokens <= t.
    """
    key_ids = key_ids.to(device=top.device, dtype=torch.long)
    real = torch.ones(top.shape, dtype=torch.bool, device=top.device) if mask is None else mask.bool()
    if ids is None:
        seen = torch.zeros(*top.shape, key_ids.shape[0], dtype=torch.bool, device=top.device)
    else:
        seen = (ids.to(top.device).unsqueeze(-1) == key_ids) & real.unsqueeze(-1)
        if seen.shape[1] > 0 and key_ids.shape[0] > 0:
            seen = torch.cummax(seen.to(torch.uint8), dim=1).values.bool()
    if seen_before is not None:
        seen = seen | seen_before.to(top.device).bool().unsqueeze(1)
    hits = (top.unsqueeze(-1) == key_ids) & real.unsqueeze(-1) & ~seen
    return hits, seen


def key_experts(router: LayerRouter, hits: torch.Tensor) -> torch.Tensor:
    """The forget expert each position's hits point to, by W_g's key rows (0: no hit): [B, T] long."""
    w = router.weight.detach()[:-1, 1:].to(torch.float32)              # [K, E - 1] the key rows' forget columns
    col = w.argmax(-1) + 1 if w.numel() else torch.zeros(0, dtype=torch.long, device=w.device)
    score = hits.to(torch.float32) @ torch.nn.functional.one_hot(col, router.weight.shape[1]).to(torch.float32)
    score[..., 0] = 0.0
    any_hit = hits.any(-1)
    return torch.where(any_hit, score.argmax(-1), torch.zeros_like(any_hit, dtype=torch.long))


def answer_hits(router: LayerRouter, lead: tuple, key_ids: torch.Tensor) -> torch.Tensor:
    """This forward's key hits [B, T, K] (:func:`key_hits` on the base model's greedy tokens), made
    once per forward (every layer reads them) and carrying the "seen" state on the KV cache."""
    state: AlterState = router.state
    cached = state.route_hits
    if cached is not None and cached[0] == lead:
        return cached[1]
    top = state.base_top if state.base_top is not None else state.auto_top
    if top is None or tuple(top.shape) != lead:
        raise RuntimeError(
            f"ALTER {router.router_input} router: this forward's tokens are {lead} but the base model's greedy next "
            f"tokens are {None if top is None else tuple(top.shape)}; a forward without routing inputs gets them from "
            "the inference rule, a forward with explicit ones needs set_routing_inputs(..., base_top=...)")
    ids = state.route_ids if state.route_ids is not None and tuple(state.route_ids.shape) == lead else None
    mask = state.route_mask[:, -lead[1]:] if state.route_mask is not None and \
        state.route_mask.shape[0] == lead[0] and state.route_mask.shape[1] >= lead[1] else None
    prev, ps = None, None
    if state.route_cache is not None:
        ps = prefix_state(state.route_cache)
        if ps is not None and state.route_past > 0:
            prev = ps.last(SEEN_KEY)
            prev = _tile_rows(prev, lead[0]) if prev is not None else None
            prev = prev if prev is not None and prev.shape[0] == lead[0] else None
    hits, seen = key_hits(top, ids, key_ids, mask, prev)
    if ps is not None:
        ps.append(SEEN_KEY, seen, state.route_past)
    state.route_hits = (lead, hits)
    return hits


def answer_key_features(router: LayerRouter, hidden: torch.Tensor) -> torch.Tensor:
    """Router features of the answer-key router: [N, K + 1] fp32 for the N tokens of ``hidden``."""
    lead = tuple(hidden.shape[:-1])
    hits = answer_hits(router, lead, router.keys.detach().to(torch.long))
    feats = torch.cat([hits.to(torch.float32), torch.ones(*lead, 1, device=hits.device)], -1)
    return feats.reshape(-1, feats.shape[-1])


def prefix_answer_features(router: LayerRouter, hidden: torch.Tensor) -> torch.Tensor:
    """Router features of "prefix_answer_keys": the prefix-match features [N, K + 1], the key
    columns zeroed where no answer key fires (the bias column stays): a forget expert takes only
    the positions where the base model is about to state a forget-answer token, and only after a
    forget entity's key has appeared."""
    lead = tuple(hidden.shape[:-1])
    pm = prefix_match_features(router, hidden)
    gate = answer_hits(router, lead, router.answer_keys.detach().to(torch.long)).any(-1).reshape(-1, 1)
    return torch.cat([pm[:, :-1] * gate.to(pm.dtype), pm[:, -1:]], -1)
