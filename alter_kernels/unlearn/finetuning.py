"""Finetuning as a first-class step (issue 22): :func:`finetune` trains a causal LM on
question / answer rows (the answer tokens' NLL, the question masked), fully or with a PEFT LoRA
merged into the weights at the end, and writes a plain Hugging Face folder that every other
command takes (``alter-unlearn --model``, ``alter-eval --model`` / ``--retain-model``).

It is the unlearning engine's loop with one more loss, not a second trainer: the same data
loading and tokenisation (:func:`alter_kernels.unlearn.data.prepare`, chat template and prompt
format included), the same steps, progress bar, per-epoch metrics (``eval_forget_nll`` is the
training rows' answer NLL here), checkpoints and ``resume``, Ctrl-C handling, output-directory
checks and lock, and atomic outputs (``model/`` built in a temp folder and renamed).

- ``lora=False``: every weight trains at ``lr``.
- ``lora=True``: PEFT LoRA (rank ``lora_rank``, ``lora_alpha``, on ``target_modules``, no
  dropout) is injected into the model, only its A / B train at ``lr``, and at the end
  ``merge_and_unload`` folds them into the weights: the model comes back as the plain class it
  was, with merged weights. Checkpoints hold the LoRA-injected state (resume re-injects first).
"""
from __future__ import annotations

import os
import random
import sys
import time

import numpy as np
import torch

from ..common.fsio import OutDirLock, atomic_dir, clean_stale_temp
from ..config import AlterConfig
from . import checkpoint as ckpt
from . import objectives as obj
from .batches import UnlearnData
from .context import RunContext
from .data import prepare
from .heads import step_terms
from .loop import start_training, train
from .methods import Method
from .options import OptionError, UnlearnOptions, check_run_args
from .outputs import HISTORY_NAME, METRICS_NAME, MODEL_DIR, prepare_out_dir, write_run_json
from .result import UnlearnResult
from .setup import setup_full
from .util import device_of, pad_id_of

# The engine options that mean something for finetuning (the others are unlearning losses,
# routers and adapters); their defaults and checks are UnlearnOptions'.
FINETUNE_OPTIONS = ("lr", "weight_decay", "grad_clip", "warmup_steps", "checkpoint_every", "resume",
                    "eval_each_epoch", "eval_max_examples", "max_length", "chat_template", "prompt_format",
                    "fused_loss")
DEFAULT_LORA_RANK = 8
DEFAULT_LORA_ALPHA = 16.0
DATA_NAME = "data"                 # how errors name the training rows


def _nll_loss(model, batch, opts, *, ref_model=None, forward=None, reduce=None):
    """The mean answer-token NLL of the batch (every row is a training row)."""
    terms = step_terms(model, model if forward is None else forward, batch, opts)
    nll = obj.masked_mean(terms.nll, terms.labels)
    return nll, {"nll": float(nll.detach())}


FINETUNE = Method("finetune", "full", _nll_loss, False, "finetune every weight on the rows' answers (NLL)")
FINETUNE_LORA = Method("finetune_lora", "full", _nll_loss, False,
                       "finetune a PEFT LoRA on the rows' answers (NLL), merged into the weights at the end")


def check_lora_args(lora_rank, lora_alpha, target_modules) -> tuple:
    """OptionError for a LoRA setting out of range; the target modules as a tuple of names."""
    if not isinstance(lora_rank, int) or isinstance(lora_rank, bool) or lora_rank < 1:
        raise OptionError("lora_rank", "an int >= 1", lora_rank)
    if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float)) or not lora_alpha > 0 \
            or lora_alpha == float("inf"):
        raise OptionError("lora_alpha", "a finite number > 0", lora_alpha)
    mods = tuple(target_modules)
    if not mods or not all(isinstance(m, str) and m for m in mods):
        raise OptionError("target_modules", "a non-empty list of module names", target_modules)
    return mods


def finetune_options(hparams: dict) -> UnlearnOptions:
    """The validated options of a finetuning run: TypeError for an option finetuning does not
    take, OptionError for a value out of range."""
    unknown = sorted(set(hparams) - set(FINETUNE_OPTIONS))
    if unknown:
        raise TypeError(f"finetune: unknown option(s) {unknown}; known options are {sorted(FINETUNE_OPTIONS)}")
    return UnlearnOptions(**hparams)


def finetune(model, data, tokenizer=None, *, lora: bool = False, lora_rank: int = DEFAULT_LORA_RANK,
             lora_alpha: float = DEFAULT_LORA_ALPHA, target_modules=None, epochs: int = 3,
             max_steps: int | None = None, batch_size: int = 4, seed: int = 0, device=None, progress: bool = True,
             out_dir: str | None = None, callback=None, **hparams) -> UnlearnResult:
    """Train ``model`` (in place) on the answers of ``data``; see the module docstring.

    data: rows (dicts with ``question`` / ``answer``, or ``text``), a .json / .jsonl / .txt path
    or ``hf:NAME[:CONFIG][@SPLIT]``, as ``ak.unlearn``'s ``forget``. hparams: the options in
    :data:`FINETUNE_OPTIONS` (defaults: ``UnlearnOptions``'). With ``out_dir``: ``model/`` (the
    HF folder: weights, config, tokenizer), ``metrics.json``, ``history.json``, ``checkpoint.pt``.
    Returns an :class:`UnlearnResult` (``method`` "finetune" or "finetune_lora", ``model_dir``)."""
    t0 = time.perf_counter()
    check_run_args(epochs=epochs, batch_size=batch_size, max_steps=max_steps, seed=seed)
    opts = finetune_options(hparams)
    mods = check_lora_args(lora_rank, lora_alpha, AlterConfig().target_modules if target_modules is None
                           else target_modules)
    if tokenizer is None:
        raise ValueError("finetune: tokenizer= is required (the rows are text)")
    if out_dir is None and opts.resume:
        raise OptionError("resume", "", True, detail="resume=True needs out_dir (where the checkpoint is)")
    spec = FINETUNE_LORA if lora else FINETUNE
    if out_dir is None:
        return _finetune(model, data, tokenizer, spec, opts, (lora_rank, lora_alpha, mods), epochs, max_steps,
                         batch_size, seed, device, progress, None, callback, t0)
    prepare_out_dir(out_dir, model, spec.name)
    with OutDirLock(out_dir):
        clean_stale_temp(out_dir, os.path.join(out_dir, MODEL_DIR))
        return _finetune(model, data, tokenizer, spec, opts, (lora_rank, lora_alpha, mods), epochs, max_steps,
                         batch_size, seed, device, progress, out_dir, callback, t0)


def _finetune(model, data, tokenizer, spec, opts, lora_args, epochs, max_steps, batch_size, seed, device, progress,
              out_dir, callback, t0) -> UnlearnResult:
    if device is not None:
        model.to(device)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    run = RunContext(model, spec, opts, batch_size, seed, device_of(model), tokenizer=tokenizer, progress=progress,
                     out_dir=out_dir)
    rows, examples = prepare(data, tokenizer, DATA_NAME, **opts.data_kwargs())
    if progress:
        print(f"finetune: {len(rows)} rows from {data if isinstance(data, str) else '<in-memory rows>'}",
              file=sys.stderr, flush=True)
    run.rows = (rows, None)
    run.data = UnlearnData(forget=examples, retain=[], pad_id=pad_id_of(tokenizer), forget_domain=[0] * len(examples))
    peft_model, restore_flags = _inject_lora(run, *lora_args) if spec is FINETUNE_LORA else (None, None)
    if peft_model is None:
        setup_full(run)
    merged = False
    try:
        st = start_training(run, epochs, max_steps)
        train(run, st, callback)
        if out_dir is not None:
            ckpt.save_run_checkpoint(run, st, st.total)      # the LoRA-injected state: what resume loads
            write_run_json(run, METRICS_NAME, st.metrics)
            write_run_json(run, HISTORY_NAME, st.history)
        if peft_model is not None:
            peft_model.merge_and_unload()
            merged = True
    finally:
        if peft_model is not None:
            if not merged:
                peft_model.unload()                           # the model as it came, LoRA removed
            restore_flags()
        run.restore()
    model.eval()
    model_dir = None
    if out_dir is not None:
        model_dir = os.path.join(out_dir, MODEL_DIR)
        atomic_dir(model_dir, lambda d: (model.save_pretrained(d), tokenizer.save_pretrained(d)))
    return UnlearnResult(model=model, method=spec.name, history=st.history, metrics=st.metrics,
                         seconds=time.perf_counter() - t0, steps=st.total, out_dir=out_dir, model_dir=model_dir)


def _inject_lora(run: RunContext, rank: int, alpha: float, mods: tuple):
    """Inject a PEFT LoRA into ``run.model`` in place (seeded init); only A / B require grad.
    Returns (the PeftModel, a function that puts the model's own ``requires_grad`` flags back)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("finetune(lora=True) needs peft (pip install peft)") from None
    model = run.model
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in mods if m not in present]
    if len(missing) == len(mods):
        raise OptionError("target_modules", "", list(mods), detail=f"none of {list(mods)} is a module of "
                                                                   f"{type(model).__name__}")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    torch.manual_seed(run.seed)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                                                  target_modules=[m for m in mods if m in present]))

    def restore_flags():                 # the same Parameter objects once the LoRA is merged or removed
        for p, flag in flags:
            p.requires_grad_(flag)
    return peft_model, restore_flags
