"""What the set-up computes once from the base model: ALTER's routing entropies and R_struct
references, theta, and NPO's reference log-probabilities."""
from __future__ import annotations

import logging
import math
import warnings

import torch

from ..ops.losses import sequence_logprob
from . import _model_api as _m
from .batches import map_batches
from ..common.text import IGNORE_INDEX
from .data import Example, collate
from .options import GENERIC_TOP_K
from .subdomains import entity_swap, entity_tokens
from .result import UnlearnError

_log = logging.getLogger("alter_kernels.unlearn")

AUTO_SIDE_SHARE = 0.98


@torch.no_grad()
def entropy_cache(model, exs: list[Example], pad_id, bs, dev, q_route, q_struct, ctx=None, desc=None):
    """Per example: routing entropies e_t (q_route) and base S_{q_s} of the same distributions."""
    def one(idx):
        ids, att, _ = collate([exs[i] for i in idx], pad_id)
        ids, att = ids.to(dev), att.to(dev)
        e = _m.token_entropy(model, ids, att, q=q_route).float().cpu()
        s = _m.token_entropy(model, ids, att, q=q_struct).float().cpu()
        return [(e[j, :len(exs[i].input_ids)].clone(), s[j, :len(exs[i].input_ids)].clone())
                for j, i in enumerate(idx)]
    pairs = map_batches(len(exs), bs, one, ctx, desc=desc)
    return [p[0] for p in pairs], [p[1] for p in pairs]


@torch.no_grad()
def top_cache(model, exs: list[Example], pad_id, bs, dev, ctx=None, desc=None) -> list[torch.Tensor]:
    """Per example: the base model's greedy next token at every position (answer-key router)."""
    def one(idx):
        ids, att, _ = collate([exs[i] for i in idx], pad_id)
        top = _m.token_top(model, ids.to(dev), att.to(dev)).cpu()
        return [top[j, :len(exs[i].input_ids)].clone() for j, i in enumerate(idx)]
    return map_batches(len(exs), bs, one, ctx, desc=desc)


def _swap_table(swap: dict[int, int], vocab: int, device) -> torch.Tensor:
    """The permutation of token ids that exchanges each pair of ``swap`` ([vocab] long)."""
    perm = torch.arange(vocab, device=device)
    for a, b in swap.items():
        perm[a], perm[b] = b, a
    return perm


@torch.no_grad()
def generic_cache(model, exs: list[Example], pad_id, bs, dev, k: int, swap: dict[int, int] | None = None,
                  ctx=None, desc=None) -> list[tuple]:
    """``forget_loss="generic"``'s targets. Per example: (ids [L, k + 1] long, log-probs [L, k + 1]
    fp32, stated [L] bool): at every position, the base model's (adapters off) k most likely next
    tokens other than the row's own next token, then that token (the last column; -inf at the last
    position, which has none), and whether that token is one the prompt states (a name the answer
    repeats).

    swap ({token: token}): the base model reads the row with each pair exchanged (the forget
    entity's tokens replaced by those of an entity it has not seen), and its predictions are
    mapped back (the replacement's probability becomes the original token's): what the model says
    about an entity it does not know, in the row's own words (the "generic predictions" of Eldan
    and Russinovich's "Who's Harry Potter?", 2023)."""
    def one(idx):
        ids, att, _ = collate([exs[i] for i in idx], pad_id)
        ids, att = ids.to(dev), att.to(dev)
        with _m.disable_adapters(model):
            vocab = model.get_output_embeddings().weight.shape[0]
            perm = _swap_table(swap or {}, vocab, ids.device)
            logits = model(input_ids=perm[ids], attention_mask=att, use_cache=False).logits
        lp = torch.log_softmax(logits.float(), -1)[..., perm]       # back to the row's own tokens
        nxt = torch.cat([ids[:, 1:], ids[:, -1:]], 1)                  # each position's own next token
        own = lp.gather(-1, nxt[..., None])
        own[:, -1] = -math.inf
        top_lp, top = lp.scatter(-1, nxt[..., None], -math.inf).topk(min(k, lp.shape[-1] - 1), dim=-1)
        a_ids, a_lp = torch.cat([top, nxt[..., None]], -1).cpu(), torch.cat([top_lp, own], -1).cpu()
        out = []
        for j, i in enumerate(idx):
            ex, n = exs[i], len(exs[i].input_ids)
            prompt = {t for t, y in zip(ex.input_ids, ex.labels) if y == IGNORE_INDEX}
            stated = torch.tensor([t in prompt for t in ex.input_ids[1:]] + [False])
            out.append((a_ids[j, :n].clone(), a_lp[j, :n].clone(), stated))
        return out
    return map_batches(len(exs), bs, one, ctx, desc=desc)


def cache_generic(run) -> None:
    """forget_loss="generic": the generic targets of every forget row (entity swapped)."""
    d = run.data
    swap = entity_swap(run.model, d.forget, d.retain, special_ids=[d.pad_id])
    if not swap:
        raise UnlearnError("unlearn: forget_loss='generic' found no token of the forget prompts that is absent "
                           "from the retain rows to swap for a retain-only one: it needs forget rows that name an "
                           "entity the retain rows do not")
    d.forget_generic = generic_cache(run.model, d.forget, d.pad_id, run.batch_size, run.dev, GENERIC_TOP_K, swap,
                                 run.dist, desc=run.show and "generic targets (forget)")


def cache_tops(run) -> None:
    """The answer-key router: cache the base model's greedy next tokens of every example."""
    d = run.data
    if d.forget_top is not None:
        return
    d.forget_top = top_cache(run.model, d.forget, d.pad_id, run.batch_size, run.dev, run.dist,
                             desc=run.show and "greedy-token cache (forget)")
    d.retain_top = top_cache(run.model, d.retain, d.pad_id, run.batch_size, run.dev, run.dist,
                             desc=run.show and "greedy-token cache (retain)") if d.retain else []


@torch.no_grad()
def ref_logps(model, exs: list[Example], pad_id, bs, dev, ctx=None, desc=None) -> list[float]:
    """Sequence log-probability of each example's answer under ``model`` (NPO's reference)."""
    def one(idx):
        ids, att, lab = collate([exs[i] for i in idx], pad_id)
        logits = model(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=False).logits
        return sequence_logprob(logits, lab.to(dev)).float().cpu().tolist()
    return map_batches(len(exs), bs, one, ctx, desc=desc)


def _scored(exs: list[Example], ents: list[torch.Tensor], select=None) -> torch.Tensor:
    """The finite routing entropies of the tokens theta is chosen from: each example's answer
    tokens, or the positions of ``select`` (one bool mask per example)."""
    if not exs:
        return torch.zeros(0)
    masks = select if select is not None else [torch.tensor(ex.labels) != -100 for ex in exs]
    vals = torch.cat([e[m] for m, e in zip(masks, ents)])
    return vals[torch.isfinite(vals)]


def quantile_threshold(exs: list[Example], ents: list[torch.Tensor], q: float, select=None) -> float:
    """theta = the q-quantile of the routing entropies of the answer tokens (finite ones), or of
    the tokens ``select`` picks."""
    if not 0.0 < float(q) < 1.0:
        raise ValueError(f"unlearn: threshold_quantile must be in (0, 1), got {q!r}")
    vals = _scored(exs, ents, select)
    if vals.numel() == 0:
        raise UnlearnError("unlearn: threshold_quantile: no answer token has a finite entropy")
    return float(torch.quantile(vals.double(), float(q)))


def choose_threshold(theta: float, exs: list[Example], ents: list[torch.Tensor], opts, select=None
                     ) -> tuple[float, str, float]:
    """(theta, source, low share of the configured theta): ``threshold_quantile`` if given
    ("quantile"); else the ``threshold_auto`` quantile when the configured theta puts >= 98% of
    the answer tokens (or the tokens ``select`` picks) on one side ("auto"); else the configured
    theta ("config")."""
    if opts.threshold_quantile is not None:
        return quantile_threshold(exs, ents, opts.threshold_quantile, select), "quantile", float("nan")
    vals = _scored(exs, ents, select)
    if opts.threshold_auto is None or vals.numel() == 0:
        return theta, "config", float("nan")
    low = float((vals <= theta).double().mean())
    if AUTO_SIDE_SHARE <= low or low <= 1.0 - AUTO_SIDE_SHARE:
        return quantile_threshold(exs, ents, opts.threshold_auto, select), "auto", low
    return theta, "config", low


def key_token_positions(forget: list[Example], retain: list[Example], special_ids=()) -> list[torch.Tensor]:
    """Per forget row, the positions of the forget entity's tokens (the key_tokens router's keys,
    :func:`subdomains.entity_tokens`): where that router sends tokens to a forget expert."""
    excl = set(int(t) for ex in retain for t in ex.input_ids) | set(int(t) for t in special_ids)
    keys = {t for ex in forget for t in entity_tokens(ex, excl)}
    return [torch.tensor([int(t) in keys for t in ex.input_ids]) for ex in forget]


def cache_entropies(run) -> None:
    """ALTER: cache the base-model entropies of every example (``run.data``'s caches)."""
    d, opts, model = run.data, run.opts, run.model
    q_route = run.cfg.q_route
    d.forget_cache = entropy_cache(model, d.forget, d.pad_id, run.batch_size, run.dev, q_route, opts.struct_q,
                                   run.dist, desc=run.show and "entropy cache (forget)")
    d.retain_cache = (entropy_cache(model, d.retain, d.pad_id, run.batch_size, run.dev, q_route, opts.struct_q,
                                    run.dist, desc=run.show and "entropy cache (retain)") if d.retain else ([], []))


def resolve_threshold(run) -> tuple[float, str]:
    """ALTER: (theta, source) for this run from the cached entropies (:func:`choose_threshold`;
    an adapter with frozen experts keeps its theta). Reads the model's config, changes nothing."""
    d, opts, cfg = run.data, run.opts, run.cfg
    old = cfg.threshold
    if _m.frozen_experts(run.model):
        if opts.threshold_quantile is not None:
            warnings.warn("unlearn: threshold_quantile ignored: this adapter has frozen experts (continued "
                          f"unlearning) and keeps its threshold {old}")
        return old, "config"
    if cfg.router_input == "key_tokens":
        # theta splits the tokens this router can send to a forget expert: the entity's own tokens
        theta, source, low_share = choose_threshold(old, d.forget, d.forget_cache[0], opts,
                                                    select=key_token_positions(d.forget, d.retain, [d.pad_id]))
    else:
        theta, source, low_share = choose_threshold(old, d.forget + d.retain, d.forget_cache[0] + d.retain_cache[0],
                                                    opts)
    if source == "auto" and run.main:
        _log.info("unlearn[alter]: threshold %s (q_route %s) put %.1f%% of the answer tokens on the low side; "
                  "theta set to %.4g, the %s-quantile of the base answer-token entropies (threshold_auto)",
                  old, cfg.q_route, 100 * low_share, theta, opts.threshold_auto)
        if run.progress:
            print(f"unlearn[alter]: threshold {old} put {100 * low_share:.1f}% of the answer tokens on the "
                  f"low side; using theta = {theta:.4g} (the {opts.threshold_auto}-quantile of the base "
                  "answer-token entropies, threshold_auto)")
    return theta, source


def cache_ref_logps(run) -> None:
    """NPO: the base model's log-probability of every forget answer."""
    d = run.data
    d.forget_ref = ref_logps(run.model, d.forget, d.pad_id, run.batch_size, run.dev, run.dist,
                             desc=run.show and "reference log-probs (forget)")
