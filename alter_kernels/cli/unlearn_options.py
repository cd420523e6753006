"""The options of ``alter-unlearn`` (:func:`build_parser`), one function per option group."""
from __future__ import annotations

import argparse

from ..common.text import DEFAULT_PROMPT_FORMAT
from ._common import OneLineParser, add_chat_template_option, unescape_newlines


def build_parser() -> argparse.ArgumentParser:
    from ..unlearn.methods import DESCRIPTIONS
    methods = "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items())
    p = OneLineParser(
        prog="alter-unlearn",
        description="Unlearn a forget set from a causal LM with ALTER (entropy-routed asymmetric LoRA) or a "
                    "baseline, keeping a retain set. Data: TOFU-format JSON array / JSON lines (question, "
                    "answer; optional domain), plain-text .txt (passages separated by blank lines), or "
                    "hf:NAME[:CONFIG][@SPLIT] (needs the optional `datasets` package).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, error_hint=" (see --help)")
    _run_options(p.add_argument_group("run"), methods)
    _optimisation_options(p.add_argument_group("optimisation"))
    _loss_options(p.add_argument_group("loss"))
    _adapter_options(p.add_argument_group("adapter (ALTER, AsymLoRA, LoRA)"))
    _data_options(p.add_argument_group("data"))
    return p


def _run_options(g, methods: str) -> None:
    g.add_argument("--model", required=True, help="causal LM: local directory, Hugging Face name, .gguf file (converted once into "
                        "a cached folder) or alias (smollm2-135m-instruct); ak.resolve_model")
    g.add_argument("--tokenizer", default=None, help="tokenizer: the same kinds of name (default: the --model one)")
    g.add_argument("--forget", required=True, help="forget set: .json / .jsonl / .txt file or hf:NAME[:CONFIG][@SPLIT]")
    g.add_argument("--retain", default=None, help="retain set (same formats); required except for ga and npo")
    g.add_argument("--method", default="alter", choices=["alter", "asymlora", "lora", "ga", "graddiff", "kl", "npo",
                                                          "npo_retain"], help=f"method. {methods}")
    g.add_argument("--out", required=True, help="output directory (adapter/ or model/, metrics, checkpoints)")
    g.add_argument("--epochs", type=int, default=3, help="passes over the forget set")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=4, help="forget rows per step (plus as many retain rows)")
    g.add_argument("--seed", type=int, default=0, help="seed of A's init, k-means and the data order")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu; "
                                                   "under torchrun cuda:LOCAL_RANK)")
    g.add_argument("--distributed", default="auto", choices=["auto", "none", "ddp", "fsdp2"],
                   help="data parallel when launched by torchrun / accelerate launch: auto = DDP if WORLD_SIZE > 1, "
                        "ddp, fsdp2 (fully_shard), none (each process runs alone)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the base model weights (adapters stay in --adapter-dtype)")
    g.add_argument("--checkpoint-every", type=int, default=0, help="write a checkpoint every N steps (0: only at the end)")
    g.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt (same data and options)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    g.add_argument("--trust-remote-code", action="store_true", help="pass trust_remote_code=True to from_pretrained")


def _optimisation_options(g) -> None:
    g.add_argument("--lr", type=float, default=1e-5, help="learning rate of the full-parameter baselines")
    g.add_argument("--lr-A", dest="lr_A", type=float, default=1e-5, help="learning rate of the shared A (ALTER, AsymLoRA)")
    g.add_argument("--lr-B", dest="lr_B", type=float, default=1e-3, help="learning rate of the B experts (and of plain LoRA)")
    g.add_argument("--lr-router", type=float, default=1e-3, help="learning rate of the routers W_g")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm (0: off)")
    g.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps")


def _loss_options(g) -> None:
    g.add_argument("--beta", type=float, default=1.0, help="weight of the forget term (IHL / ascent / NPO)")
    g.add_argument("--gamma", type=float, default=1.0, help="weight of the retain term (NLL / KL)")
    g.add_argument("--lam", type=float, default=0.01, help="weight of R_struct (ALTER)")
    g.add_argument("--rho", type=float, default=1.0, help="weight of the router cross-entropy (ALTER, AsymLoRA)")
    g.add_argument("--npo-beta", type=float, default=0.1, help="NPO beta")
    g.add_argument("--struct-mode", default="drift", choices=["drift", "grad_norm"],
                   help="R_struct form: drift of S_q(adapted) from S_q(base) on high-entropy tokens, or the paper's "
                        "||grad_A S_q||^2 (double backward, runs on the reference backend)")
    g.add_argument("--struct-q", type=float, default=0.5, help="Tsallis q of R_struct")
    g.add_argument("--fused-loss", default="auto", choices=["auto", "off"],
                   help="auto: losses straight from the final hidden states (ak.lm_head_token_losses, no [N, V] "
                        "logits) where the LM head allows; off: from materialised logits (docs/losses.md)")


def _adapter_options(g) -> None:
    g.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    g.add_argument("--alpha", type=float, default=16, help="LoRA alpha (scale alpha / r)")
    g.add_argument("--num-forget-experts", default=None,
                   help="forget experts N: an int, or 'auto' (k-means + silhouette); default: one per 'domain' "
                        "label in the data, else 2")
    g.add_argument("--kmeans-max-k", type=int, default=8, help="largest N tried by --num-forget-experts auto")
    g.add_argument("--no-router-init", action="store_true", help="do not start the router at the centroids")
    g.add_argument("--retain-expert", default="train", choices=["train", "frozen"],
                   help="ALTER / AsymLoRA: train the retain expert B_0, or keep it frozen (zero: retain-routed "
                        "tokens compute the base model; docs/unlearning.md)")
    g.add_argument("--router-input", default="prefix_match", choices=["prefix_match", "token"],
                   help="router form: prefix_match (keys fitted from the data; docs/unlearning.md) or token (the "
                        "per-token linear router of ALTER_SPEC section 3)")
    g.add_argument("--q-route", type=float, default=1.5, help="Tsallis q of the routing entropy")
    g.add_argument("--threshold", type=float, default=1.2, help="entropy threshold theta (high: e > theta)")
    g.add_argument("--threshold-quantile", type=float, default=None,
                   help="ALTER: set theta to this quantile (0..1) of the base model's answer-token entropies "
                        "instead of --threshold (0.5: half the answer tokens high); stored in the adapter config")
    g.add_argument("--threshold-auto", type=float, default=0.5,
                   help="ALTER: when --threshold puts >= 98%% of the answer tokens on one side, use this quantile of "
                        "the base answer-token entropies instead (logged, stored in the adapter config)")
    g.add_argument("--no-threshold-auto", action="store_true", help="always keep --threshold")
    g.add_argument("--top-k", type=int, default=3, help="forget experts mixed into high-entropy tokens")
    g.add_argument("--tau-high", type=float, default=0.8, help="router temperature of high-entropy tokens")
    g.add_argument("--tau-low", type=float, default=0.01, help="router temperature of low-entropy tokens")
    g.add_argument("--target-modules", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                   help="comma-separated names of the linears to adapt")
    g.add_argument("--adapter-dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                   help="dtype of A, B and the routers")
    g.add_argument("--adapter", default=None,
                   help="continue unlearning: load this adapter directory first (written by an earlier run)")
    g.add_argument("--add-experts", type=int, default=0,
                   help="with --adapter: add N new forget experts and train only them (earlier experts stay fixed)")


def _data_options(g) -> None:
    g.add_argument("--max-length", type=int, default=512, help="truncate rows (and split passages) to this many tokens")
    add_chat_template_option(g)
    g.add_argument("--prompt-format", default=DEFAULT_PROMPT_FORMAT, type=unescape_newlines,
                   help="prompt of a question when no chat template is used ({question} is replaced; a typed \\n "
                        "is a newline) (default: %(default)r)")
    g.add_argument("--eval-max-examples", type=int, default=256,
                   help="rows of each set scored (answer NLL) at the end of every epoch")
    g.add_argument("--no-eval", action="store_true", help="skip the per-epoch NLL evaluation")
