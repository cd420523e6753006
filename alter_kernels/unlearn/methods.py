"""Per-method step losses (ALTER and the spec-7 baselines) on one mixed batch.

A batch holds forget rows then retain rows, right-padded: ``input_ids``, ``attention_mask``,
``labels`` (-100 on prompt and padding), ``is_forget`` [B] bool and ``domain`` [B] long (the
expert of each row: forget domain id >= 1, retain 0), plus the cached per-token base-model
entropies for ALTER. Every function returns (loss, logs) where logs are python floats.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch

from ..kernels import use_backend
from ..common.text import IGNORE_INDEX
from ..config import BASE_TOP_ROUTERS
from . import _model_api as _patch
from . import objectives as obj
from . import heads
from .heads import retain_kl_tokens, step_terms
from .options import UnlearnOptions, refuse_grad_norm_data_parallel
from .result import UnlearnError


def _f(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


# loss terms that are sums over the shards of a data-parallel step (see ``reduce`` below)
SUMMED_LOGS = frozenset({"ihl", "generic", "retain_nll", "struct", "router_ce", "forget_nll", "retain_kl", "npo",
                         "forget_logp"})


def _global_counts(counts: list, reduce) -> list[float]:
    """This shard's token / row counts summed over the ranks (one all-reduce)."""
    t = torch.stack([c if isinstance(c, torch.Tensor) else torch.tensor(c) for c in counts]).double()
    return [float(x) for x in reduce(t).tolist()]


def alter_loss(model, batch: dict, hp, mode: str = "alter", *, forward=None, reduce=None):
    """ALTER (spec 5) or AsymLoRA (mode="asymlora": every token low, no entropy).

    hp: the options, an :class:`UnlearnOptions` or a mapping of its fields (missing ones take
    their defaults).

    forward: the module to call (a DDP wrapper of ``model``); default ``model``.
    reduce: data-parallel only: a function summing a tensor over the ranks. Every mean of the
    loss is then divided by the global batch's count (not the shard's), so the shards' losses
    sum to the single-process loss of the global batch; the caller multiplies by the world size
    before backward (DDP / FSDP2 average the gradients). Logged terms in SUMMED_LOGS are this
    shard's share (the caller sums them); shares and counts are already global.
    """
    opts = UnlearnOptions.from_kwargs("alter_loss", hp)
    cfg = _patch.get_state(model).config
    fwd = model if forward is None else forward
    ids, att, lab = batch["input_ids"], batch["attention_mask"], batch["labels"]
    is_f, dom = batch["is_forget"], batch["domain"]
    if mode == "asymlora":
        ent = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)   # every token low
    else:
        ent = batch["entropy"]
    route_labels, base_top, fire = _route_labels(model, batch, opts, cfg)
    grad_norm = mode == "alter" and opts.grad_norm_struct
    if mode == "alter" and reduce is not None:
        refuse_grad_norm_data_parallel(opts, "alter_loss")
    if reduce is not None and opts.ihl_until != "zero":
        raise UnlearnError("alter_loss: ihl_until='not_top' decides per token after the forward, so the global "
                           "token counts of data-parallel training are not known in advance; use ihl_until='zero'")
    sy, se = lab[:, 1:], ent[:, 1:]
    valid = sy != IGNORE_INDEX
    low = se <= cfg.threshold                          # NaN / +inf count as high (as the router does)
    high = (~low) & valid & torch.isfinite(se)
    ihl_at = _forget_positions(opts, valid, low, fire) & is_f[:, None]
    den = None
    if reduce is not None:                             # counts of the global batch, from the batch alone
        e = cfg.num_experts
        f_low = (valid & ihl_at).sum(1)
        per_dom = torch.zeros(e, dtype=torch.float64, device=ids.device).index_add_(0, dom.clamp(min=0),
                                                                                      f_low.double())
        sq_ok = torch.isfinite(batch["base_sq"][:, 1:]) if "base_sq" in batch else torch.ones_like(high)
        n_router_local = (route_labels >= 0).sum()
        g = _global_counts(list(per_dom.unbind()) + [(valid & ~is_f[:, None]).sum(), (high & sq_ok).sum(),
                                                     n_router_local, valid.sum(), high.sum()], reduce)
        den = {"ihl": {d: g[d] for d in range(1, e)}, "nll": g[e], "struct": g[e + 1], "router": g[e + 2],
               "valid": g[e + 3], "high": g[e + 4], "router_local": float(n_router_local)}
    # the double backward of the grad-norm form needs a differentiable-twice path: the reference
    force = (lambda: use_backend("reference")) if grad_norm else contextlib.nullcontext
    drift = mode == "alter" and opts.lam != 0 and opts.struct_mode == "drift"
    with _patch.routing_inputs(model, entropy=ent, labels=route_labels, base_top=base_top), force():
        terms = step_terms(model, fwd, batch, opts, q=opts.struct_q if drift else None)
        rl = _patch.router_loss(model)
    zero = terms.nll.sum() * 0.0
    rl = rl if rl is not None else zero
    if den is not None:                                # router CE: mean over the global batch's labelled tokens
        rl = rl * (den["router_local"] / den["router"]) if den["router"] else rl * 0.0
    if opts.ihl_until == "not_top":                    # IHL >= 1 exactly while y is still the top token
        ihl_at = ihl_at & (terms.ihl.detach() >= 1.0)
    forget_terms = terms.ihl if opts.forget_loss == "ihl" else _generic_tokens(model, terms, batch, ihl_at, opts)
    ihl, counts = obj.domain_ihl_tokens(forget_terms, sy, ihl_at, dom, denoms=den and den["ihl"])
    nll = obj.masked_mean(terms.nll, sy, ~is_f, denom=den and den["nll"])
    rs = zero
    if drift:
        vocab = model.get_output_embeddings().weight.shape[0]
        rs = obj.struct_drift_tokens(terms.entropy, batch["base_sq"][:, 1:], high, vocab, q=opts.struct_q,
                                     denom=den and den["struct"])
    elif mode == "alter" and opts.lam != 0:           # grad-norm form: materialised logits (heads.use_fused)
        with force():
            mean_s = obj.struct_entropy_mean(terms.logits, high, q=opts.struct_q)
            rs = obj.struct_grad_norm(mean_s, _patch.adapter_parameters(model)["A"])
    loss = opts.beta * ihl + opts.gamma * nll + opts.lam * rs + opts.rho * rl
    if den is None:
        n_valid, n_high, n_low = int(valid.sum()), int(high.sum()), int(sum(counts.values()))
    else:
        n_valid, n_high, n_low = den["valid"], den["high"], int(sum(den["ihl"].values()))
    logs = {("ihl" if opts.forget_loss == "ihl" else "generic"): _f(ihl), "retain_nll": _f(nll), "struct": _f(rs),
            "router_ce": _f(rl),
            "high_entropy_share": (n_high / n_valid) if n_valid else float("nan"),
            "forget_low_tokens": n_low}
    return loss, logs


def _forget_positions(opts, valid: torch.Tensor, low: torch.Tensor, fire) -> torch.Tensor:
    """Where the forget term acts (before restricting to forget rows): the low-entropy tokens
    (spec 5), or where the answer-key router fires; forget_loss="generic" distils every answer token."""
    if opts.forget_loss == "generic":
        return valid
    return low if fire is None else fire[:, :-1] > 0


def _generic_tokens(model, terms, batch: dict, at: torch.Tensor, opts) -> torch.Tensor:
    """forget_loss="generic": per-token forget term [B, T-1] at the positions ``at`` (0 elsewhere):
    KL(generic || model), the generic target being the base model's prediction for the row with
    its entity swapped for one it does not know (caches.generic_cache), plus forget_ihl x IHL
    on the answer tokens the prompt does not state (the facts, not the name the answer repeats)."""
    if "generic_ids" not in batch:
        raise UnlearnError("alter_loss: forget_loss='generic' needs the batch's cached generic targets "
                           "('generic_ids', 'generic_logp', 'generic_stated'; the engine caches them in its set-up)")
    out = terms.nll.new_zeros(terms.nll.shape)
    if bool(at.any()):
        g_ids, g_logp = batch["generic_ids"][:, :-1][at], batch["generic_logp"][:, :-1][at]
        z, lse = heads.logits_at(model, terms, at, g_ids)
        out = out.index_put(at.nonzero(as_tuple=True), obj.generic_kl(z, lse, g_ids, g_logp))
    if opts.forget_ihl:
        out = out + opts.forget_ihl * torch.where(at & ~batch["generic_stated"][:, :-1], terms.ihl,
                                                  torch.zeros_like(terms.ihl))
    return out + terms.nll.sum() * 0.0


def _route_labels(model, batch: dict, opts, cfg):
    """(per-token routing labels [B, T], base_top or None, the answer-key experts [B, T] or None).

    Labels: the row's expert, -1 on padding (and on filler rows, domain -1); with route_labels
    "content" only the answer tokens and the token before each (whose outputs predict them) carry
    labels, since the question template ("Question: ... Answer:") is the same in every class. With
    the answer-key router the engine trains exactly the routing of inference (scoring equals
    generation): a forget row's position goes to the expert its key points to where a key fires,
    else to the retain expert; retain rows stay on the retain expert."""
    ids, att, lab, is_f = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["is_forget"]
    route_labels = torch.where(att.bool(), batch["domain"][:, None].expand_as(ids), torch.full_like(ids, -1))
    if cfg.router_input in BASE_TOP_ROUTERS:
        base_top, fire = _answer_key_routing(model, batch, cfg.router_input)
        route_labels = torch.where(att.bool(), torch.where(is_f[:, None], fire, torch.zeros_like(fire)),
                                   torch.full_like(ids, -1))
        return route_labels, base_top, fire
    if cfg.router_input == "key_tokens":             # the row's expert exactly at its key tokens
        hit = _key_token_hits(model, ids)
        route_labels = torch.where(att.bool(), torch.where(is_f[:, None] & hit, route_labels,
                                                           torch.zeros_like(route_labels)), torch.full_like(ids, -1))
        return route_labels, None, None
    if opts.route_labels == "content":
        content = lab != IGNORE_INDEX
        content[:, :-1] |= lab[:, 1:] != IGNORE_INDEX
        route_labels = torch.where(content, route_labels, torch.full_like(route_labels, -1))
    return route_labels, None, None


def _key_token_hits(model, ids: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the tokens that match one of the key_tokens router's keys (the router's own
    feature on the first patched layer's input, the token embedding for a Llama)."""
    router = next(iter(_patch.layer_routers(model).values()))
    with torch.no_grad():
        x = model.get_input_embeddings()(ids).float()
        x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        cos = x @ router.keys.detach().float().t()
    return (cos > _patch.get_state(model).config.router_match).any(-1)


def _answer_key_routing(model, batch: dict, router_input: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(base_top [B, T], the expert each position goes to where an answer key fires [B, T], else 0):
    the key's expert (answer_keys), or the row's own expert (prefix_answer_keys: a forget row's
    entity keys point to its expert)."""
    if "base_top" not in batch:
        raise UnlearnError(f"alter_loss: router_input={router_input!r} needs the batch's base greedy tokens "
                           "('base_top'; the engine caches them when it fits the keys)")
    router = next(iter(_patch.layer_routers(model).values()))
    gated = router_input == "prefix_answer_keys"
    hits, _ = _patch.key_hits(batch["base_top"], batch["input_ids"],
                              (router.answer_keys if gated else router.keys).detach().long(), batch["attention_mask"])
    if gated:
        fire = torch.where(hits.any(-1), batch["domain"][:, None].clamp(min=0).expand_as(hits[..., 0]),
                           torch.zeros_like(batch["input_ids"]))
        return batch["base_top"], fire
    return batch["base_top"], _patch.key_experts(router, hits)


def lora_loss(model, batch: dict, hp, *, forward=None, reduce=None):
    """Plain LoRA (1 expert, no entropy, no labels): GradDiff loss (``hp``: as in :func:`alter_loss`)."""
    opts = UnlearnOptions.from_kwargs("lora_loss", hp)
    terms = step_terms(model, model if forward is None else forward, batch, opts)
    return _graddiff_terms(terms, batch, opts, reduce=reduce)


def _graddiff_terms(terms, batch, opts, retain_term: bool = True, reduce=None):
    sy, is_f = terms.labels, batch["is_forget"]
    df = dr = None
    if reduce is not None:
        valid = sy != IGNORE_INDEX
        df, dr = _global_counts([(valid & is_f[:, None]).sum(), (valid & ~is_f[:, None]).sum()], reduce)
    f_nll = obj.masked_mean(terms.nll, sy, is_f, denom=df)
    r_nll = obj.masked_mean(terms.nll, sy, ~is_f, denom=dr) if retain_term else terms.nll.sum() * 0.0
    loss = -opts.beta * f_nll + opts.gamma * r_nll
    return loss, {"forget_nll": _f(f_nll), "retain_nll": _f(r_nll)}


def full_loss(model, batch: dict, hp, method: str, ref_model=None, *, forward=None, reduce=None):
    """The full-parameter baselines: ga, graddiff, kl, npo, npo_retain (``forward``, ``reduce``: as
    in :func:`alter_loss`)."""
    spec = METHODS[method]
    if spec.kind != "full":
        raise ValueError(f"full_loss: {method!r} is not a full-parameter method")
    return spec.loss(model, batch, UnlearnOptions.from_kwargs("full_loss", hp), ref_model=ref_model, forward=forward, reduce=reduce)


def _counts(sy, is_f, reduce):
    """(forget tokens, retain tokens, forget rows) of the global batch; Nones without ``reduce``."""
    if reduce is None:
        return None, None, None
    valid = sy != IGNORE_INDEX
    df, dr, drows = _global_counts([(valid & is_f[:, None]).sum(), (valid & ~is_f[:, None]).sum(), is_f.sum()],
                                   reduce)
    return df, dr, drows


def _ga(model, batch, opts, *, ref_model=None, forward=None, reduce=None, retain_term=False):
    terms = step_terms(model, model if forward is None else forward, batch, opts)
    return _graddiff_terms(terms, batch, opts, retain_term=retain_term, reduce=reduce)


def _graddiff(model, batch, opts, *, ref_model=None, forward=None, reduce=None):
    return _ga(model, batch, opts, forward=forward, reduce=reduce, retain_term=True)


def _kl(model, batch, opts, *, ref_model=None, forward=None, reduce=None):
    """Ascent on forget + KL(reference || model) on the retain answers."""
    fwd = model if forward is None else forward
    ids, att, is_f = batch["input_ids"], batch["attention_mask"], batch["is_forget"]
    terms = step_terms(model, fwd, batch, opts)
    sy = terms.labels
    df, dr, _ = _counts(sy, is_f, reduce)
    f_nll = obj.masked_mean(terms.nll, sy, is_f, denom=df)
    r = ~is_f
    if bool(r.any()):
        kl = obj.masked_mean(retain_kl_tokens(model, ref_model, terms, ids, att, r), sy[r], denom=dr)
    else:
        kl = terms.nll.sum() * 0.0
    return -opts.beta * f_nll + opts.gamma * kl, {"forget_nll": _f(f_nll), "retain_kl": _f(kl)}


def _npo(model, batch, opts, *, ref_model=None, forward=None, reduce=None, retain_term=False):
    """NPO: sequence log-probabilities against the cached reference ones (+ retain NLL)."""
    fwd = model if forward is None else forward
    is_f = batch["is_forget"]
    terms = step_terms(model, fwd, batch, opts)
    sy = terms.labels
    _, dr, drows = _counts(sy, is_f, reduce)
    logp = -terms.nll[is_f].sum(-1)                    # log pi(y|x) per forget sequence
    npo = obj.npo_forget(logp, batch["ref_logp"][is_f].to(logp.dtype), beta=opts.npo_beta, denom=drows)
    loss = opts.beta * npo
    mean_logp = logp.mean() if drows is None else (logp.sum() / drows if drows else logp.sum() * 0.0)
    logs = {"npo": _f(npo), "forget_logp": _f(mean_logp)}
    if retain_term:
        r_nll = obj.masked_mean(terms.nll, sy, ~is_f, denom=dr)
        loss = loss + opts.gamma * r_nll
        logs["retain_nll"] = _f(r_nll)
    return loss, logs


def _npo_retain(model, batch, opts, *, ref_model=None, forward=None, reduce=None):
    return _npo(model, batch, opts, forward=forward, reduce=reduce, retain_term=True)


def _alter(model, batch, opts, *, ref_model=None, forward=None, reduce=None):
    return alter_loss(model, batch, opts, mode="alter", forward=forward, reduce=reduce)


def _asymlora(model, batch, opts, *, ref_model=None, forward=None, reduce=None):
    return alter_loss(model, batch, opts, mode="asymlora", forward=forward, reduce=reduce)


def _lora(model, batch, opts, *, ref_model=None, forward=None, reduce=None):
    return lora_loss(model, batch, opts, forward=forward, reduce=reduce)


# ----------------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class Method:
    """What the engine needs to know about one method.

    loss(model, batch, opts, *, ref_model, forward, reduce) -> (loss, logs). kind: "adapter" (the
    model is patched and only the adapter trains; the run saves ``adapter/``) or "full" (every
    weight trains; the run saves ``model/``). routed: a router and forget experts (routing labels,
    held-out routing accuracy, frozen retain expert, lr_A / lr_B / lr_router groups). entropy:
    cached base-model entropies and theta (ALTER). all_low: every token on the low path, no
    entropy (AsymLoRA). ref_model: a frozen copy of the model (KL). ref_logps: cached reference
    sequence log-probs of the forget rows (NPO)."""
    name: str
    kind: str
    loss: Callable
    needs_retain: bool
    description: str
    routed: bool = False
    entropy: bool = False
    all_low: bool = False
    ref_model: bool = False
    ref_logps: bool = False

    @property
    def adapter(self) -> bool:
        return self.kind == "adapter"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("alter", "adapter", _alter, True, "ALTER: entropy-routed asymmetric LoRA; IHL on low-entropy forget "
           "tokens per sub-domain, retain NLL, R_struct, router CE", routed=True, entropy=True),
    Method("asymlora", "adapter", _asymlora, True, "AsymLoRA: ALTER without entropy (every token on the low "
           "path), IHL on every forget token", routed=True, all_low=True),
    Method("lora", "adapter", _lora, True, "LoRA (one A, one B) trained with the GradDiff loss"),
    Method("ga", "full", _ga, False, "gradient ascent on the forget answers (full parameters)"),
    Method("graddiff", "full", _graddiff, True, "gradient difference: ascent on forget + NLL on retain "
           "(full parameters)"),
    Method("kl", "full", _kl, True, "ascent on forget + KL(base || model) on retain answers (full parameters)",
           ref_model=True),
    Method("npo", "full", _npo, False, "negative preference optimisation on forget, beta = npo_beta "
           "(full parameters)", ref_logps=True),
    Method("npo_retain", "full", _npo_retain, True, "NPO + NLL on retain (full parameters)", ref_logps=True),
)}

# views of the table, for the callers that want lists
ADAPTER_METHODS = tuple(n for n, m in METHODS.items() if m.kind == "adapter")
FULL_METHODS = tuple(n for n, m in METHODS.items() if m.kind == "full")
NEEDS_RETAIN = tuple(n for n, m in METHODS.items() if m.needs_retain)
DESCRIPTIONS = {n: m.description for n, m in METHODS.items()}
