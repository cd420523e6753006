"""The options of ``alter-unlearn`` (:func:`build_parser`), one function per option group.

Defaults are read, never restated: the engine's options from :class:`UnlearnOptions` (their help
text too), the adapter's from :class:`AlterConfig`, the run's from ``unlearn``'s signature
(tests/project/test_cli_defaults.py checks both).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect

from ._common import DefaultsHelpFormatter, OneLineParser, add_chat_template_option, unescape_newlines


class _Sources:
    """Where the defaults and the help text come from."""

    def __init__(self):
        from ..config import AlterConfig
        from ..unlearn import options as O
        from ..unlearn.trainer import unlearn
        self.O = O
        self.engine = O.UnlearnOptions()
        self.config = {f.name: f.default for f in dataclasses.fields(AlterConfig)}
        self.run = {n: p.default for n, p in inspect.signature(unlearn).parameters.items()
                    if p.default is not inspect.Parameter.empty}

    def help(self, name: str, extra: str = "") -> str:
        """The engine option's help (argparse-escaped), plus ``extra``."""
        return self.O.OPTION_HELP[name].replace("%", "%%") + extra

    def opt(self, g, flag: str, name: str, type=None, extra: str = "", **kw) -> None:
        """``flag`` for engine option ``name``: its default and help."""
        g.add_argument(flag, dest=name, type=type, default=getattr(self.engine, name), help=self.help(name, extra),
                       **kw)


def build_parser() -> argparse.ArgumentParser:
    from ..unlearn.methods import DESCRIPTIONS
    src = _Sources()
    methods = "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items())
    p = OneLineParser(
        prog="alter-unlearn",
        description="Unlearn a forget set from a causal LM with ALTER (entropy-routed asymmetric LoRA) or a "
                    "baseline, keeping a retain set. Data: TOFU-format JSON array / JSON lines (question, "
                    "answer; optional domain), plain-text .txt (passages separated by blank lines), or "
                    "hf:NAME[:CONFIG][@SPLIT] (needs the optional `datasets` package).",
        formatter_class=DefaultsHelpFormatter, error_hint=" (see --help)")
    _run_options(p.add_argument_group("run"), src, methods)
    _optimisation_options(p.add_argument_group("optimisation"), src)
    _loss_options(p.add_argument_group("loss"), src)
    _adapter_options(p.add_argument_group("adapter (ALTER, AsymLoRA, LoRA)"), src)
    _data_options(p.add_argument_group("data"), src)
    return p


def _run_options(g, src: _Sources, methods: str) -> None:
    from ..unlearn.methods import METHODS
    run = src.run
    g.add_argument("--model", required=True, help="causal LM: local directory, Hugging Face name, .gguf file (converted once into "
                        "a cached folder) or alias (smollm2-135m-instruct); ak.resolve_model")
    g.add_argument("--tokenizer", default=None, help="tokenizer: the same kinds of name (default: the --model one)")
    g.add_argument("--forget", required=True, help="forget set: .json / .jsonl / .txt file or hf:NAME[:CONFIG][@SPLIT]")
    g.add_argument("--retain", default=None, help="retain set (same formats); required except for ga and npo")
    g.add_argument("--method", default=run["method"], choices=list(METHODS), help=f"method. {methods}")
    g.add_argument("--out", required=True, help="output directory (adapter/ or model/, metrics, checkpoints)")
    g.add_argument("--epochs", type=int, default=run["epochs"], help="passes over the forget set")
    g.add_argument("--max-steps", type=int, default=run["max_steps"],
                   help="stop after this many steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=run["batch_size"],
                   help="forget rows per step (plus as many retain rows)")
    g.add_argument("--seed", type=int, default=run["seed"], help="seed of A's init, k-means and the data order")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu; "
                                                   "under torchrun cuda:LOCAL_RANK)")
    g.add_argument("--distributed", default="auto", choices=["auto", "none", "ddp", "fsdp2"],
                   help="data parallel when launched by torchrun / accelerate launch: auto = DDP if WORLD_SIZE > 1, "
                        "ddp, fsdp2 (fully_shard), none (each process runs alone)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the base model weights (adapters stay in --adapter-dtype)")
    src.opt(g, "--checkpoint-every", "checkpoint_every", type=int)
    g.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt (same data and options)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    g.add_argument("--trust-remote-code", action="store_true", help="pass trust_remote_code=True to from_pretrained")


def _optimisation_options(g, src: _Sources) -> None:
    src.opt(g, "--lr", "lr", type=float)
    src.opt(g, "--lr-A", "lr_A", type=float)
    src.opt(g, "--lr-B", "lr_B", type=float)
    src.opt(g, "--lr-router", "lr_router", type=float)
    src.opt(g, "--weight-decay", "weight_decay", type=float)
    src.opt(g, "--grad-clip", "grad_clip", type=float)
    src.opt(g, "--warmup-steps", "warmup_steps", type=int)


def _loss_options(g, src: _Sources) -> None:
    O = src.O
    for name in ("beta", "gamma", "lam", "rho", "npo_beta"):
        src.opt(g, "--" + name.replace("_", "-"), name, type=float)
    src.opt(g, "--struct-mode", "struct_mode", choices=list(O.STRUCT_MODES))
    src.opt(g, "--struct-q", "struct_q", type=float)
    src.opt(g, "--fused-loss", "fused_loss", choices=list(O.FUSED_LOSS))
    src.opt(g, "--ihl-until", "ihl_until", choices=list(O.IHL_UNTIL))
    src.opt(g, "--forget-loss", "forget_loss", choices=list(O.FORGET_LOSS))
    src.opt(g, "--forget-ihl", "forget_ihl", type=float)


def _adapter_options(g, src: _Sources) -> None:
    from ..config import MAX_FORGET_EXPERTS, ROUTER_INPUTS
    O, cfg = src.O, src.config
    g.add_argument("--rank", type=int, default=cfg["rank"], help="LoRA rank r")
    g.add_argument("--alpha", type=float, default=cfg["alpha"], help="LoRA alpha (scale alpha / r)")
    g.add_argument("--num-forget-experts", default=src.engine.num_forget_experts,
                   help=f"forget experts N: an int (1..{MAX_FORGET_EXPERTS}), or 'auto' (k-means + silhouette); "
                        f"default: one per 'domain' label in the data, else {cfg['num_forget_experts']}")
    src.opt(g, "--kmeans-max-k", "kmeans_max_k", type=int)
    g.add_argument("--no-router-init", action="store_true", help="do not start the router at the centroids")
    src.opt(g, "--retain-expert", "retain_expert", choices=list(O.RETAIN_EXPERT))
    g.add_argument("--router-input", default=O.ENGINE_ROUTER_INPUT, choices=list(ROUTER_INPUTS),
                   help="router form: prefix_match (keys fitted from the data; docs/unlearning.md), answer_keys (routes "
                        "where the base model is about to state a forget answer), prefix_answer_keys (both), "
                        "key_tokens (only the forget entity's own tokens) or token (the per-token linear router of "
                        "ALTER_SPEC section 3)")
    g.add_argument("--q-route", type=float, default=cfg["q_route"], help="Tsallis q of the routing entropy")
    g.add_argument("--threshold", type=float, default=cfg["threshold"],
                   help="entropy threshold theta (high: e > theta)")
    src.opt(g, "--threshold-quantile", "threshold_quantile", type=float)
    src.opt(g, "--threshold-auto", "threshold_auto", type=float)
    g.add_argument("--no-threshold-auto", action="store_true", help="always keep --threshold")
    g.add_argument("--top-k", type=int, default=cfg["top_k"], help="forget experts mixed into high-entropy tokens")
    g.add_argument("--tau-high", type=float, default=cfg["tau_high"], help="router temperature of high-entropy tokens")
    g.add_argument("--tau-low", type=float, default=cfg["tau_low"], help="router temperature of low-entropy tokens")
    g.add_argument("--target-modules", default=",".join(cfg["target_modules"]),
                   help="comma-separated names of the linears to adapt")
    g.add_argument("--adapter-dtype", default=cfg["adapter_dtype"], choices=["float32", "bfloat16", "float16", "float64"],
                   help="dtype of A, B and the routers")
    g.add_argument("--adapter", default=None,
                   help="continue unlearning: load this adapter directory first (written by an earlier run)")
    g.add_argument("--add-experts", type=int, default=0,
                   help="with --adapter: add N new forget experts and train only them (earlier experts stay fixed)")


def _data_options(g, src: _Sources) -> None:
    src.opt(g, "--max-length", "max_length", type=int)
    add_chat_template_option(g)
    src.opt(g, "--prompt-format", "prompt_format", type=unescape_newlines,
            extra="; a typed \\n is a newline (default: %(default)r)")
    src.opt(g, "--eval-max-examples", "eval_max_examples", type=int)
    g.add_argument("--no-eval", action="store_true", help="skip the per-epoch NLL evaluation")
