"""The training loop: the optimizer, one step (loss, backward, checks, update), the epochs with
their checkpoints and metrics, and Ctrl-C handling."""
from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from typing import Any, Callable

import torch

from ..common.fsio import ensure_dir
from . import _model_api as _m
from . import checkpoint as ckpt
from . import distributed as D
from .data import steps_per_epoch
from .evaluation import epoch_metrics
from .methods import SUMMED_LOGS
from .outputs import HISTORY_NAME, METRICS_NAME, write_run_json
from .result import UnlearnDivergedError, UnlearnInterrupted


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


@dataclasses.dataclass
class TrainState:
    """The loop's state: what it trains with and what it has done (checkpointed and resumed)."""
    optimizer: Any
    fwd: Any                    # the module the loss calls (``model``, or its DDP / FSDP2 wrapper)
    total: int                  # steps of the run
    steps_per_epoch: int
    fingerprint: str
    base_lrs: list = dataclasses.field(default_factory=list)
    history: list = dataclasses.field(default_factory=list)
    metrics: list = dataclasses.field(default_factory=list)
    start: int = 0
    last_ckpt: str | None = None


def param_groups(run) -> list[dict]:
    """The optimizer's groups: lr_A / lr_B / lr_router (ALTER, AsymLoRA), lr_B for A and B (LoRA),
    lr for every weight (full-parameter methods)."""
    opts = run.opts
    if not run.spec.adapter:
        return [{"params": [p for p in run.model.parameters()], "lr": opts.lr}]
    groups = _m.adapter_parameters(run.model)      # FSDP2: the sharded parameters
    if not run.spec.routed:
        return [{"params": groups["A"] + groups["B"], "lr": opts.lr_B}]
    params = [{"params": [p for p in groups["A"] if p.requires_grad], "lr": opts.lr_A},
              {"params": groups["B"], "lr": opts.lr_B},
              {"params": groups["router"], "lr": opts.lr_router}]
    return [g for g in params if g["params"]]


def start_training(run, epochs: int, max_steps: int | None) -> TrainState:
    """Wrap the model for data parallelism, build the optimizer, plan the steps, resume."""
    fwd = run.model
    if run.dist is not None:
        if run.spec.adapter:                 # every adapter parameter gets a gradient each step
            hooks = D.anchor_adapter_grads(run.model)
            run.undo.append(lambda: [h.remove() for h in hooks])
        fwd = run.dist.wrap(run.model)       # after the caches (plain forwards), before the optimizer
    opts, d = run.opts, run.data
    optimizer = torch.optim.AdamW(param_groups(run), weight_decay=opts.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    spe = steps_per_epoch(len(d.forget), run.batch_size)
    st = TrainState(optimizer, fwd, max_steps if max_steps is not None else epochs * spe, spe,
                    ckpt.fingerprint(run.method, d.forget, d.retain, opts.as_dict(), run.seed, run.batch_size),
                    base_lrs=[g["lr"] for g in optimizer.param_groups])
    if run.out_dir is not None and run.main:
        ensure_dir(run.out_dir)
    if opts.resume:
        ckpt.resume_run(run, st)
    return st


def _loss_of_step(run, st: TrainState, step: int, epoch: int, k: int):
    """(loss, global loss value, logs, global token count) of step ``step``."""
    batch = run.data.step_batch(epoch, k, run.batch_size, run.seed, run.dev)
    ntok = int(batch["attention_mask"].sum())     # of the global batch
    warm = run.opts.warmup_steps
    for g, lr in zip(st.optimizer.param_groups, st.base_lrs):
        g["lr"] = lr * min(1.0, (step + 1) / warm) if warm else lr
    ctx, red = run.dist, None
    if ctx is not None:
        batch = ctx.shard(batch)
        red = ctx.all_reduce_sum
    loss, logs = run.spec.loss(run.model, batch, run.opts, ref_model=run.ref_model, forward=st.fwd, reduce=red)
    loss_value = loss.detach()
    if ctx is not None:                           # the shards' shares sum to the global values
        keys = [k2 for k2 in logs if k2 in SUMMED_LOGS]
        tot = ctx.all_reduce_sum(torch.tensor([float(loss_value)] + [logs[k2] for k2 in keys], dtype=torch.float64))
        loss_value = tot[0]
        logs.update({k2: float(v) for k2, v in zip(keys, tot[1:].tolist())})
    return loss, loss_value, logs, ntok


def _backward(run, st: TrainState, loss, loss_value, logs) -> str | None:
    """Backward and gradient clipping; what went wrong (non-finite loss or gradient) or None."""
    if not torch.isfinite(loss_value):
        return f"non-finite loss {float(loss_value)} ({logs})"
    ctx = run.dist
    (loss if ctx is None else loss * ctx.world).backward()   # DDP / FSDP2 average the gradients
    if ctx is not None and run.mode == "fsdp2":
        ctx.zero_frozen_expert_grads(run.model, run.n_frozen)
    params = [p for g in st.optimizer.param_groups for p in g["params"]]
    clip = run.opts.grad_clip
    gn = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
    if ctx is not None:
        gn = ctx.full_value(gn)
    if not torch.isfinite(gn):
        return f"non-finite gradient norm {float(gn)} (loss {float(loss_value)}, {logs})"
    return None


def _train_step(run, st: TrainState, step: int, epoch: int, k: int) -> dict:
    """One optimisation step; its history record. Raises UnlearnDivergedError before the update
    when the loss or the gradient is not finite (the model keeps the last good weights)."""
    t0 = time.perf_counter()
    loss, loss_value, logs, ntok = _loss_of_step(run, st, step, epoch, k)
    bad = _backward(run, st, loss, loss_value, logs)
    if bad:
        st.optimizer.zero_grad(set_to_none=True)
        where = (f"the last good checkpoint is {st.last_ckpt}" if st.last_ckpt else
                 "no checkpoint was written yet (set out_dir and checkpoint_every)")
        write_run_json(run, HISTORY_NAME, st.history)
        raise UnlearnDivergedError(f"{label(run.method)}: {bad} at step {step + 1}; stopping. The model keeps "
                                   f"the weights of step {step}; {where}.", step, st.last_ckpt, st.history)
    st.optimizer.step()
    st.optimizer.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    return {"step": step + 1, "epoch": epoch + 1, "loss": float(loss_value), **logs,
            "tokens": ntok, "tokens_per_s": ntok / dt if dt > 0 else float("nan"), "seconds": dt}


def _after_step(run, st: TrainState, rec: dict, step: int, k: int, callback: Callable | None) -> None:
    """Checkpoint every ``checkpoint_every`` steps, call back, and close the epoch at its end."""
    every = run.opts.checkpoint_every
    if every and (step + 1) % every == 0 and step + 1 < st.total:
        ckpt.save_run_checkpoint(run, st, step + 1)
    if callback is not None:
        callback(rec)
    if k == st.steps_per_epoch - 1 or step == st.total - 1:
        epoch_metrics(run, st.metrics, st.history, rec["epoch"])
        write_run_json(run, METRICS_NAME, st.metrics)


def _interrupted(run, st: TrainState, step: int):
    """Ctrl-C during the previous step: checkpoint and stop."""
    ckpt.save_run_checkpoint(run, st, step)
    write_run_json(run, HISTORY_NAME, st.history)
    return UnlearnInterrupted(f"{label(run.method)}: interrupted after step {step} of {st.total}; the "
                              f"checkpoint {st.last_ckpt} holds that state (resume=True continues)",
                              step, st.last_ckpt)


def label(method: str) -> str:
    """How progress bars and messages name a run: ``finetune`` / ``finetune_lora`` as they are,
    every unlearning method as ``unlearn[<method>]``."""
    return method if method.startswith("finetune") else f"unlearn[{method}]"


def train(run, st: TrainState, callback: Callable | None = None) -> None:
    """Steps ``st.start`` .. ``st.total``; undoes the set-up's changes to the model at the end
    (``run.restore``) and leaves it in eval mode, whatever happens."""
    bar = None
    if run.show:
        from tqdm.auto import tqdm
        bar = tqdm(total=st.total, initial=st.start, desc=label(run.method), unit="step", dynamic_ncols=True)
    run.model.train()
    sigint = _DeferredSigint().__enter__() if run.out_dir is not None and run.dist is None else None
    try:
        for step in range(st.start, st.total):
            if sigint is not None and sigint.raised:
                raise _interrupted(run, st, step)
            epoch, k = divmod(step, st.steps_per_epoch)
            rec = _train_step(run, st, step, epoch, k)
            st.history.append(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
            _after_step(run, st, rec, step, k, callback)
        done = {m["epoch"] for m in st.metrics}       # metrics of epochs finished before a resume
        for e in sorted({h["epoch"] for h in st.history} - done):
            epoch_metrics(run, st.metrics, st.history, e, evaluate=False)
        st.metrics.sort(key=lambda m: m["epoch"])
    finally:
        if sigint is not None:
            sigint.__exit__()
        if bar is not None:
            bar.close()
        run.restore()
        run.model.eval()
