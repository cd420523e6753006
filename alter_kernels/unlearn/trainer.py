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

import random
import time
from typing import Callable

import numpy as np
import torch

from ..config import AlterConfig
from . import distributed as D
from .checkpoint import trainable_state
from .context import RunContext
from .evaluation import forget_nll_now, heldout_routing_set, warn_degenerate_routing, warn_unchanged_forget
from .loop import start_training, train
from .methods import METHODS
from .options import UnlearnOptions, check_known, check_run_args, method_name, refuse_grad_norm_data_parallel
from .outputs import guard_out_dir, save_outputs
from .result import UnlearnResult
from .setup import install_train_hooks, prepare_run
from .util import device_of

__all__ = ["unlearn"]


@guard_out_dir
def unlearn(model, forget, retain, method: str = "alter", tokenizer=None, alter_config: AlterConfig | None = None,
            epochs: int = 3, max_steps: int | None = None, batch_size: int = 4, seed: int = 0, device=None,
            progress: bool = True, out_dir: str | None = None, callback: Callable | None = None,
            distributed: str | None = None, **hparams) -> UnlearnResult:
    """Unlearn ``forget`` from ``model`` while keeping ``retain``; see docs/unlearning.md.

    method: "alter", "asymlora", "lora" (adapter methods: the model is patched in place and
    returned patched), or "ga", "graddiff", "kl", "npo", "npo_retain" (full-parameter: the
    weights are updated in place). forget / retain: list of dict rows or a file path (JSON,
    JSONL, TXT) or "hf:NAME[:CONFIG][@SPLIT]". callback(record) is called after each step.
    hparams: the fields of ``alter_kernels.unlearn.options.UnlearnOptions``.
    distributed: None / "auto" (DDP when launched by torchrun / accelerate with WORLD_SIZE > 1),
    "none", "ddp" or "fsdp2" (``fully_shard``): every rank calls ``unlearn`` with the same
    arguments, takes its shard of each batch, and gets the single-process result; only rank 0
    writes to ``out_dir``. The process group is initialised from the launcher's environment if
    needed (nccl on CUDA, gloo on CPU) and left open. docs/scaling.md.
    """
    t_start = time.perf_counter()
    run = _new_run(model, method, tokenizer, hparams, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                   seed=seed, device=device, progress=progress, out_dir=out_dir, distributed=distributed)
    prepare_run(run, forget, retain, tokenizer, alter_config, report=True)
    if run.spec.adapter:
        install_train_hooks(run)
    if run.spec.routed and run.opts.router_eval and run.opts.eval_each_epoch:
        f_rows, r_rows = run.rows
        run.held = heldout_routing_set(f_rows, run.data.forget_domain, r_rows, tokenizer, run.data_kwargs(),
                                       run.opts.eval_max_examples, seed)
    st = start_training(run, epochs, max_steps)
    # the forget NLL before any update (a resumed run has no "before": the check is skipped)
    nll_start = forget_nll_now(run) if run.opts.eval_each_epoch and st.start == 0 else None
    train(run, st, callback)
    if run.dist is not None:
        with run.dist.full_params(model):
            run.dist.check_agreement(list(trainable_state(run).values()), "trainable weights")
    unchanged = None
    if run.main:
        if run.spec.entropy:
            warn_degenerate_routing(run, st.history)
        unchanged = warn_unchanged_forget(run, nll_start, st.metrics)
    adapter_dir, model_dir = save_outputs(run, st)
    cfg = run.cfg
    return UnlearnResult(model=model, method=run.method, history=st.history, metrics=st.metrics,
                         seconds=time.perf_counter() - t_start, steps=st.total, config=cfg,
                         domain_map=run.data.domain_map, out_dir=out_dir, adapter_dir=adapter_dir,
                         model_dir=model_dir, trained_experts=run.trained_experts,
                         threshold=cfg.threshold if cfg is not None else None,
                         threshold_source=run.threshold_source, forget_nll_start=nll_start,
                         forget_unchanged=unchanged)


def _new_run(model, method, tokenizer, hparams, *, epochs, max_steps, batch_size, seed, device, progress, out_dir,
             distributed) -> RunContext:
    """Check the arguments, place the model, join the process group, seed the RNGs."""
    method = method_name(method)
    if method not in METHODS:
        raise ValueError(f"unlearn: unknown method {method!r}; choose one of {list(METHODS)}")
    check_known("unlearn", hparams)
    check_run_args(epochs=epochs, batch_size=batch_size, max_steps=max_steps, seed=seed)
    opts = UnlearnOptions(**hparams)
    if tokenizer is None:
        raise ValueError("unlearn: tokenizer= is required (the rows are text)")
    if device is not None:
        model.to(device)
    dev = device_of(model)
    mode = D.resolve_mode(distributed)
    if mode and METHODS[method].entropy:
        refuse_grad_norm_data_parallel(opts, "unlearn")
    ctx = D.DistContext(mode, dev) if mode else None
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return RunContext(model, METHODS[method], opts, batch_size, seed, dev, tokenizer=tokenizer, dist=ctx,
                      progress=progress, out_dir=out_dir)
