"""Range checks of every option of :func:`alter_kernels.unlearn` (and of ``alter-unlearn``), run
before any work: a value out of range raises :class:`OptionError` naming the option, what was
expected and what was given, instead of a run that trains the wrong thing and exits 0 (a
negative learning rate relearns the forget set; a negative warm-up makes the rate negative).

| option | accepted |
|---|---|
| lr, lr_A, lr_B, lr_router | finite, > 0 |
| weight_decay, grad_clip | finite, >= 0 (grad_clip 0: off) |
| beta, gamma, lam, rho | finite, >= 0 |
| npo_beta, struct_q | finite, > 0 (struct_q within 1e-6 of 1: Shannon) |
| warmup_steps, checkpoint_every, eval_max_examples | int >= 0 |
| epochs, batch_size | int >= 1; max_steps: None or int >= 1; seed: int in [0, 2**32) |
| max_length | int >= 2 |
| kmeans_max_k | int in [1, MAX_FORGET_EXPERTS] |
| num_forget_experts | None, "auto" or int in [1, MAX_FORGET_EXPERTS] (and <= the forget rows) |
| rank / alpha (shortcuts) | None, or int >= 1 / finite > 0 (rank <= min(d_in, d_out): checked by ak.patch) |
| threshold_quantile | None or in (0, 1) |
| threshold_auto | None or in (0, 1) |
| route_labels | "content" or "all" |
| router_input | None, "prefix_match" or "token" |
| router_eval | bool |
| retain_expert | "train" or "frozen" |
| prompt_format | a format string whose only field is {question} |
| chat_template | "auto" (template when the tokenizer has one), "on", "off", or a bool (True: on) |
"""
from __future__ import annotations

import math
import string
from typing import Any

from ..common.text import DEFAULT_CHAT_TEMPLATE, DEFAULT_PROMPT_FORMAT, chat_mode
from ..config import MAX_FORGET_EXPERTS, ROUTER_INPUTS, AlterConfig


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
    "fused_loss": "auto",    # "auto": losses straight from the hidden states (ops.lm_head_token_losses), no
                             # [N, V] logits, where the head allows; "off": from materialised logits
    "max_length": 512,
    "chat_template": DEFAULT_CHAT_TEMPLATE,   # "auto": the tokenizer's chat template when it has one
    "prompt_format": DEFAULT_PROMPT_FORMAT,
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


METHOD_ALIASES = {"npo_rt": "npo_retain"}


def method_name(method) -> str:
    """The canonical spelling of a method name: lower case, "-" and "+" as "_", aliases resolved."""
    name = str(method).lower().replace("-", "_").replace("+", "_")
    return METHOD_ALIASES.get(name, name)


def checked_hparams(who: str, hparams: dict, *, list_known: bool = True) -> dict:
    """``DEFAULTS`` updated with ``hparams``; TypeError naming ``who`` for an unknown option."""
    unknown = sorted(set(hparams) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"{who}: unknown option(s) {unknown}" +
                        (f"; known options are {sorted(DEFAULTS)}" if list_known else ""))
    return {**DEFAULTS, **hparams}


class OptionError(ValueError):
    """An option is out of its range. ``option`` is its name in ``unlearn`` (``hparams`` key or
    argument); the CLI turns it into the flag."""

    def __init__(self, option: str, expected: str, got=None, detail: str | None = None):
        self.option, self.expected, self.got = option, expected, got
        self.detail = detail or f"expected {expected}, got {got!r}"
        super().__init__(f"unlearn: {option}: {self.detail}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive(name, v):
    if not _is_num(v) or not math.isfinite(v) or v <= 0:
        raise OptionError(name, "a finite number > 0", v)


def _non_negative(name, v):
    if not _is_num(v) or not math.isfinite(v) or v < 0:
        raise OptionError(name, "a finite number >= 0", v)


def _int_at_least(name, v, lo, hi=None):
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        raise OptionError(name, f"an int >= {lo}" if hi is None else f"an int in {lo}..{hi}", v)


def check_prompt_format(fmt, name: str = "prompt_format") -> None:
    if not isinstance(fmt, str):
        raise OptionError(name, "a string with a {question} field", fmt)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None]
    except ValueError as exc:
        raise OptionError(name, "", fmt, detail=f"is not a valid format string ({exc}); write literal braces as "
                                                f"{{{{ and }}}}, got {fmt!r}") from None
    others = sorted({f for f in fields if f != "question"})
    if others or "question" not in fields:
        what = (f"has field(s) {', '.join('{' + f + '}' for f in others)}" if others else "has no {question} field")
        raise OptionError(name, "", fmt, detail=f"{what}; expected a format string whose only field is {{question}} "
                                                f"(write literal braces as {{{{ and }}}}), got {fmt!r}")


def validate_options(hp: dict, *, epochs=1, batch_size=1, max_steps=None, seed=0) -> None:
    """Raise OptionError for the first option of ``hp`` (a DEFAULTS-shaped dict) or of the
    run arguments that is out of range."""
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        _int_at_least(name, v, 1)
    if max_steps is not None:
        _int_at_least("max_steps", max_steps, 1)
    if not _is_int(seed) or not 0 <= seed < 2 ** 32:
        raise OptionError("seed", "an int in 0..2**32-1", seed)
    for name in ("lr", "lr_A", "lr_B", "lr_router", "npo_beta", "struct_q"):
        _positive(name, hp[name])
    for name in ("weight_decay", "grad_clip", "beta", "gamma", "lam", "rho"):
        _non_negative(name, hp[name])
    for name in ("warmup_steps", "checkpoint_every", "eval_max_examples"):
        _int_at_least(name, hp[name], 0)
    _int_at_least("max_length", hp["max_length"], 2)
    _int_at_least("kmeans_max_k", hp["kmeans_max_k"], 1, MAX_FORGET_EXPERTS)
    n = hp["num_forget_experts"]
    if n is not None and n != "auto":
        if not _is_int(n) or not 1 <= n <= MAX_FORGET_EXPERTS:
            raise OptionError("num_forget_experts", f"'auto' or an int in 1..{MAX_FORGET_EXPERTS}", n)
    if hp["rank"] is not None:
        _int_at_least("rank", hp["rank"], 1)
    if hp["alpha"] is not None:
        _positive("alpha", hp["alpha"])
    q = hp["threshold_quantile"]
    if q is not None and (not _is_num(q) or not 0.0 < q < 1.0):
        raise OptionError("threshold_quantile", "None or a number in (0, 1)", q)
    q = hp["threshold_auto"]
    if q is not None and not (_is_num(q) and 0 < q < 1):
        raise OptionError("threshold_auto", "None or a number in (0, 1)", q)
    if hp["route_labels"] not in ("content", "all"):
        raise OptionError("route_labels", "'content' or 'all'", hp["route_labels"])
    if hp["router_input"] not in (None,) + ROUTER_INPUTS:
        raise OptionError("router_input", "None, " + " or ".join(map(repr, ROUTER_INPUTS)), hp["router_input"])
    if hp["retain_expert"] not in ("train", "frozen"):
        raise OptionError("retain_expert", "'train' or 'frozen'", hp["retain_expert"])
    if not isinstance(hp["router_eval"], bool):
        raise OptionError("router_eval", "a bool", hp["router_eval"])
    if hp["struct_mode"] not in ("drift", "grad_norm"):
        raise OptionError("struct_mode", "'drift' or 'grad_norm'", hp["struct_mode"])
    if hp["fused_loss"] not in ("auto", "off"):
        raise OptionError("fused_loss", "'auto' or 'off'", hp["fused_loss"])
    check_prompt_format(hp["prompt_format"])
    try:
        chat_mode(hp["chat_template"])
    except ValueError:
        raise OptionError("chat_template", "'auto', 'on', 'off' or a bool", hp["chat_template"]) from None
    if hp["base_config"] is not None and not isinstance(hp["base_config"], AlterConfig):
        raise OptionError("base_config", "None or an AlterConfig", type(hp["base_config"]).__name__)


def check_expert_count(n_experts: int, n_rows: int, name: str = "num_forget_experts") -> None:
    """More forget experts than forget rows leaves experts without data (and k-means cannot
    make more clusters than points)."""
    if n_experts > n_rows:
        raise OptionError(name, "", n_experts, detail=f"{n_experts} forget experts for {n_rows} forget row(s); "
                                                      f"expected at most one expert per forget row")
