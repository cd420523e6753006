"""A run's set-up: load and tokenise the rows, patch the model (adapter methods) or open every
weight (full-parameter methods), assign forget rows to experts, initialise the router, cache
what the method needs from the base model. :func:`prepare_alter` is this set-up alone."""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import torch

from ..config import EMBEDDING_KEY_ROUTERS, AlterConfig
from . import _model_api as _m
from . import caches
from .batches import UnlearnData
from .context import RunContext
from .data import DataError, prepare, report_rows
from .methods import METHODS
from .options import ENGINE_ROUTER_INPUT, OptionError, UnlearnOptions, check_expert_count
from .result import UnlearnError
from .subdomains import (choose_k, fit_answer_gate, fit_answer_keys, fit_prefix_router, init_router, kmeans,
                         map_domain_labels, pooled_features)
from .util import device_of, pad_id_of


def load_examples(run: RunContext, forget, retain, tokenizer, report: bool = False) -> tuple[list, list]:
    """Tokenised forget / retain examples (``run.rows`` gets the rows); report: print the rows
    loaded (stderr; warns on forget / retain overlap)."""
    dkw = run.data_kwargs()
    f_rows, f_ex = prepare(forget, tokenizer, "forget", **dkw)
    needs_retain = run.spec.needs_retain
    r_rows, r_ex = None, []
    if retain is not None or needs_retain:
        if retain is None:
            raise DataError(f"retain: method {run.method!r} needs a retain set")
        r_rows, r_ex = prepare(retain, tokenizer, "retain", allow_empty=not needs_retain, **dkw)
    if report:
        report_rows(f_rows, r_rows, forget, retain)
    run.rows = (f_rows, r_rows)
    return f_ex, r_ex


def prepare_run(run: RunContext, forget, retain, tokenizer, alter_config: AlterConfig | None = None,
                report: bool = False) -> UnlearnData:
    """Set ``run.data`` up for ``run.spec``: examples, model set-up and the method's caches."""
    if run.opts.forget_loss != "ihl" and not run.spec.routed:
        raise OptionError("forget_loss", "", run.opts.forget_loss,
                          detail=f"forget_loss={run.opts.forget_loss!r} is an option of the routed adapter methods "
                                 f"(alter, asymlora), not of {run.method!r}")
    f_ex, r_ex = load_examples(run, forget, retain, tokenizer, report=report and run.main)
    pad_id = pad_id_of(tokenizer)
    run.data = UnlearnData(forget=f_ex, retain=r_ex, pad_id=pad_id, forget_domain=[0] * len(f_ex))
    if run.spec.adapter:
        setup_adapter(run, alter_config)
        run.threshold_source = "config"
    else:
        setup_full(run)
    if run.spec.entropy:
        caches.cache_entropies(run)
        theta, run.threshold_source = caches.resolve_threshold(run)
        if run.threshold_source != "config":
            set_config(run, threshold=theta)
    if run.spec.ref_logps:
        caches.cache_ref_logps(run)
    if run.spec.routed and run.opts.forget_loss == "generic":
        caches.cache_generic(run)
    run.data.config = run.cfg
    return run.data


def set_config(run: RunContext, **changes) -> None:
    """The set-up's one write of the patched model's AlterConfig: a new config with ``changes``
    (the old object is left as it was)."""
    st = _m.get_state(run.model)
    st.config = dataclasses.replace(st.config, **changes)


def prepare_alter(model, forget, retain, tokenizer, alter_config: AlterConfig | None = None, seed: int = 0,
                  batch_size: int = 4, **hparams) -> UnlearnData:
    """The set-up of ``unlearn(method="alter")`` without its loop: tokenise the rows, patch the
    model (if needed), assign forget rows to experts (domain labels or k-means), initialise the
    router, pick theta (``threshold_quantile``) and cache the base-model entropies. hparams: the
    data and sub-domain options of ``UnlearnOptions``."""
    opts = UnlearnOptions.from_kwargs("prepare_alter", hparams, list_known=False)
    run = RunContext(model, METHODS["alter"], opts, batch_size, seed, device_of(model), tokenizer=tokenizer)
    return prepare_run(run, forget, retain, tokenizer, alter_config)


# ----------------------------------------------------------------------------------- full parameters
def setup_full(run: RunContext) -> None:
    """Every weight trains (flags restored at the end); KL keeps a frozen copy as its reference."""
    model = run.model
    if _m.is_patched(model):
        raise UnlearnError(f"unlearn: method {run.method!r} trains the full model; this model is patched with "
                           "ALTER (call alter_kernels.unpatch(model) first)")
    orig = {n: p.requires_grad for n, p in model.named_parameters()}

    def restore_flags():
        for n, p in model.named_parameters():
            p.requires_grad_(orig.get(n, p.requires_grad))
    run.undo.append(restore_flags)
    for p in model.parameters():
        p.requires_grad_(True)
    if run.spec.ref_model:
        run.ref_model = copy.deepcopy(model).eval()
        for p in run.ref_model.parameters():
            p.requires_grad_(False)


# ----------------------------------------------------------------------------------- adapters
def setup_adapter(run: RunContext, alter_config: AlterConfig | None) -> None:
    """Patch (if needed), assign forget rows to experts, initialise the router; ``run.data`` gets
    the config, each forget row's expert and the domain map."""
    if not run.spec.routed:
        cfg, assign, mapping = _setup_lora(run, alter_config), [0] * len(run.data.forget), {}
        trained = [0]
    else:
        cfg, assign, mapping, trained = _setup_routed(run, alter_config)
    d = run.data
    d.forget_domain, d.domain_map, run.trained_experts = assign, mapping, trained
    if run.spec.all_low:
        # AsymLoRA routes every token on the low path, in training and at inference: theta = +inf
        # makes every entropy low, so the model needs none (saved so in the adapter config)
        set_config(run, threshold=math.inf, inference_entropy="none")


def _setup_lora(run: RunContext, alter_config):
    opts, model = run.opts, run.model
    base = alter_config or opts.base_config or AlterConfig()
    if _m.is_patched(model):
        cfg = _m.get_state(model).config
        if cfg.num_forget_experts != 0:
            raise UnlearnError("unlearn[lora]: the model is already patched with forget experts; plain LoRA "
                               "needs a fresh model (or one patched with num_forget_experts=0)")
        return cfg
    # one expert: both routing branches give it weight 1, so no entropy is needed at inference
    cfg = dataclasses.replace(base, num_forget_experts=0, inference_entropy="none",
                              rank=opts.rank or base.rank, alpha=opts.alpha or base.alpha,
                              init_seed=base.init_seed if base.init_seed is not None else run.seed)
    _m.patch(model, cfg)
    return cfg


class _Features:
    """Pooled base-model features of the forget / retain rows, computed at most once."""

    def __init__(self, run: RunContext):
        self.run, self._f, self._r = run, None, None

    def forget(self, why: str):
        if self._f is None:
            r = self.run
            self._f = pooled_features(r.model, r.data.forget, r.data.pad_id, r.batch_size, r.dev,
                                      desc=r.show and f"{why}: forget features")
        return self._f

    def retain(self, why: str):
        r = self.run
        return pooled_features(r.model, r.data.retain, r.data.pad_id, r.batch_size, r.dev,
                               desc=r.show and f"{why}: retain features")


def _setup_routed(run: RunContext, alter_config):
    """ALTER / AsymLoRA: (config, expert of each forget row, domain map, trained experts)."""
    model, f_ex = run.model, run.data.forget
    patched = _m.is_patched(model)
    run.n_frozen = _m.frozen_experts(model) if patched else 0
    first = max(1, run.n_frozen)
    labels, mapping = map_domain_labels([e.domain for e in f_ex], first_expert=first)
    want = run.opts.num_forget_experts
    feats = _Features(run)
    if patched:
        cfg = _check_patched(model, alter_config)
        n_avail = cfg.num_experts - first
        if n_avail < 1:
            raise UnlearnError("unlearn: every forget expert of this patched model is frozen; call "
                               "alter_kernels.add_forget_experts(model, n) to add experts for a new request")
    else:
        cfg = _new_config(run, alter_config, mapping, want, feats)
        _m.patch(model, cfg)
        n_avail = cfg.num_forget_experts
    if mapping and len(mapping) > n_avail:
        raise UnlearnError(f"unlearn: the forget data has {len(mapping)} domains {sorted(mapping)} but only "
                           f"{n_avail} trainable forget expert(s); use a config with more experts")
    if mapping:
        assign = labels
    else:
        k = min(n_avail if want in (None, "auto") or patched else int(want), len(f_ex))
        assign = [first] * len(f_ex) if k <= 1 else \
            [first + int(x) for x in kmeans(feats.forget("k-means")[-1], k, seed=run.seed)[0]]
        mapping = {f"cluster{c - first}": c for c in sorted(set(assign))}
    _init_routing(run, assign, feats)
    return cfg, assign, mapping, sorted(set(assign))


def _check_patched(model, alter_config):
    cfg = _m.get_state(model).config
    if alter_config is not None and alter_config.to_dict() != cfg.to_dict():
        raise UnlearnError("unlearn: the model is already patched with a different AlterConfig than alter_config")
    return cfg


def _new_config(run: RunContext, alter_config, mapping, want, feats: _Features) -> AlterConfig:
    """The AlterConfig to patch with: ``alter_config``, or the template with N from the domain
    labels, ``num_forget_experts`` (an int or "auto": k-means' best k) or the template."""
    opts, f_ex = run.opts, run.data.forget
    base = alter_config or opts.base_config or AlterConfig()
    if alter_config is None:
        if mapping:
            n = len(mapping)
        elif want is None:
            n = base.num_forget_experts
        elif want == "auto":
            n = (choose_k(feats.forget("k-means")[-1], opts.kmeans_max_k, run.seed,
                          desc=run.show and "k-means: choosing N") if len(f_ex) > 2 else 1)
        else:
            n = int(want)
            check_expert_count(n, len(f_ex))
        if n < 1:
            raise UnlearnError(f"unlearn[{run.method}]: needs at least one forget expert, got {n}")
        base = dataclasses.replace(base, num_forget_experts=n, rank=opts.rank or base.rank,
                                   alpha=opts.alpha or base.alpha,
                                   router_input=opts.router_input or (
                                       base.router_input if opts.base_config is not None else ENGINE_ROUTER_INPUT),
                                   init_seed=base.init_seed if base.init_seed is not None else run.seed)
    if base.num_forget_experts < 1:
        raise UnlearnError(f"unlearn[{run.method}]: alter_config.num_forget_experts must be >= 1")
    if alter_config is not None:                  # N given by the caller: at most one expert per forget row
        check_expert_count(base.num_forget_experts, len(f_ex))
    return base


def _init_routing(run: RunContext, assign: list[int], feats: _Features) -> None:
    """Fit the prefix-match router's keys, or place the token router's columns at the centroids."""
    model, d, opts = run.model, run.data, run.opts
    if _m.get_state(model).config.router_input == "answer_keys":
        caches.cache_tops(run)
        info = fit_answer_keys(model, d.forget, assign, d.forget_top, d.retain, init_weights=opts.router_init,
                               special_ids=[d.pad_id])
        if info["uncovered_forget_rows"]:
            warnings.warn(f"unlearn[{run.method}]: {info['uncovered_forget_rows']} forget row(s) have no answer token "
                          "that the base model states itself and no retain row holds; the answer-key router "
                          "cannot tell them from retain rows")
    elif _m.get_state(model).config.router_input in EMBEDDING_KEY_ROUTERS:
        info = fit_prefix_router(model, d.forget, assign, d.retain, init_weights=opts.router_init,
                                 special_ids=[d.pad_id])
        if _m.get_state(model).config.router_input == "prefix_answer_keys":
            caches.cache_tops(run)
            gate = fit_answer_gate(model, d.forget, d.forget_top, special_ids=[d.pad_id])
            if gate["uncovered_forget_rows"]:
                warnings.warn(f"unlearn[{run.method}]: {gate['uncovered_forget_rows']} forget row(s) have no answer "
                              "token the base model states itself; the router never fires on them")
        if info["uncovered_forget_rows"]:
            warnings.warn(f"unlearn[{run.method}]: {info['uncovered_forget_rows']} forget row(s) have no token that "
                          "is absent from the retain rows; the prefix-match router cannot tell them from retain rows")
    elif opts.router_init:
        f = feats.forget("router init")
        r = feats.retain("router init") if d.retain and run.n_frozen == 0 else None
        init_router(model, f, torch.tensor(assign), r, sorted(set(assign)), init_retain=run.n_frozen == 0)


# ----------------------------------------------------------------------------------- training-only set-up
def install_train_hooks(run: RunContext) -> None:
    """Adapter methods: keep frozen experts (and, with ``retain_expert="frozen"``, B_0) and the
    shared A of a continued run unchanged; AsymLoRA opens A's gradient for every row. Undone at
    the end of the run."""
    model, opts = run.model, run.opts
    n_frozen = _m.frozen_experts(model) if run.spec.routed else 0
    hooks = list(_m.freeze_leading_experts(model, n_frozen))
    if opts.retain_expert == "frozen" and run.spec.routed and n_frozen == 0:
        # B_0 keeps its value (zero for a fresh adapter: retain-routed tokens compute the base model)
        hooks += _m.freeze_leading_experts(model, 1, router=False)
    frozen_a = []
    if n_frozen:
        for a in _m.adapter_parameters(model)["A"]:
            if a.requires_grad:
                a.requires_grad_(False)
                frozen_a.append(a)
    if run.spec.all_low:
        hooks.append(_m.add_plan_hook(model, _open_a))
    run.n_frozen = n_frozen
    run.undo.append(lambda: [h.remove() for h in hooks])
    run.undo.append(lambda: [a.requires_grad_(True) for a in frozen_a])


def _open_a(plan, layer_name):
    """AsymLoRA: every token takes the low path, yet A must learn (it is a LoRA A): open A's
    gradient mask for all rows of every plan."""
    plan.a_grad_mask = None
