"""The methods the demo runs and the hyper-parameters each gets; the single point where the demo
meets the unlearning engine (:func:`run_method`)."""
from __future__ import annotations

import time

# the last: ALTER with the fluent-forgetting options (docs/unlearning.md "Fluent forgetting"), to show
# forget answers next to the paper's rule
METHODS = ("alter", "asymlora", "lora", "ga", "graddiff", "kl", "npo", "npo_retain", "alter_keytok_gen_frozen")
# The engine's defaults are the paper's learning rates for 7B models (lr 1e-5 full-parameter,
# lr_A 1e-5, lr_B 1e-3); on the tiny from-scratch models, 3 epochs at those rates change nothing.
# Every method gets the same search: one multiplier k applied to lr, lr_A and lr_B together,
# k in {3, 10, 30, 100, 300}, picked per method by the harmonic mean of (forget quality,
# utility / finetuned utility) on the quick benchmark, ties broken by the larger forget quality
# (docs/benchmark.md has the sweep table).
# Nothing else differs between methods: same data, epochs, batch size, seed.
LR_SCALE: dict[str, float] = {"alter": 30, "asymlora": 300, "lora": 10, "ga": 100, "graddiff": 100,
                              "kl": 100, "npo": 100, "npo_retain": 100,
                              "alter_keytok_gen_frozen": 30}    # the full preset's DEV selection (bench/sweep.py)
BASE_LR = {"lr": 1e-5, "lr_A": 1e-5, "lr_B": 1e-3, "lr_router": 1e-3}


def method_hparams(name: str, scale: float | None = None, preset: str | None = None) -> dict:
    """Hyper-parameters the demo passes for ``name``: with ``preset`` ("full" / "quick"), the values
    bench/sweep.py selected on the DEV benchmark (alter_kernels/demo/selected_hparams.json)
    when that file has them; otherwise the engine's default learning rates (lr_router included)
    times ``scale`` or LR_SCALE[name]."""
    if scale is None and preset is not None:
        from .protocol import load_selected
        sel = load_selected(preset) or {}
        if name in sel:
            return dict(sel[name])
    k = LR_SCALE.get(name, 1.0) if scale is None else scale
    return {key: v * k for key, v in BASE_LR.items()}


LAST_RUN: dict = {}     # run_method's last UnlearnResult ("result"), for the router accuracy and theta


def run_method(name: str, model, forget: list, retain: list, tokenizer, *, epochs: int,
               batch_size: int = 4, seed: int = 0, max_steps: int | None = None, out_dir: str | None = None,
               progress: bool = False, hparams: dict | None = None):
    """Unlearn ``forget`` from ``model`` (modified in place) with method ``name``; returns
    (model, seconds). The single point where the demo meets the unlearning engine (issue 5)."""
    import alter_kernels as ak
    unlearn = getattr(ak, "unlearn", None)
    if unlearn is None:
        raise RuntimeError("alter_kernels.unlearn is not available in this build (the unlearning "
                           "engine); the demo cannot run the methods without it")
    from ..unlearn.options import resolve_variant
    method, extra = resolve_variant(name)
    t0 = time.perf_counter()
    res = unlearn(model, forget, retain, method=method, tokenizer=tokenizer, epochs=epochs,
                  max_steps=max_steps, batch_size=batch_size, seed=seed, progress=progress,
                  out_dir=out_dir, **extra, **(method_hparams(name) if hparams is None else hparams))
    LAST_RUN["result"] = res
    seconds = getattr(res, "seconds", None)
    return getattr(res, "model", model), float(seconds if seconds is not None else time.perf_counter() - t0)
