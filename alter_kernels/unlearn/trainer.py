"""``alter_kernels.unlearn``: one function that runs ALTER or a baseline on a HF causal LM.

See docs/unlearning.md for the user guide. Design notes:

- One optimisation step = one mixed batch: ``batch_size`` forget rows + ``batch_size`` retain
  rows, one forward. An epoch is one pass over the forget set (retain rows cycle); the shuffle
  of each epoch is a pure function of (seed, epoch), so a resumed run sees the same batches.
- ALTER's base-model entropies (routing S_{q_route} and the R_struct reference S_{q_s}) are
  computed once per example with ``token_entropy`` (adapters off) before training and cached.
- Routing labels are per token: every real token of a forget row carries its domain's expert
  id, of a retain row 0, padding -1. So the router learns to route questions too (at inference
  only the question exists when the first answer token is routed).
- Checkpoints (every ``checkpoint_every`` steps and at the end, when ``out_dir`` is set) hold
  the trainable weights, optimizer, RNG states, step and history; ``resume=True`` continues.
- A non-finite loss or gradient stops the run before the optimizer step (the model keeps the
  last good weights) with :class:`UnlearnDivergedError`; the last checkpoint is kept.
- ``distributed="ddp"|"fsdp2"`` (default: DDP when launched with WORLD_SIZE > 1) splits every
  step's batch over the processes with a loss normalisation that gives the single-process
  update; see :mod:`alter_kernels.unlearn.distributed` and docs/scaling.md.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import random
import signal
import threading
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch

import importlib

_patch = importlib.import_module("alter_kernels.patch")  # the module (ak.patch is the function)
from .._fsio import (OutDirLock, OutputError, atomic_dir, check_dir_target, check_file_target, clean_stale_temp,
                     ensure_dir, is_within, write_json)
from ..adapter_io import CONFIG_NAME, WEIGHTS_NAME, save_adapter
from ..config import AlterConfig
from ..reference.losses import sequence_logprob
from . import checkpoint as ckpt
from . import distributed as D
from . import methods as M
from .data import (DataError, Example, collate, epoch_order, pad_float, prepare, report_rows, steps_per_epoch,
                   tokenize_rows)
from .experts import freeze_leading_experts, frozen_experts
from .options import OptionError, check_expert_count, validate_options
from .subdomains import choose_k, fit_prefix_router, init_router, kmeans, map_domain_labels, pooled_features

import logging

_log = logging.getLogger("alter_kernels.unlearn")

DEFAULTS: dict[str, Any] = {
    "lr": 1e-5,              # full-parameter baselines
    "lr_A": 1e-5,            # ALTER / AsymLoRA shared A (paper)
    "lr_B": 1e-3,            # experts B (paper); plain LoRA uses it for A and B
    "lr_router": 1e-3,       # router W_g
    "beta": 1.0,             # forget term weight (paper)
    "gamma": 1.0,            # retain term weight (paper)
    "lam": 0.01,             # R_struct weight (paper lambda)
    "rho": 1.0,              # router cross-entropy weight
    "npo_beta": 0.1,         # NPO temperature
    "struct_mode": "drift",  # "drift" (default) or "grad_norm" (paper form; reference backend)
    "struct_q": 0.5,         # q_s of R_struct
    "max_length": 512,
    "chat_template": False,
    "prompt_format": "Question: {question}\nAnswer:",
    "num_forget_experts": None,  # int, "auto", or None (from labels / alter_config)
    "kmeans_max_k": 8,
    "router_init": True,     # router columns at normalised centroids
    "weight_decay": 0.0,
    "grad_clip": 0.0,        # 0: no clipping (the norm is still checked for NaN)
    "warmup_steps": 0,
    "checkpoint_every": 0,   # steps; 0: only at the end (needs out_dir)
    "resume": False,
    "eval_each_epoch": True,
    "eval_max_examples": 256,
    "rank": None, "alpha": None,  # shortcuts for the AlterConfig when alter_config is None
    "threshold_quantile": None,  # ALTER: set theta to this quantile of the base answer-token entropies
    "threshold_auto": 0.5,   # ALTER: if the configured theta puts >= 98% of the answer tokens on one side, use
                             # this quantile of the base answer-token entropies instead (None: keep theta)
    "route_labels": "content",  # router labels on "content" tokens (answer tokens and the token before each)
                                # or on "all" real tokens (question template too)
    "router_eval": True,     # held-out routing accuracy after each epoch (alter, asymlora)
    "retain_expert": "train",  # ALTER / AsymLoRA: "train" B_0 (spec 4) or keep it "frozen" (docs/unlearning.md:
                             # on the DEV seed, freezing it kept utility at the finetuned model's)
    "router_input": None,    # the router of the AlterConfig the engine builds (alter_config None): "prefix_match"
                             # (keys fitted from the data; measured in docs/unlearning.md) or "token" (ALTER_SPEC's
                             # per-token linear router); None: base_config's if given, else "prefix_match"
    "base_config": None,     # AlterConfig template when alter_config is None (N still from labels/k-means)
}


class UnlearnError(RuntimeError):
    """The run cannot proceed as asked."""


class UnlearnInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run with ``out_dir``: the run finished its current step, wrote
    ``checkpoint`` (the state after ``step`` steps) and stopped; ``resume=True`` continues."""

    def __init__(self, msg: str, step: int, checkpoint: str | None):
        super().__init__(msg)
        self.step, self.checkpoint = step, checkpoint


class UnlearnDivergedError(UnlearnError):
    """A non-finite loss or gradient stopped the run; ``checkpoint`` is the last good one."""

    def __init__(self, msg: str, step: int, checkpoint: str | None, history: list):
        super().__init__(msg)
        self.step, self.checkpoint, self.history = step, checkpoint, history


@dataclasses.dataclass
class UnlearnResult:
    model: Any
    method: str
    history: list
    metrics: list
    seconds: float
    steps: int
    config: AlterConfig | None = None
    domain_map: dict = dataclasses.field(default_factory=dict)
    out_dir: str | None = None
    adapter_dir: str | None = None
    model_dir: str | None = None
    trained_experts: list = dataclasses.field(default_factory=list)
    threshold: float | None = None          # ALTER's theta after set-up (also in config / the adapter)
    threshold_source: str | None = None     # "config", "quantile" (threshold_quantile) or "auto" (threshold_auto)

    @property
    def router_accuracy(self) -> dict | None:
        """Held-out routing accuracy of the last epoch ({"forget", "retain", "overall", "per_layer", ...})."""
        for m in reversed(self.metrics):
            if "router_accuracy" in m:
                return m["router_accuracy"]
        return None

    @property
    def high_entropy_share(self) -> float:
        vals = [h["high_entropy_share"] for h in self.history if "high_entropy_share" in h
                and not math.isnan(h["high_entropy_share"])]
        return sum(vals) / len(vals) if vals else float("nan")


# ----------------------------------------------------------------------------------- helpers
def _fingerprint(method, forget: list[Example], retain: list[Example], hp, seed, batch_size) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([method, seed, batch_size, {k: v for k, v in sorted(hp.items())
                                                     if k not in ("resume", "checkpoint_every")}],
                        default=str).encode())
    for ex in forget + retain:
        h.update(np.asarray(ex.input_ids, dtype=np.int64).tobytes())
        h.update(np.asarray(ex.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _device_of(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _batched(n: int, bs: int):
    for s in range(0, n, bs):
        yield list(range(s, min(n, s + bs)))


def _bar(it, desc: str | None, unit: str = "batch"):
    """``it`` with a tqdm progress line named ``desc`` (None: no line)."""
    if not desc:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, unit=unit, dynamic_ncols=True)


def _map_batches(n: int, bs: int, fn, ctx=None, lockstep: bool = False, desc: str | None = None) -> list:
    """fn(idx) for each batch of indices, concatenated; with a DistContext the batches are split
    round-robin over the ranks (the same batches as one process: bit-identical results) and
    gathered, so every rank gets the whole list. desc: a progress line (single process)."""
    groups = list(_batched(n, bs))
    if ctx is None:
        per = [fn(idx) for idx in _bar(groups, desc)]
    else:
        per = ctx.map_batches(len(groups), lambda j: fn(groups[j]), lockstep=lockstep)
    return [x for part in per for x in part]


@torch.no_grad()
def _entropy_cache(model, exs: list[Example], pad_id, bs, dev, q_route, q_struct, ctx=None, desc=None):
    """Per example: routing entropies e_t (q_route) and base S_{q_s} of the same distributions."""
    def one(idx):
        ids, att, _ = collate([exs[i] for i in idx], pad_id)
        ids, att = ids.to(dev), att.to(dev)
        e = _patch.token_entropy(model, ids, att, q=q_route).float().cpu()
        s = _patch.token_entropy(model, ids, att, q=q_struct).float().cpu()
        return [(e[j, :len(exs[i].input_ids)].clone(), s[j, :len(exs[i].input_ids)].clone())
                for j, i in enumerate(idx)]
    pairs = _map_batches(len(exs), bs, one, ctx, desc=desc)
    return [p[0] for p in pairs], [p[1] for p in pairs]


@torch.no_grad()
def _ref_logps(model, exs: list[Example], pad_id, bs, dev, ctx=None, desc=None) -> list[float]:
    def one(idx):
        ids, att, lab = collate([exs[i] for i in idx], pad_id)
        logits = model(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=False).logits
        return sequence_logprob(logits, lab.to(dev)).float().cpu().tolist()
    return _map_batches(len(exs), bs, one, ctx, desc=desc)


# ----------------------------------------------------------------------------------- output directory
_OUT_FILES = ("metrics.json", "history.json", ckpt.CHECKPOINT_NAME, ckpt.SIDECAR_NAME, "run.json")


def prepare_out_dir(out_dir, model=None, method: str = "alter") -> str:
    """Check ``out_dir`` before any work: create it, refuse it if it is (or sits under) a file or
    a symlinked output, if it is unwritable, if it equals or contains the model's own directory
    (a full-parameter run would overwrite the base weights), or if an output name there is a
    directory or a symlink. Raises OutputError or OptionError (option "out_dir")."""
    out_dir = os.fspath(out_dir)
    src = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if isinstance(src, str) and src and os.path.isdir(src) and is_within(src, out_dir):
        raise OptionError("out_dir", "", out_dir,
                          detail=f"{out_dir} contains (or is) the model's directory {src}; the run would write over "
                                 "its inputs; choose an output directory outside it")
    try:
        ensure_dir(out_dir)
    except FileExistsError:
        raise OutputError(f"{out_dir} exists and is not a directory") from None
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot create the output directory {out_dir} ({exc.strerror or exc})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to the output directory {out_dir} (permission denied)")
    for name in _OUT_FILES:
        check_file_target(os.path.join(out_dir, name))
    sub = os.path.join(out_dir, "adapter" if method in M.ADAPTER_METHODS else "model")
    check_dir_target(sub)
    if method in M.ADAPTER_METHODS:
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            check_file_target(os.path.join(sub, name))
    return out_dir


def _guard_out_dir(fn):
    """unlearn(..., out_dir=...): check out_dir (prepare_out_dir), hold its lock for the whole run
    (the main process of a data-parallel run) and remove temp files a killed run left there."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            b = sig.bind(*args, **kwargs)
            mode = D.resolve_mode(b.arguments.get("distributed"))
        except (TypeError, ValueError):
            return fn(*args, **kwargs)                # fn raises the error
        out_dir = b.arguments.get("out_dir")
        if out_dir is None:
            return fn(*args, **kwargs)
        if mode is not None:
            import torch.distributed as dist
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))
            if rank != 0:
                return fn(*args, **kwargs)
        method = str(b.arguments.get("method", "alter")).lower().replace("-", "_").replace("+", "_")
        prepare_out_dir(out_dir, b.arguments.get("model"), method)
        with OutDirLock(out_dir):
            clean_stale_temp(out_dir, os.path.join(out_dir, "adapter"))
            return fn(*args, **kwargs)
    return run


class _DeferredSigint:
    """While active (main thread, default SIGINT handler only), Ctrl-C sets ``raised`` instead of
    interrupting: the loop finishes its step, checkpoints and stops. A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.raised = False
        self._old = None

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
        return False


# ----------------------------------------------------------------------------------- main entry
@_guard_out_dir
def unlearn(model, forget, retain, method: str = "alter", tokenizer=None, alter_config: AlterConfig | None = None,
            epochs: int = 3, max_steps: int | None = None, batch_size: int = 4, seed: int = 0, device=None,
            progress: bool = True, out_dir: str | None = None, callback: Callable | None = None,
            distributed: str | None = None, **hparams) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` while keeping ``retain``; see docs/unlearning.md.

    method: "alter", "asymlora", "lora" (adapter methods: the model is patched in place and
    returned patched), or "ga", "graddiff", "kl", "npo", "npo_retain" (full-parameter: the
    weights are updated in place). forget / retain: list of dict rows or a file path (JSON,
    JSONL, TXT) or "hf:NAME[:CONFIG][@SPLIT]". callback(record) is called after each step.
    hparams: see ``alter_kernels.unlearn.trainer.DEFAULTS``.
    distributed: None / "auto" (DDP when launched by torchrun / accelerate with WORLD_SIZE > 1),
    "none", "ddp" or "fsdp2" (``fully_shard``): every rank calls ``unlearn`` with the same
    arguments, takes its shard of each batch, and gets the single-process result; only rank 0
    writes to ``out_dir``. The process group is initialised from the launcher's environment if
    needed (nccl on CUDA, gloo on CPU) and left open. docs/scaling.md.
    """
    t_start = time.perf_counter()
    method = str(method).lower().replace("-", "_").replace("+", "_")
    if method == "npo_rt":
        method = "npo_retain"
    if method not in M.METHODS:
        raise ValueError(f"unlearn: unknown method {method!r}; choose one of {list(M.METHODS)}")
    unknown = sorted(set(hparams) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unlearn: unknown option(s) {unknown}; known options are {sorted(DEFAULTS)}")
    hp = {**DEFAULTS, **hparams}
    validate_options(hp, epochs=epochs, batch_size=batch_size, max_steps=max_steps, seed=seed)
    if tokenizer is None:
        raise ValueError("unlearn: tokenizer= is required (the rows are text)")
    if device is not None:
        model.to(device)
    dev = _device_of(model)
    mode = D.resolve_mode(distributed)
    if mode and method == "alter" and hp["struct_mode"] == "grad_norm" and hp["lam"] != 0:
        raise UnlearnError("unlearn: struct_mode='grad_norm' is not supported with distributed training (the squared "
                           "gradient norm of the global batch does not split over shards); use 'drift'")
    ctx = D.DistContext(mode, dev) if mode else None
    main = ctx is None or ctx.is_main
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)

    # ---------------------------------------------------------------- data
    dkw = dict(max_length=hp["max_length"], chat_template=hp["chat_template"], prompt_format=hp["prompt_format"])
    f_rows, f_ex = prepare(forget, tokenizer, "forget", **dkw)
    needs_retain = method in M.NEEDS_RETAIN
    r_rows = None
    if retain is None and not needs_retain:
        r_ex = []
    else:
        if retain is None:
            raise DataError(f"retain: method {method!r} needs a retain set")
        r_rows, r_ex = prepare(retain, tokenizer, "retain", allow_empty=not needs_retain, **dkw)
    if main:
        report_rows(f_rows, r_rows, forget, retain)      # rows loaded (stderr); warns on forget/retain overlap
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    # ---------------------------------------------------------------- model set-up
    cfg = None
    domain_map: dict = {}
    trained_experts: list[int] = []
    hooks: list = []
    ref_model = None
    f_dom = [0] * len(f_ex)
    orig_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    frozen_a: list = []
    show = progress and main
    if method in M.ADAPTER_METHODS:
        cfg, f_dom, domain_map, trained_experts = _setup_adapter(model, method, f_ex, r_ex, alter_config, hp,
                                                                 pad_id, batch_size, seed, dev, progress=show)
        cfg = _patch.get_state(model).config
        n_frozen = frozen_experts(model) if method != "lora" else 0
        hooks += freeze_leading_experts(model, n_frozen)
        if hp["retain_expert"] == "frozen" and method in ("alter", "asymlora") and n_frozen == 0:
            # B_0 keeps its value (zero for a fresh adapter: retain-routed tokens compute the base model)
            hooks += freeze_leading_experts(model, 1, router=False)
        groups = _patch.adapter_parameters(model)
        if n_frozen:
            for a in groups["A"]:
                if a.requires_grad:
                    a.requires_grad_(False)
                    frozen_a.append(a)
        if method == "asymlora":
            hooks += _all_rows_update_a(model)
            # AsymLoRA routes every token on the low path, in training and at inference: theta = +inf
            # makes every entropy low, so the model needs none (saved so in the adapter config)
            st = _patch.get_state(model)
            st.config = cfg = dataclasses.replace(cfg, threshold=math.inf, inference_entropy="none")
    else:
        if _patch.is_patched(model):
            raise UnlearnError(f"unlearn: method {method!r} trains the full model; this model is patched with "
                               "ALTER (call alter_kernels.unpatch(model) first)")
        n_frozen = 0
        for p in model.parameters():
            p.requires_grad_(True)
        if method == "kl":
            ref_model = copy.deepcopy(model).eval()
            for p in ref_model.parameters():
                p.requires_grad_(False)
    # ---------------------------------------------------------------- held-out routing set
    held = None
    if method in ("alter", "asymlora") and hp["router_eval"] and hp["eval_each_epoch"]:
        held = _heldout_routing_set(f_rows, f_dom, r_rows, tokenizer, dkw, hp["eval_max_examples"], seed)
    # ---------------------------------------------------------------- caches
    f_cache = r_cache = None
    threshold_source = "config" if cfg is not None else None
    st_thr = cfg.threshold if cfg is not None else None
    if method == "alter":
        q_route = cfg.q_route
        f_cache = _entropy_cache(model, f_ex, pad_id, batch_size, dev, q_route, hp["struct_q"], ctx,
                                 desc=show and "entropy cache (forget)")
        r_cache = (_entropy_cache(model, r_ex, pad_id, batch_size, dev, q_route, hp["struct_q"], ctx,
                                  desc=show and "entropy cache (retain)") if r_ex else ([], []))
        if hp["threshold_quantile"] is not None and frozen_experts(model):
            warnings.warn("unlearn: threshold_quantile ignored: this adapter has frozen experts (continued "
                          f"unlearning) and keeps its threshold {cfg.threshold}")
        elif not frozen_experts(model):
            theta, threshold_source, low_share = _choose_threshold(cfg.threshold, f_ex + r_ex, f_cache[0] + r_cache[0],
                                                                   hp)
            if threshold_source != "config":
                st = _patch.get_state(model)
                st.config = dataclasses.replace(cfg, threshold=theta)
                cfg = st.config
            if threshold_source == "auto" and main:
                _log.info("unlearn[alter]: threshold %s (q_route %s) put %.1f%% of the answer tokens on the low side; "
                          "theta set to %.4g, the %s-quantile of the base answer-token entropies (threshold_auto)",
                          st_thr, cfg.q_route, 100 * low_share, theta, hp["threshold_auto"])
                if progress:
                    print(f"unlearn[alter]: threshold {st_thr} put {100 * low_share:.1f}% of the answer tokens on the "
                          f"low side; using theta = {theta:.4g} (the {hp['threshold_auto']}-quantile of the base "
                          "answer-token entropies, threshold_auto)")
    f_ref = (_ref_logps(model, f_ex, pad_id, batch_size, dev, ctx, desc=show and "reference log-probs (forget)")
             if method in ("npo", "npo_retain") else None)

    # ---------------------------------------------------------------- data parallel, optimizer
    fwd = model
    if ctx is not None:
        if method in M.ADAPTER_METHODS:
            hooks += D.anchor_adapter_grads(model)      # every adapter parameter gets a gradient each step
        fwd = ctx.wrap(model)                           # after the caches (plain forwards), before the optimizer
    if method in M.ADAPTER_METHODS:
        groups = _patch.adapter_parameters(model)      # FSDP2: the sharded parameters
        if method == "lora":
            params = [{"params": groups["A"] + groups["B"], "lr": hp["lr_B"]}]
        else:
            params = [{"params": [p for p in groups["A"] if p.requires_grad], "lr": hp["lr_A"]},
                      {"params": groups["B"], "lr": hp["lr_B"]},
                      {"params": groups["router"], "lr": hp["lr_router"]}]
            params = [g for g in params if g["params"]]
    else:
        params = [{"params": [p for p in model.parameters()], "lr": hp["lr"]}]
    optimizer = torch.optim.AdamW(params, weight_decay=hp["weight_decay"], betas=(0.9, 0.999), eps=1e-8)
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    # ---------------------------------------------------------------- schedule, resume
    spe = steps_per_epoch(len(f_ex), batch_size)
    total = max_steps if max_steps is not None else epochs * spe
    fp = _fingerprint(method, f_ex, r_ex, {k: v for k, v in hp.items()}, seed, batch_size)
    history: list[dict] = []
    metrics: list[dict] = []
    start = 0
    last_ckpt = None
    if out_dir is not None and main:
        ensure_dir(out_dir)
    trainable = (lambda: _patch.adapter_state_dict(model)) if method in M.ADAPTER_METHODS else \
        (lambda: dict(model.state_dict()))
    if hp["resume"]:
        if out_dir is None:
            raise UnlearnError("unlearn: resume=True needs out_dir (where the checkpoint is)")
        ck = ckpt.load_checkpoint(out_dir)
        if ck is None:
            warnings.warn(f"unlearn: resume requested but {out_dir} has no checkpoint; starting from step 0")
        else:
            if ck["method"] != method or ck["fingerprint"] != fp:
                raise UnlearnError(f"resume: the checkpoint in {out_dir} was written by a different run (method "
                                   f"{ck['method']!r}, data/options fingerprint {ck['fingerprint']}); this run is "
                                   f"{method!r} with fingerprint {fp}")
            if ck.get("extra", {}).get("fsdp2", False) != (mode == "fsdp2"):
                raise UnlearnError(f"resume: the checkpoint in {out_dir} was written "
                                   f"{'under' if ck.get('extra', {}).get('fsdp2') else 'without'} FSDP2 and this "
                                   "run must be the same (the optimizer state layouts differ)")
            own = trainable()
            with torch.no_grad():
                for k, v in ck["trainable"].items():
                    if k not in own or tuple(own[k].shape) != tuple(v.shape):
                        raise UnlearnError(f"resume: checkpoint tensor {k!r} does not match the model")
                    _load_into(own[k], v)
            if ctx is not None:
                ctx.load_optimizer_state(model, optimizer, ck["optimizer"])
            else:
                optimizer.load_state_dict(ck["optimizer"])
            ckpt.set_rng_state(ck["rng"])
            history = list(ck["history"])
            start = int(ck["step"])
            last_ckpt = os.path.join(out_dir, ckpt.CHECKPOINT_NAME)

    def save_ck(step):
        nonlocal last_ckpt
        if out_dir is None:
            return
        path = os.path.join(out_dir, ckpt.CHECKPOINT_NAME)
        extra = {"domain_map": {str(k): v for k, v in domain_map.items()},
                 "alter_config": cfg.to_dict() if cfg else None}
        if ctx is None:
            last_ckpt = ckpt.save_checkpoint(out_dir, method=method, step=step, trainable=trainable(),
                                             optimizer=optimizer, history=history, fingerprint=fp, extra=extra)
            return
        # every rank joins (FSDP2 gathers the full tensors); only rank 0 writes
        extra["fsdp2"] = mode == "fsdp2"
        with ctx.full_params(model):
            tensors = {k: v.detach().cpu().clone() for k, v in trainable().items()}
        opt_state = ctx.optimizer_state(model, optimizer)
        if main:
            ckpt.save_checkpoint(out_dir, method=method, step=step, trainable=tensors,
                                 optimizer=_Plain(opt_state), history=history, fingerprint=fp, extra=extra)
        ctx.barrier()
        last_ckpt = path

    # ---------------------------------------------------------------- loop
    bar = None
    if progress and main:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=start, desc=f"unlearn[{method}]", unit="step", dynamic_ncols=True)
    all_params = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    sigint = _DeferredSigint().__enter__() if out_dir is not None and ctx is None else None
    try:
        for step in range(start, total):
            if sigint is not None and sigint.raised:   # Ctrl-C during the previous step: checkpoint, stop
                save_ck(step)
                _write_json(os.path.join(out_dir, "history.json"), history)
                raise UnlearnInterrupted(f"unlearn[{method}]: interrupted after step {step} of {total}; the "
                                         f"checkpoint {last_ckpt} holds that state (resume=True continues)",
                                         step, last_ckpt)
            epoch, k = divmod(step, spe)
            t0 = time.perf_counter()
            batch = _make_batch(step, epoch, k, batch_size, seed, f_ex, r_ex, f_dom, f_cache, r_cache, f_ref,
                                pad_id, dev)
            ntok = int(batch["attention_mask"].sum())     # of the global batch
            warm = hp["warmup_steps"]
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * min(1.0, (step + 1) / warm) if warm else lr
            red = None
            if ctx is not None:
                batch = ctx.shard(batch)
                red = ctx.all_reduce_sum
            if method in ("alter", "asymlora"):
                loss, logs = M.alter_loss(model, batch, hp, mode=method, forward=fwd, reduce=red)
            elif method == "lora":
                loss, logs = M.lora_loss(model, batch, hp, forward=fwd, reduce=red)
            else:
                loss, logs = M.full_loss(model, batch, hp, method, ref_model, forward=fwd, reduce=red)
            loss_value = loss.detach()
            if ctx is not None:                           # the shards' shares sum to the global values
                keys = [k2 for k2 in logs if k2 in M.SUMMED_LOGS]
                tot = ctx.all_reduce_sum(torch.tensor([float(loss_value)] + [logs[k2] for k2 in keys],
                                                      dtype=torch.float64))
                loss_value = tot[0]
                logs.update({k2: float(v) for k2, v in zip(keys, tot[1:].tolist())})
            bad = None
            if not torch.isfinite(loss_value):
                bad = f"non-finite loss {float(loss_value)} ({logs})"
            else:
                (loss if ctx is None else loss * ctx.world).backward()   # DDP / FSDP2 average the gradients
                if ctx is not None and mode == "fsdp2":
                    ctx.zero_frozen_expert_grads(model, n_frozen)
                gn = torch.nn.utils.clip_grad_norm_(all_params, hp["grad_clip"] if hp["grad_clip"] > 0 else math.inf)
                if ctx is not None:
                    gn = ctx.full_value(gn)
                if not torch.isfinite(gn):
                    bad = f"non-finite gradient norm {float(gn)} (loss {float(loss_value)}, {logs})"
            if bad:
                optimizer.zero_grad(set_to_none=True)
                where = (f"the last good checkpoint is {last_ckpt}" if last_ckpt else
                         "no checkpoint was written yet (set out_dir and checkpoint_every)")
                if out_dir is not None and main:
                    _write_json(os.path.join(out_dir, "history.json"), history)
                raise UnlearnDivergedError(f"unlearn[{method}]: {bad} at step {step + 1}; stopping. The model keeps "
                                           f"the weights of step {step}; {where}.", step, last_ckpt, history)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            rec = {"step": step + 1, "epoch": epoch + 1, "loss": float(loss_value), **logs,
                   "tokens": ntok, "tokens_per_s": ntok / dt if dt > 0 else float("nan"), "seconds": dt}
            history.append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
            end_epoch = k == spe - 1 or step == total - 1
            if hp["checkpoint_every"] and (step + 1) % hp["checkpoint_every"] == 0 and step + 1 < total:
                save_ck(step + 1)
            if callback is not None:
                callback(rec)
            if end_epoch:
                _epoch_metrics(metrics, history, epoch + 1, model, method, hp, f_ex, r_ex, f_cache, r_cache,
                               pad_id, batch_size, dev, ctx, held=held)
                if out_dir is not None and main:
                    _write_json(os.path.join(out_dir, "metrics.json"), metrics)
        # metrics of epochs finished before a resume
        done = {m["epoch"] for m in metrics}
        for e in sorted({h["epoch"] for h in history} - done):
            _epoch_metrics(metrics, history, e, None, method, hp, f_ex, r_ex, None, None, pad_id, batch_size, dev)
        metrics.sort(key=lambda m: m["epoch"])
    finally:
        if sigint is not None:
            sigint.__exit__()
        if bar is not None:
            bar.close()
        for h in hooks:
            h.remove()
        for a in frozen_a:
            a.requires_grad_(True)
        model.eval()
        if method in M.FULL_METHODS:
            for n, p in model.named_parameters():
                p.requires_grad_(orig_flags.get(n, p.requires_grad))

    if ctx is not None:
        with ctx.full_params(model):
            ctx.check_agreement(list(trainable().values()), "trainable weights")
    if method == "alter" and main:
        share = [h["high_entropy_share"] for h in history if not math.isnan(h.get("high_entropy_share", math.nan))]
        if share and (max(share) == 0.0 or min(share) == 1.0):
            warnings.warn(f"unlearn[alter]: every answer token was {'high' if min(share) == 1.0 else 'low'}-entropy "
                          f"(threshold {cfg.threshold} with q_route {cfg.q_route}); ALTER degrades into "
                          f"{'plain multi-expert LoRA' if min(share) == 1.0 else 'AsymLoRA'}. Pick a threshold "
                          "inside the range of the base model's entropies for this q (spec 3).")

    # ---------------------------------------------------------------- outputs
    adapter_dir = model_dir = None
    if out_dir is not None:
        save_ck(total)
        if main:
            _write_json(os.path.join(out_dir, "metrics.json"), metrics)
            _write_json(os.path.join(out_dir, "history.json"), history)
        if method in M.ADAPTER_METHODS:
            adapter_dir = os.path.join(out_dir, "adapter")
            with (ctx.full_params(model) if ctx is not None else contextlib.nullcontext()):
                if main:
                    save_adapter(model, adapter_dir,
                                 extra={"method": method, "domain_map": {str(k): v for k, v in domain_map.items()},
                                        "trained_experts": trained_experts, "steps": total,
                                        "threshold_source": threshold_source})
        else:
            model_dir = os.path.join(out_dir, "model")
            sd = None
            if ctx is not None and mode == "fsdp2":
                from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
                sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if main:
                atomic_dir(model_dir, lambda d: (model.save_pretrained(d, **({"state_dict": sd} if sd is not None
                                                                            else {})),
                                                 tokenizer.save_pretrained(d)))
        if ctx is not None:
            ctx.barrier()
    return UnlearnResult(model=model, method=method, history=history, metrics=metrics,
                         seconds=time.perf_counter() - t_start, steps=total, config=cfg, domain_map=domain_map,
                         out_dir=out_dir, adapter_dir=adapter_dir, model_dir=model_dir,
                         trained_experts=trained_experts, threshold=cfg.threshold if cfg is not None else None,
                         threshold_source=threshold_source)


# ----------------------------------------------------------------------------------- reusable set-up
@dataclasses.dataclass
class AlterData:
    """What one ALTER step needs besides the model, prepared once (see :func:`prepare_alter`):
    tokenised forget / retain examples, each forget row's expert, the cached base-model entropies
    and the adapter's config. ``batch(fi, ri)`` builds the mixed batch that
    :func:`alter_kernels.unlearn.alter_loss` takes, for another training loop (HF Trainer, ...)."""
    forget: list
    retain: list
    forget_domain: list
    forget_cache: tuple
    retain_cache: tuple
    config: AlterConfig
    domain_map: dict
    pad_id: int

    def batch(self, forget_idx, retain_idx, device=None) -> dict:
        return _batch_of(list(forget_idx), list(retain_idx), self.forget, self.retain, self.forget_domain,
                         self.forget_cache, self.retain_cache, None, self.pad_id, device or "cpu")


def prepare_alter(model, forget, retain, tokenizer, alter_config: AlterConfig | None = None, seed: int = 0,
                  batch_size: int = 4, **hparams) -> AlterData:
    """The set-up of ``unlearn(method="alter")`` without its loop: tokenise the rows, patch the
    model (if needed), assign forget rows to experts (domain labels or k-means), initialise the
    router, pick theta (``threshold_quantile``) and cache the base-model entropies. hparams: the
    data and sub-domain options of ``DEFAULTS``."""
    unknown = sorted(set(hparams) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"prepare_alter: unknown option(s) {unknown}")
    hp = {**DEFAULTS, **hparams}
    dev = _device_of(model)
    dkw = dict(max_length=hp["max_length"], chat_template=hp["chat_template"], prompt_format=hp["prompt_format"])
    _, f_ex = prepare(forget, tokenizer, "forget", **dkw)
    _, r_ex = prepare(retain, tokenizer, "retain", **dkw)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    cfg, f_dom, domain_map, _ = _setup_adapter(model, "alter", f_ex, r_ex, alter_config, hp, pad_id, batch_size,
                                               seed, dev)
    cfg = _patch.get_state(model).config
    f_cache = _entropy_cache(model, f_ex, pad_id, batch_size, dev, cfg.q_route, hp["struct_q"])
    r_cache = _entropy_cache(model, r_ex, pad_id, batch_size, dev, cfg.q_route, hp["struct_q"])
    if not frozen_experts(model):
        theta, source, _ = _choose_threshold(cfg.threshold, f_ex + r_ex, f_cache[0] + r_cache[0], hp)
        if source != "config":
            st = _patch.get_state(model)
            st.config = cfg = dataclasses.replace(cfg, threshold=theta)
    return AlterData(f_ex, r_ex, f_dom, f_cache, r_cache, cfg, domain_map, pad_id)


# ----------------------------------------------------------------------------------- pieces
def _setup_adapter(model, method, f_ex, r_ex, alter_config, hp, pad_id, bs, seed, dev, progress: bool = False):
    """Patch (if needed), assign forget rows to experts, initialise the router. progress: a
    progress line for each pass over the data (k-means features, choosing N, router init)."""
    if method == "lora":
        base = alter_config or hp["base_config"] or AlterConfig()
        if _patch.is_patched(model):
            cfg = _patch.get_state(model).config
            if cfg.num_forget_experts != 0:
                raise UnlearnError("unlearn[lora]: the model is already patched with forget experts; plain LoRA "
                                   "needs a fresh model (or one patched with num_forget_experts=0)")
        else:
            # one expert: both routing branches give it weight 1, so no entropy is needed at inference
            cfg = dataclasses.replace(base, num_forget_experts=0, inference_entropy="none",
                                      rank=hp["rank"] or base.rank, alpha=hp["alpha"] or base.alpha,
                                      init_seed=base.init_seed if base.init_seed is not None else seed)
            _patch.patch(model, cfg)
        return cfg, [0] * len(f_ex), {}, [0]

    patched = _patch.is_patched(model)
    n_frozen = frozen_experts(model) if patched else 0
    first = max(1, n_frozen)
    labels, mapping = map_domain_labels([e.domain for e in f_ex], first_expert=first)
    want = hp["num_forget_experts"]
    feats_f = feats_r = None
    if patched:
        cfg = _patch.get_state(model).config
        if alter_config is not None and alter_config.to_dict() != cfg.to_dict():
            raise UnlearnError("unlearn: the model is already patched with a different AlterConfig than alter_config")
        n_avail = cfg.num_experts - first
        if n_avail < 1:
            raise UnlearnError("unlearn: every forget expert of this patched model is frozen; call "
                               "alter_kernels.add_forget_experts(model, n) to add experts for a new request")
    else:
        base = alter_config or hp["base_config"] or AlterConfig()
        if alter_config is None:
            if mapping:
                n = len(mapping)
            elif want is None:
                n = base.num_forget_experts
            elif want == "auto":
                feats_f = pooled_features(model, f_ex, pad_id, bs, dev, desc=progress and "k-means: forget features")
                n = (choose_k(feats_f[-1], hp["kmeans_max_k"], seed, desc=progress and "k-means: choosing N")
                     if len(f_ex) > 2 else 1)
            else:
                n = int(want)
                check_expert_count(n, len(f_ex))
            if n < 1:
                raise UnlearnError(f"unlearn[{method}]: needs at least one forget expert, got {n}")
            base = dataclasses.replace(base, num_forget_experts=n, rank=hp["rank"] or base.rank,
                                       alpha=hp["alpha"] or base.alpha,
                                       router_input=hp["router_input"] or (
                                           base.router_input if hp["base_config"] is not None else "prefix_match"),
                                       init_seed=base.init_seed if base.init_seed is not None else seed)
        cfg = base
        if cfg.num_forget_experts < 1:
            raise UnlearnError(f"unlearn[{method}]: alter_config.num_forget_experts must be >= 1")
        if alter_config is not None:                  # N given by the caller: at most one expert per forget row
            check_expert_count(cfg.num_forget_experts, len(f_ex))
        _patch.patch(model, cfg)
        n_avail = cfg.num_forget_experts
    if mapping and len(mapping) > n_avail:
        raise UnlearnError(f"unlearn: the forget data has {len(mapping)} domains {sorted(mapping)} but only "
                           f"{n_avail} trainable forget expert(s); use a config with more experts")
    if mapping:
        assign = labels
    else:
        k = min(n_avail if want in (None, "auto") or patched else int(want), len(f_ex))
        if k <= 1:
            assign = [first] * len(f_ex)
        else:
            if feats_f is None:
                feats_f = pooled_features(model, f_ex, pad_id, bs, dev, desc=progress and "k-means: forget features")
            a, _ = kmeans(feats_f[-1], k, seed=seed)
            assign = [first + int(x) for x in a]
        mapping = {f"cluster{c - first}": c for c in sorted(set(assign))}
    if _patch.get_state(model).config.router_input == "prefix_match":
        info = fit_prefix_router(model, f_ex, assign, r_ex, init_weights=hp["router_init"], special_ids=[pad_id])
        if info["uncovered_forget_rows"]:
            warnings.warn(f"unlearn[{method}]: {info['uncovered_forget_rows']} forget row(s) have no token that is "
                          "absent from the retain rows; the prefix-match router cannot tell them from retain rows")
    elif hp["router_init"]:
        if feats_f is None:
            feats_f = pooled_features(model, f_ex, pad_id, bs, dev, desc=progress and "router init: forget features")
        if r_ex and n_frozen == 0:
            feats_r = pooled_features(model, r_ex, pad_id, bs, dev, desc=progress and "router init: retain features")
        init_router(model, feats_f, torch.tensor(assign), feats_r, sorted(set(assign)), init_retain=n_frozen == 0)
    return cfg, assign, mapping, sorted(set(assign))


def _quantile_threshold(exs: list[Example], ents: list[torch.Tensor], q: float) -> float:
    """theta = the q-quantile of the routing entropies of the answer tokens (finite ones)."""
    if not 0.0 < float(q) < 1.0:
        raise ValueError(f"unlearn: threshold_quantile must be in (0, 1), got {q!r}")
    vals = torch.cat([e[torch.tensor(ex.labels) != -100] for ex, e in zip(exs, ents)])
    vals = vals[torch.isfinite(vals)]
    if vals.numel() == 0:
        raise UnlearnError("unlearn: threshold_quantile: no answer token has a finite entropy")
    return float(torch.quantile(vals.double(), float(q)))


def _choose_threshold(theta: float, exs: list[Example], ents: list[torch.Tensor], hp) -> tuple[float, str, float]:
    """(theta, source, low share of the configured theta): ``threshold_quantile`` if given
    ("quantile"); else the ``threshold_auto`` quantile when the configured theta puts >= 98% of
    the answer tokens on one side ("auto"); else the configured theta ("config")."""
    if hp["threshold_quantile"] is not None:
        return _quantile_threshold(exs, ents, hp["threshold_quantile"]), "quantile", float("nan")
    vals = torch.cat([e[torch.tensor(ex.labels) != -100] for ex, e in zip(exs, ents)]) if exs else torch.zeros(0)
    vals = vals[torch.isfinite(vals)]
    if hp["threshold_auto"] is None or vals.numel() == 0:
        return theta, "config", float("nan")
    low = float((vals <= theta).double().mean())
    if AUTO_SIDE_SHARE <= low or low <= 1.0 - AUTO_SIDE_SHARE:
        return _quantile_threshold(exs, ents, hp["threshold_auto"]), "auto", low
    return theta, "config", low


AUTO_SIDE_SHARE = 0.98


def _all_rows_update_a(model) -> list:
    """AsymLoRA: every token takes the low path, yet A must learn (it is a LoRA A); open A's
    gradient mask for all rows of every plan."""
    def open_a(plan, layer_name):
        plan.a_grad_mask = None
    return [_patch.add_plan_hook(model, open_a)]


def _make_batch(step, epoch, k, bs, seed, f_ex, r_ex, f_dom, f_cache, r_cache, f_ref, pad_id, dev) -> dict:
    order = epoch_order(len(f_ex), seed, epoch)
    fi = order[k * bs:(k + 1) * bs]
    ri = []
    if r_ex:
        rorder = epoch_order(len(r_ex), seed, epoch, salt=1)
        ri = [rorder[(k * bs + j) % len(r_ex)] for j in range(bs)]
    return _batch_of(fi, ri, f_ex, r_ex, f_dom, f_cache, r_cache, f_ref, pad_id, dev)


def _batch_of(fi, ri, f_ex, r_ex, f_dom, f_cache, r_cache, f_ref, pad_id, dev) -> dict:
    """The mixed batch of forget rows fi then retain rows ri (the layout methods.* expect)."""
    exs = [f_ex[i] for i in fi] + [r_ex[i] for i in ri]
    ids, att, lab = collate(exs, pad_id)
    t = ids.shape[1]
    b = {"input_ids": ids, "attention_mask": att, "labels": lab,
         "is_forget": torch.tensor([True] * len(fi) + [False] * len(ri)),
         "domain": torch.tensor([f_dom[i] for i in fi] + [0] * len(ri), dtype=torch.long)}
    if f_cache is not None:
        b["entropy"] = pad_float([f_cache[0][i] for i in fi] + [r_cache[0][i] for i in ri], t, math.inf)
        b["base_sq"] = pad_float([f_cache[1][i] for i in fi] + [r_cache[1][i] for i in ri], t, math.nan)
    if f_ref is not None:
        b["ref_logp"] = torch.tensor([f_ref[i] for i in fi] + [0.0] * len(ri), dtype=torch.float32)
    return {k2: v.to(dev) for k2, v in b.items()}


@torch.no_grad()
def _eval_nll(model, method, exs, cache, pad_id, bs, dev, limit, ctx=None) -> float:
    from . import objectives as obj
    exs = exs[:limit]

    def one(idx):
        ids, att, lab = collate([exs[i] for i in idx], pad_id)
        ids, att, lab = ids.to(dev), att.to(dev), lab.to(dev)
        ent = None
        if method == "alter":
            ent = pad_float([cache[0][i] for i in idx], ids.shape[1], math.inf).to(dev)
        elif method == "asymlora":
            ent = torch.zeros(ids.shape, device=dev)
        if _patch.is_patched(model):
            with _patch.routing_inputs(model, entropy=ent, labels=None):
                logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
        else:
            logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
        sl, sy = obj.shift(logits, lab)
        cnt = int((sy != -100).sum())
        return [(float(obj.masked_nll(sl, sy)) * cnt, cnt)]

    # FSDP2: the forwards are collectives, every rank runs as many
    parts = _map_batches(len(exs), bs, one, ctx, lockstep=ctx is not None and ctx.mode == "fsdp2")
    tot, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
    return tot / n if n else float("nan")


def _epoch_metrics(metrics, history, epoch, model, method, hp, f_ex, r_ex, f_cache, r_cache, pad_id, bs, dev,
                   ctx=None, held=None):
    recs = [h for h in history if h["epoch"] == epoch]
    if not recs:
        return
    keys = [k for k in recs[0] if k not in ("step", "epoch") and isinstance(recs[0][k], (int, float))]
    m = {"epoch": epoch, "steps": len(recs), "last_step": recs[-1]["step"]}
    for k in keys:
        vals = [r[k] for r in recs if k in r and not (isinstance(r[k], float) and math.isnan(r[k]))]
        if vals:
            m[k if k in ("tokens", "seconds") else f"mean_{k}"] = (sum(vals) if k in ("tokens", "seconds")
                                                                    else sum(vals) / len(vals))
    if m.get("seconds"):
        m["tokens_per_s"] = m["tokens"] / m["seconds"]
    if model is not None and hp["eval_each_epoch"]:
        was = model.training
        model.eval()
        lim = hp["eval_max_examples"]
        m["eval_forget_nll"] = _eval_nll(model, method, f_ex, f_cache, pad_id, bs, dev, lim, ctx)
        if r_ex:
            m["eval_retain_nll"] = _eval_nll(model, method, r_ex, r_cache, pad_id, bs, dev, lim, ctx)
        if held is not None:
            ra = router_accuracy(model, held[0], held[1], pad_id, bs, dev, ctx=ctx,
                                 all_low=method == "asymlora")
            ra["heldout"] = held[2]
            m["router_accuracy"] = ra
            m["router_acc_forget"], m["router_acc_retain"] = ra["forget"], ra["retain"]
        model.train(was)
    metrics.append(m)


class _Plain:
    """An already-built optimizer state dict where save_checkpoint expects an optimizer."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


def _load_into(own: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a whole checkpoint tensor into a parameter, or into this rank's shard of an FSDP2 DTensor."""
    if hasattr(own, "to_local"):
        from torch.distributed.tensor import distribute_tensor
        src = distribute_tensor(full.to(dtype=own.dtype), own.device_mesh, own.placements, src_data_rank=None)
        own.to_local().copy_(src.to_local().to(own.to_local().device))
        return
    own.copy_(full.to(device=own.device, dtype=own.dtype))


def _write_json(path, obj) -> None:
    write_json(path, obj, indent=1, default=str)


# ----------------------------------------------------------------------------------- routing accuracy
def _heldout_routing_set(f_rows, f_dom, r_rows, tokenizer, dkw, limit: int, seed: int):
    """(examples, expert ids, held_out): the forget rows and up to ``limit // 4`` retain rows (a
    seeded sample), asked with their ``paraphrased_question`` where the rows have one (held out
    from training); rows without one are asked as in training (held_out False)."""
    rng = random.Random(f"router-eval-{seed}")
    r_rows = r_rows or []
    r_pick = list(range(len(r_rows)))
    rng.shuffle(r_pick)
    r_pick = sorted(r_pick[:max(limit // 4, 1)])
    rows, ys = [], []
    para = True
    for r, d in list(zip(f_rows, f_dom))[:limit] + [(r_rows[i], 0) for i in r_pick]:
        if not isinstance(r, dict) or "question" not in r:
            continue
        q = r.get("paraphrased_question")
        if not isinstance(q, str) or not q.strip():
            para = False
            q = r["question"]
        rows.append({"question": q, "answer": r["answer"]})
        ys.append(int(d))
    if not rows or not any(y > 0 for y in ys):
        return None
    exs = tokenize_rows(rows, tokenizer, "<held-out routing rows>", "router_eval", dkw["max_length"],
                        dkw["chat_template"], prompt_format=dkw["prompt_format"])
    return exs, ys, para


@torch.no_grad()
def router_accuracy(model, examples: list[Example], experts: list[int], pad_id: int, batch_size: int = 8,
                    device=None, ctx=None, all_low: bool = False) -> dict:
    """Routing accuracy of a patched model on labelled rows, as it routes at inference (base-model
    entropies, no labels), over the content positions (answer tokens and the token before each:
    the outputs that score and generate the answer). A forget row's position is right when the
    router's choice (argmax of its logits) is a forget expert, a retain row's when it is expert 0.
    Returns {"forget", "retain", "overall" (the smaller of the two), "forget_domain" (the row's own
    expert), "per_layer": {layer: {"forget", "retain"}}, "tokens": {"forget", "retain"}}."""
    device = device or _device_of(model)
    st = _patch.get_state(model)
    layers = list(st.routers)

    def one(idx):
        ids, att, lab = collate([examples[i] for i in idx], pad_id)
        ids, att, lab = ids.to(device), att.to(device), lab.to(device)
        ent = (torch.zeros(ids.shape, device=device) if all_low else
               _patch.token_entropy(model, ids, att).to(device))
        with _patch.routing_inputs(model, entropy=ent, labels=None):
            model(input_ids=ids, attention_mask=att, use_cache=False)
        plans = _patch.last_plans(model)
        content = lab != -100
        content[:, :-1] |= lab[:, 1:] != -100
        y = torch.tensor([experts[i] for i in idx], device=device)[:, None].expand_as(ids)
        out = []
        for name in layers:
            pred = plans[name].router_logits.argmax(-1).view(ids.shape)
            fm, rm = content & (y > 0), content & (y == 0)
            out.append([int(((pred > 0) & fm).sum()), int(fm.sum()), int(((pred == 0) & rm).sum()), int(rm.sum()),
                        int(((pred == y) & fm).sum())])
        return [out]

    parts = _map_batches(len(examples), batch_size, one, ctx, lockstep=ctx is not None and ctx.mode == "fsdp2")
    tot = torch.tensor(parts, dtype=torch.float64).sum(0)            # [layers, 5]
    per = {n: {"forget": float(t[0] / t[1]) if t[1] else float("nan"),
               "retain": float(t[2] / t[3]) if t[3] else float("nan")} for n, t in zip(layers, tot)}
    s = tot.sum(0)
    f = float(s[0] / s[1]) if s[1] else float("nan")
    r = float(s[2] / s[3]) if s[3] else float("nan")
    return {"forget": f, "retain": r, "overall": min(f, r) if s[1] and s[3] else (f if s[1] else r),
            "forget_domain": float(s[4] / s[1]) if s[1] else float("nan"), "per_layer": per,
            "tokens": {"forget": int(tot[0, 1]), "retain": int(tot[0, 3])}}
