"""The options of :func:`alter_kernels.unlearn` (and of ``alter-unlearn``): :class:`UnlearnOptions`,
a frozen dataclass with each option's default and help, validated once, before any work: a value out of range raises :class:`OptionError` naming the option, what was
expected and what was given, instead of a run that trains the wrong thing and exits 0 (a
negative learning rate relearns the forget set; a negative warm-up makes the rate negative).

| option | accepted |
|---|---|
| lr, lr_A, lr_B, lr_router | finite, > 0 |
| weight_decay, grad_clip | finite, >= 0 (grad_clip 0: off) |
| beta, gamma, lam, rho, forget_ihl | finite, >= 0 |
| npo_beta, struct_q | finite, > 0 (struct_q within common.constants.SHANNON_TOL of 1: Shannon) |
| warmup_steps, checkpoint_every, eval_max_examples | int >= 0 |
| epochs, batch_size | int >= 1; max_steps: None or int >= 1; seed: int in [0, 2**32) |
| max_length | int >= 2 |
| kmeans_max_k | int in [1, MAX_FORGET_EXPERTS] |
| num_forget_experts | None, "auto" or int in [1, MAX_FORGET_EXPERTS] (and <= the forget rows) |
| rank / alpha (shortcuts) | None, or int >= 1 / finite > 0 (rank <= min(d_in, d_out): checked by ak.patch) |
| threshold_quantile | None or in (0, 1) |
| threshold_auto | None or in (0, 1) |
| route_labels | "content" or "all" |
| forget_loss | "ihl" or "generic" (ALTER, AsymLoRA; "generic" with ihl_until "zero") |
| router_input | None or one of config.ROUTER_INPUTS |
| router_eval | bool |
| retain_expert | "train" or "frozen" |
| prompt_format | a format string whose only field is {question} |
| chat_template | "auto" (template when the tokenizer has one), "on", "off", or a bool (True: on) |
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import string
from types import MappingProxyType
from typing import Any, Mapping

from ..common.text import DEFAULT_CHAT_TEMPLATE, DEFAULT_PROMPT_FORMAT, chat_mode
from ..config import MAX_FORGET_EXPERTS, ROUTER_INPUTS, AlterConfig
from .result import UnlearnError


# The router form of the AlterConfig the engine builds when neither ``router_input`` nor a
# ``base_config`` says (docs/unlearning.md, "The router"): the prefix-match router, whose keys the
# engine fits from the data. ``AlterConfig()``'s own default (ALTER_SPEC's per-token router) is for
# configs a user builds; ``alter-unlearn --router-input`` defaults to this one.
ENGINE_ROUTER_INPUT = "prefix_match"
# Benchmark names for an adapter method run with other options (bench/, realknow, the demo's sweep):
# "<method>[_answer_keys | _fact][_stop][_frozen]" is ``ak.unlearn(method=<method>, ...)`` with
# router_input "answer_keys" or "prefix_answer_keys" (forget experts only where the base model is
# about to state a forget fact) or "key_tokens" (forget experts only on the forget entity's own
# tokens), ihl_until="not_top" or forget_loss="generic" (_gen10: forget_ihl=10), and
# retain_expert="frozen" (B_0 at zero).
_VARIANT_PARTS = ((("", {}), ("_answer_keys", {"router_input": "answer_keys"}),
                   ("_fact", {"router_input": "prefix_answer_keys"}), ("_keytok", {"router_input": "key_tokens"})),
                  (("", {}), ("_stop", {"ihl_until": "not_top"}), ("_gen", {"forget_loss": "generic"}),
                   ("_gen10", {"forget_loss": "generic", "forget_ihl": 10.0})),
                  (("", {}), ("_frozen", {"retain_expert": "frozen"})))
METHOD_VARIANTS = {m + "".join(p for p, _ in combo): (m, {k: v for _, o in combo for k, v in o.items()})
                   for m in ("alter", "asymlora") for combo in itertools.product(*_VARIANT_PARTS)
                   if any(p for p, _ in combo)}


def resolve_variant(name: str) -> tuple[str, dict]:
    """(the ``ak.unlearn`` method, its extra options) of a benchmark method name."""
    method, extra = METHOD_VARIANTS.get(name, (name, {}))
    return method, dict(extra)
STRUCT_MODES = ("drift", "grad_norm")
FUSED_LOSS = ("auto", "off")
RETAIN_EXPERT = ("train", "frozen")
ROUTE_LABELS = ("content", "all")
IHL_UNTIL = ("zero", "not_top")
FORGET_LOSS = ("ihl", "generic")
# forget_loss="generic": how many of the generic prediction's most likely tokens (besides the row's
# own next token) the target keeps at each forget position
GENERIC_TOP_K = 32


def _opt(default, help: str):
    """A field of :class:`UnlearnOptions`: its default and its one-line help (``alter-unlearn``'s)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class UnlearnOptions:
    """The options of :func:`alter_kernels.unlearn` (its ``**hparams``), typed, with their
    defaults, and validated once, on construction (:class:`OptionError` names the first option
    out of range). ``alter-unlearn`` takes its defaults and help text from these fields."""
    lr: float = _opt(1e-5, "learning rate of the full-parameter baselines")
    lr_A: float = _opt(1e-5, "learning rate of the shared A (ALTER, AsymLoRA; paper value)")
    lr_B: float = _opt(1e-3, "learning rate of the B experts (paper value; plain LoRA uses it for A and B)")
    lr_router: float = _opt(1e-3, "learning rate of the routers W_g")
    beta: float = _opt(1.0, "weight of the forget term (IHL / ascent / NPO; paper value)")
    gamma: float = _opt(1.0, "weight of the retain term (NLL / KL; paper value)")
    lam: float = _opt(0.01, "weight of R_struct (ALTER; paper lambda)")
    rho: float = _opt(1.0, "weight of the router cross-entropy (ALTER, AsymLoRA)")
    ihl_until: str = _opt("zero", "ALTER, AsymLoRA: a forget token stays under IHL until its probability is pushed "
                                  "to zero (the paper), or only while the adapted model still ranks it first "
                                  "('not_top': stop once another token wins)")
    forget_loss: str = _opt("ihl", "ALTER, AsymLoRA: what the forget experts learn: push the forget answers down with "
                                   "the inverted hinge loss (the paper), or 'generic': match, at every forget answer "
                                   "token, what the base model says when the row's entity is swapped for one it does "
                                   "not know (a fluent wrong answer), plus forget_ihl x IHL on the answer tokens the "
                                   "prompt does not state (docs/unlearning.md)")
    forget_ihl: float = _opt(3.0, "forget_loss='generic': weight of its IHL term (0: the generic target alone)")
    npo_beta: float = _opt(0.1, "NPO beta (temperature)")
    struct_mode: str = _opt("drift", "R_struct form: drift of S_q(adapted) from S_q(base) on high-entropy tokens, "
                                     "or the paper's ||grad_A S_q||^2 (double backward, runs on the reference "
                                     "backend)")
    struct_q: float = _opt(0.5, "Tsallis q of R_struct")
    fused_loss: str = _opt("auto", "auto: losses straight from the final hidden states (ak.lm_head_token_losses, no "
                                   "[N, V] logits) where the LM head allows; off: from materialised logits "
                                   "(docs/losses.md)")
    max_length: int = _opt(512, "truncate rows (and split passages) to this many tokens")
    chat_template: Any = _opt(DEFAULT_CHAT_TEMPLATE, "wrap questions with the tokenizer's chat template: auto (when "
                                                     "it has one), on, off (a bool: on / off)")
    prompt_format: str = _opt(DEFAULT_PROMPT_FORMAT, "prompt of a question without a chat template ({question} is "
                                                     "replaced)")
    num_forget_experts: Any = _opt(None, "forget experts N: an int, or 'auto' (k-means + silhouette); None: one per "
                                         "'domain' label in the data, else the config's (2)")
    kmeans_max_k: int = _opt(8, "largest N tried by num_forget_experts 'auto'")
    router_init: bool = _opt(True, "start the router at the normalised centroids")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    grad_clip: float = _opt(0.0, "clip the gradient norm (0: off; the norm is still checked for NaN)")
    warmup_steps: int = _opt(0, "linear learning-rate warm-up steps")
    checkpoint_every: int = _opt(0, "write a checkpoint every N steps (0: only at the end; needs an output "
                                    "directory)")
    resume: bool = _opt(False, "continue from the output directory's checkpoint (same data and options)")
    eval_each_epoch: bool = _opt(True, "score each set (answer NLL) at the end of every epoch")
    eval_max_examples: int = _opt(256, "rows of each set scored (answer NLL) at the end of every epoch")
    rank: Any = _opt(None, "shortcut for the AlterConfig's rank when alter_config is None")
    alpha: Any = _opt(None, "shortcut for the AlterConfig's alpha when alter_config is None")
    threshold_quantile: Any = _opt(None, "ALTER: set theta to this quantile (0..1) of the base model's answer-token "
                                         "entropies instead of the configured threshold (0.5: half the answer "
                                         "tokens high); stored in the adapter config")
    threshold_auto: Any = _opt(0.5, "ALTER: when the configured threshold puts >= 98% of the answer tokens on one "
                                    "side, use this quantile of the base answer-token entropies instead (logged, "
                                    "stored in the adapter config; None: keep theta)")
    route_labels: str = _opt("content", "router labels on 'content' tokens (answer tokens and the token before "
                                        "each) or on 'all' real tokens (question template too)")
    router_eval: bool = _opt(True, "held-out routing accuracy after each epoch (ALTER, AsymLoRA)")
    retain_expert: str = _opt("train", "ALTER / AsymLoRA: train the retain expert B_0 (spec 4), or keep it frozen "
                                       "(zero: retain-routed tokens compute the base model; docs/unlearning.md)")
    router_input: Any = _opt(None, "router form of the AlterConfig the engine builds: prefix_match (keys fitted "
                                   "from the data; docs/unlearning.md), answer_keys or token (the per-token linear router of "
                                   f"ALTER_SPEC section 3); None: base_config's if given, else {ENGINE_ROUTER_INPUT}")
    base_config: Any = _opt(None, "AlterConfig template when alter_config is None (N still from labels / k-means)")

    def __post_init__(self):
        _validate(self)

    @classmethod
    def from_kwargs(cls, who: str, hparams, *, list_known: bool = True) -> "UnlearnOptions":
        """The options of ``hparams`` (a mapping; an UnlearnOptions is returned as it is); TypeError
        naming ``who`` for an unknown option, OptionError for a value out of range."""
        if isinstance(hparams, cls):
            return hparams
        check_known(who, hparams, list_known=list_known)
        return cls(**hparams)

    def as_dict(self) -> dict:
        """{option: value}, shallow (``base_config`` stays an AlterConfig)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def grad_norm_struct(self) -> bool:
        """R_struct in its grad-norm form (double backward through the logits)."""
        return self.struct_mode == "grad_norm" and self.lam != 0

    def data_kwargs(self) -> dict:
        """The tokenisation options (``unlearn.data.prepare``)."""
        return dict(max_length=self.max_length, chat_template=self.chat_template, prompt_format=self.prompt_format)


def check_known(who: str, hparams, *, list_known: bool = True) -> None:
    """TypeError naming ``who`` for an option ``UnlearnOptions`` does not have."""
    unknown = sorted(set(hparams) - set(OPTION_HELP))
    if unknown:
        raise TypeError(f"{who}: unknown option(s) {unknown}" +
                        (f"; known options are {sorted(OPTION_HELP)}" if list_known else ""))


METHOD_ALIASES = {"npo_rt": "npo_retain"}


def method_name(method) -> str:
    """The canonical spelling of a method name: lower case, "-" and "+" as "_", aliases resolved."""
    name = str(method).lower().replace("-", "_").replace("+", "_")
    return METHOD_ALIASES.get(name, name)


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


def check_run_args(*, epochs=1, batch_size=1, max_steps=None, seed=0) -> None:
    """Raise OptionError for the first of ``unlearn``'s run arguments that is out of range."""
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        _int_at_least(name, v, 1)
    if max_steps is not None:
        _int_at_least("max_steps", max_steps, 1)
    if not _is_int(seed) or not 0 <= seed < 2 ** 32:
        raise OptionError("seed", "an int in 0..2**32-1", seed)


def _validate(o: UnlearnOptions) -> None:
    """Raise OptionError for the first option of ``o`` that is out of range (the table above)."""
    for name in ("lr", "lr_A", "lr_B", "lr_router", "npo_beta", "struct_q"):
        _positive(name, getattr(o, name))
    for name in ("weight_decay", "grad_clip", "beta", "gamma", "lam", "rho", "forget_ihl"):
        _non_negative(name, getattr(o, name))
    for name in ("warmup_steps", "checkpoint_every", "eval_max_examples"):
        _int_at_least(name, getattr(o, name), 0)
    _int_at_least("max_length", o.max_length, 2)
    _int_at_least("kmeans_max_k", o.kmeans_max_k, 1, MAX_FORGET_EXPERTS)
    n = o.num_forget_experts
    if n is not None and n != "auto":
        if not _is_int(n) or not 1 <= n <= MAX_FORGET_EXPERTS:
            raise OptionError("num_forget_experts", f"'auto' or an int in 1..{MAX_FORGET_EXPERTS}", n)
    if o.rank is not None:
        _int_at_least("rank", o.rank, 1)
    if o.alpha is not None:
        _positive("alpha", o.alpha)
    q = o.threshold_quantile
    if q is not None and (not _is_num(q) or not 0.0 < q < 1.0):
        raise OptionError("threshold_quantile", "None or a number in (0, 1)", q)
    q = o.threshold_auto
    if q is not None and not (_is_num(q) and 0 < q < 1):
        raise OptionError("threshold_auto", "None or a number in (0, 1)", q)
    _one_of("route_labels", o.route_labels, ROUTE_LABELS)
    _one_of("ihl_until", o.ihl_until, IHL_UNTIL)
    _one_of("forget_loss", o.forget_loss, FORGET_LOSS)
    if o.forget_loss != "ihl" and o.ihl_until != "zero":
        raise OptionError("ihl_until", "", o.ihl_until, detail=f"ihl_until={o.ihl_until!r} applies to the inverted "
                                                               f"hinge loss; forget_loss={o.forget_loss!r} has its own")
    if o.router_input not in (None,) + ROUTER_INPUTS:
        raise OptionError("router_input", "None, " + " or ".join(map(repr, ROUTER_INPUTS)), o.router_input)
    _one_of("retain_expert", o.retain_expert, RETAIN_EXPERT)
    if not isinstance(o.router_eval, bool):
        raise OptionError("router_eval", "a bool", o.router_eval)
    _one_of("struct_mode", o.struct_mode, STRUCT_MODES)
    _one_of("fused_loss", o.fused_loss, FUSED_LOSS)
    check_prompt_format(o.prompt_format)
    try:
        chat_mode(o.chat_template)
    except ValueError:
        raise OptionError("chat_template", "'auto', 'on', 'off' or a bool", o.chat_template) from None
    if o.base_config is not None and not isinstance(o.base_config, AlterConfig):
        raise OptionError("base_config", "None or an AlterConfig", type(o.base_config).__name__)


def _one_of(name, v, allowed: tuple) -> None:
    if v not in allowed:
        raise OptionError(name, " or ".join(map(repr, allowed)), v)


class _DataParallelRefusal(UnlearnError, ValueError):
    """An option that data-parallel training cannot honour."""


def refuse_grad_norm_data_parallel(opts: UnlearnOptions, who: str) -> None:
    """The grad-norm R_struct cannot run data-parallel: the squared gradient norm of the global
    batch does not split over shards (raised by ``unlearn`` before any work and by ``alter_loss``
    when given a ``reduce``)."""
    if opts.grad_norm_struct:
        raise _DataParallelRefusal(f"{who}: struct_mode='grad_norm' is not supported with data-parallel training "
                                   "(the squared gradient norm of the global batch does not split over shards); "
                                   "use 'drift'")


def check_expert_count(n_experts: int, n_rows: int, name: str = "num_forget_experts") -> None:
    """More forget experts than forget rows leaves experts without data (and k-means cannot
    make more clusters than points)."""
    if n_experts > n_rows:
        raise OptionError(name, "", n_experts, detail=f"{n_experts} forget experts for {n_rows} forget row(s); "
                                                      f"expected at most one expert per forget row")


OPTION_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(UnlearnOptions)}
# {option: default}, read-only: the defaults of UnlearnOptions (kept for ``{**DEFAULTS, ...}`` callers)
DEFAULTS: Mapping[str, Any] = MappingProxyType(UnlearnOptions().as_dict())
