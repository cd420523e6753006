"""What the set-up computes once from the base model: ALTER's routing entropies and R_struct
references, theta, and NPO's reference log-probabilities."""
from __future__ import annotations

import logging
import warnings

import torch

from ..ops.losses import sequence_logprob
from . import _model_api as _m
from .batches import map_batches
from .data import Example, collate
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


def quantile_threshold(exs: list[Example], ents: list[torch.Tensor], q: float) -> float:
    """theta = the q-quantile of the routing entropies of the answer tokens (finite ones)."""
    if not 0.0 < float(q) < 1.0:
        raise ValueError(f"unlearn: threshold_quantile must be in (0, 1), got {q!r}")
    vals = torch.cat([e[torch.tensor(ex.labels) != -100] for ex, e in zip(exs, ents)])
    vals = vals[torch.isfinite(vals)]
    if vals.numel() == 0:
        raise UnlearnError("unlearn: threshold_quantile: no answer token has a finite entropy")
    return float(torch.quantile(vals.double(), float(q)))


def choose_threshold(theta: float, exs: list[Example], ents: list[torch.Tensor], opts) -> tuple[float, str, float]:
    """(theta, source, low share of the configured theta): ``threshold_quantile`` if given
    ("quantile"); else the ``threshold_auto`` quantile when the configured theta puts >= 98% of
    the answer tokens on one side ("auto"); else the configured theta ("config")."""
    if opts.threshold_quantile is not None:
        return quantile_threshold(exs, ents, opts.threshold_quantile), "quantile", float("nan")
    vals = torch.cat([e[torch.tensor(ex.labels) != -100] for ex, e in zip(exs, ents)]) if exs else torch.zeros(0)
    vals = vals[torch.isfinite(vals)]
    if opts.threshold_auto is None or vals.numel() == 0:
        return theta, "config", float("nan")
    low = float((vals <= theta).double().mean())
    if AUTO_SIDE_SHARE <= low or low <= 1.0 - AUTO_SIDE_SHARE:
        return quantile_threshold(exs, ents, opts.threshold_auto), "auto", low
    return theta, "config", low


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
    theta, source, low_share = choose_threshold(old, d.forget + d.retain, d.forget_cache[0] + d.retain_cache[0], opts)
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
