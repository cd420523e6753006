"""ALTER adapter configuration (ALTER_SPEC section 9)."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from .common import constants as C

ROUTER_INPUTS = ("prefix_match", "token", "answer_keys", "prefix_answer_keys", "key_tokens")
KEYED_ROUTERS = ("prefix_match", "answer_keys", "prefix_answer_keys", "key_tokens")   # keys fitted by the unlearning engine
# routers whose keys are token embeddings matched on the first patched layer's input (the prefix
# router's keys): prefix_match and prefix_answer_keys route every token after a match,
# key_tokens only the matching tokens themselves
EMBEDDING_KEY_ROUTERS = ("prefix_match", "prefix_answer_keys", "key_tokens")
BASE_TOP_ROUTERS = ("answer_keys", "prefix_answer_keys")   # read the base model's greedy next tokens
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Which entropies route the tokens of a forward that has no routing inputs (ALTER_SPEC section 2):
# "base" the base model's (adapters off) next-token distributions, as in training (default);
# "self" the adapted model's previous-step logits in decoding (prompts and teacher-forced
# forwards use the base model's); "none" every token high entropy, no extra work (opt-out).
INFERENCE_ENTROPY = ("base", "self", "none")

# Upper bound of num_forget_experts (every expert is a [d_out, r] B per patched linear and a router
# column per layer; the dense routing plan is [tokens, N + 1]). The rank's bound, min(d_in, d_out)
# of each target linear, depends on the model and is checked by ak.patch.
MAX_FORGET_EXPERTS = 64


class ConfigError(ValueError):
    """A field of AlterConfig is out of range; ``field`` names it."""

    def __init__(self, msg: str, field: str):
        super().__init__(msg)
        self.field = field


@dataclasses.dataclass
class AlterConfig:
    """Hyper-parameters of an ALTER adapter.

    ``num_experts`` (derived) is ``num_forget_experts + 1``: expert 0 is the retain expert
    ``B_r``, experts ``1..N`` are the forget experts ``B_f^1..B_f^N``.
    """

    rank: int = 8
    alpha: float = 16
    num_forget_experts: int = 2
    q_route: float = 1.5
    threshold: float = C.THRESHOLD
    top_k: int = C.TOP_K
    tau_high: float = C.TAU_HIGH
    tau_low: float = C.TAU_LOW
    target_modules: tuple = DEFAULT_TARGETS
    inference_entropy: str = "base"  # "base" | "self" | "none": see INFERENCE_ENTROPY above
    # Additions around the contract (documented in README / docs/DESIGN.md).
    adapter_dtype: str = "float32"  # A, B and the router are kept in this dtype (fp32 by default)
    router_grad_from_task: bool = False  # spec 4: W_g learns from the router loss only
    init_seed: int | None = None  # seed for A's Kaiming init (None: torch's global RNG)
    # Router input (docs/unlearning.md, "The router"): "token" (default; ALTER_SPEC section 3) is the
    # per-token linear router on each layer's own input (W_g [d_model, E]); "prefix_match" routes
    # token t by which forget keys occur among tokens <= t (causal prefix key match on the first
    # patched layer's input, W_g [router_keys + 1, E]); its keys come from the data, so the
    # unlearning engine, which fits them (ak.unlearn's router_input option, "prefix_match" by
    # default), is what chooses it. "answer_keys" routes token t to a forget expert when the base
    # model's greedy next token at t is a key token (fitted from the forget answers) not yet in the
    # prefix (model/answer_keys.py; W_g [router_keys + 1, E]); "prefix_answer_keys" is the prefix-match
    # router gated to the positions where the base model is about to state a forget-answer token
    # (router_answer_keys of them). Adapter files written before this
    # field existed load as "token".
    router_input: str = "token"
    router_keys: int = 0          # number of key rows (set by the unlearning engine from the data)
    router_match: float = 0.95    # cosine at which a token matches a key
    router_answer_keys: int = 0   # answer keys of "prefix_answer_keys" (set by the unlearning engine)

    def __post_init__(self):
        if isinstance(self.target_modules, (str, bytes)) or not isinstance(self.target_modules, (list, tuple)):
            raise ConfigError(f"AlterConfig.target_modules: got {self.target_modules!r}, expected a list or tuple of "
                              "module names (a single name as ['q_proj'], not 'q_proj')", "target_modules")
        self.target_modules = tuple(self.target_modules)
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def num_experts(self) -> int:
        return self.num_forget_experts + 1

    @property
    def scale(self) -> float:
        return float(self.alpha) / float(self.rank)

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        def bad(name, got, want):
            raise ConfigError(f"AlterConfig.{name}: got {got!r}, expected {want}", name)

        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            bad("rank", self.rank, "an int >= 1")
        if not _finite_number(self.alpha) or self.alpha <= 0:
            bad("alpha", self.alpha, "a finite number > 0")
        if (not isinstance(self.num_forget_experts, int) or isinstance(self.num_forget_experts, bool)
                or not 0 <= self.num_forget_experts <= MAX_FORGET_EXPERTS):
            bad("num_forget_experts", self.num_forget_experts, f"an int in 0..{MAX_FORGET_EXPERTS}")
        if not _finite_number(self.q_route) or self.q_route <= 0:
            bad("q_route", self.q_route, f"a finite number > 0 ({C.SHANNON_NOTE})")
        if not (_finite_number(self.threshold) or self.threshold in (math.inf, -math.inf)):
            bad("threshold", self.threshold, "a number (+-inf allowed, NaN not)")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 1:
            bad("top_k", self.top_k, "an int >= 1 (min(top_k, num_forget_experts) experts are mixed)")
        for name in ("tau_high", "tau_low"):
            v = getattr(self, name)
            if not _finite_number(v) or v <= 0:
                bad(name, v, "a finite number > 0")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            bad("target_modules", self.target_modules, "a non-empty sequence of module names")
        if self.router_input not in ROUTER_INPUTS:
            bad("router_input", self.router_input, f"one of {ROUTER_INPUTS}")
        if not isinstance(self.router_keys, int) or isinstance(self.router_keys, bool) or self.router_keys < 0:
            bad("router_keys", self.router_keys, "an int >= 0")
        if not _finite_number(self.router_match) or not -1.0 < self.router_match < 1.0:
            bad("router_match", self.router_match, "a number in (-1, 1)")
        if self.inference_entropy not in INFERENCE_ENTROPY:
            bad("inference_entropy", self.inference_entropy, "one of " + ", ".join(map(repr, INFERENCE_ENTROPY)))
        if not isinstance(self.router_answer_keys, int) or isinstance(self.router_answer_keys, bool) \
                or self.router_answer_keys < 0:
            bad("router_answer_keys", self.router_answer_keys, "an int >= 0")
        if self.router_input in BASE_TOP_ROUTERS and self.inference_entropy != "base":
            bad("inference_entropy", self.inference_entropy, f"'base' with router_input={self.router_input!r} (that router "
                "reads the base model's next token at every position, which only the base pass gives)")
        if self.adapter_dtype not in ("float32", "float64", "bfloat16", "float16"):
            bad("adapter_dtype", self.adapter_dtype, "one of float32, float64, bfloat16, float16")
        if not isinstance(self.router_grad_from_task, bool):
            bad("router_grad_from_task", self.router_grad_from_task, "a bool")
        if self.init_seed is not None and (not isinstance(self.init_seed, int) or isinstance(self.init_seed, bool)
                                           or not 0 <= self.init_seed < 2 ** 64):
            bad("init_seed", self.init_seed, "None or an int in 0..2**64-1")

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AlterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"AlterConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
