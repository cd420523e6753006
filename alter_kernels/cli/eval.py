"""``alter-eval``: TOFU evaluation of a model (optionally with an ALTER or PEFT adapter) on
TOFU-format files, from the command line.

    alter-eval --model M [--adapter A] --data DIR_or_FILES (--retain-model R | --reference REF.json) \
               --out eval.json [--task-id 1] [--truth-ratio geometric] [--max-new-tokens 200] [--seed 0]

``--data`` is a folder holding the standard names (TOFU's ``forget10_perturbed.json``,
``retain_perturbed.json``, ``real_authors_perturbed.json``, ``world_facts_perturbed.json``, or
the embedded benchmark's ``forget10.json``, ``retain90.json``, ``real_authors.json``,
``world_facts.json``), or the four files. Forget quality needs the retain model's forget-set
truth ratios: ``--retain-model`` computes them (``--save-reference`` keeps them for later runs),
``--reference`` reads them back (or the ``eval.json`` of an earlier run of the retain model). The
retain model's greedy forget / retain answers, generated with it and kept in the reference, are
what the answers' degenerate shares are judged against (one fluency line per split; n/a without).

An ALTER adapter directory (``adapter_config.json`` written by ``ak.save_adapter``) is loaded by
patching the model with the adapter's config and ``ak.load_adapter``; a PEFT adapter directory
through ``peft`` (merged). The model is then called plainly: an ALTER model is evaluated with its
default inference rule. Prints the TOFU table and writes it as JSON (atomically).

Every option, path and input file is checked before any model work (cli/eval_checks.py): ``--out``
and ``--save-reference`` may not be, or lie under, an input, and must be writable;
``--max-new-tokens`` is at most 4096 (``eval.tofu.MAX_NEW_TOKENS_CAP``) and below the model's
positions; answers cut to fit the positions are reported with a warning. Exit status: 0 done,
1 the run failed (a damaged data row, reference or adapter file, a model that cannot be loaded),
2 bad usage (one line ``alter-eval: error: ...``). docs/benchmark.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from ..common.fsio import ensure_dir, json_safe, write_json
from ._common import OneLineParser, add_chat_template_option, unescape_newlines
from .eval_inputs import (REFERENCE_FORMAT, SPLITS, RunError, UsageError, read_json_file, read_reference,
                          reference_generations, resolve_data, rows_fingerprint)

PROG = "alter-eval"


def build_parser() -> argparse.ArgumentParser:
    from ..common.text import DEFAULT_PROMPT_FORMAT
    from ..eval.metrics import TRUTH_RATIO_MODES
    from ..eval.tofu import DEFAULT_MAX_NEW_TOKENS
    p = OneLineParser(prog=PROG, description="TOFU evaluation (forget quality, model utility and its 9 parts, "
                                             "ROUGE-L, probabilities, truth ratios) of a causal LM, optionally with an "
                                             "ALTER or PEFT adapter, on TOFU-format files.",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="model directory, Hugging Face name, .gguf file or alias (smollm2-135m-instruct; "
                        "ak.resolve_model) (default: the adapter's base model)")
    g.add_argument("--adapter", default=None, help="ALTER adapter directory (ak.save_adapter) or PEFT adapter directory")
    g.add_argument("--tokenizer", default=None, help="tokenizer directory or name (default: the --model one)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model weights dtype")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    g.add_argument("--trust-remote-code", action="store_true", help="pass trust_remote_code=True to from_pretrained")

    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", required=True, metavar="DIR_OR_FILE",
                   help="a folder with the standard TOFU file names, or the four files (forget, retain, real "
                        "authors, world facts: recognised by name, else taken in that order)")
    g.add_argument("--forget-split", default=None,
                   help="with a --data folder holding several forget splits: which one (e.g. forget10)")
    g.add_argument("--task-id", default=None,
                   help="keep only the rows of this task_id group (comma-separated for several) in every file "
                        "that has a task_id field")

    g = p.add_argument_group("forget quality reference (one of)")
    ref = g.add_mutually_exclusive_group()
    ref.add_argument("--retain-model", default=None,
                     help="the retain model (trained without the forget set): the same kinds of name as --model")
    ref.add_argument("--reference", default=None,
                     help="reference JSON written by --save-reference (or an alter-eval output of the retain model)")
    g.add_argument("--save-reference", default=None,
                   help="with --retain-model: write its forget-set truth ratios here, for later --reference")

    g = p.add_argument_group("evaluation")
    g.add_argument("--out", required=True, help="output JSON file (written atomically)")
    g.add_argument("--truth-ratio", default="geometric", choices=list(TRUTH_RATIO_MODES),
                   help="geometric: TOFU's aggregation and open-unlearning; arithmetic: the TOFU paper's equation")
    g.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help="greedy generation length of the ROUGE answers (TOFU: 200)")
    g.add_argument("--batch-size", type=int, default=16, help="rows per forward / generate batch")
    g.add_argument("--seed", type=int, default=0, help="torch / numpy / random seed")
    add_chat_template_option(g)
    g.add_argument("--system-prompt", default=None, help="system prompt when the chat template is used")
    g.add_argument("--prompt-format", default=DEFAULT_PROMPT_FORMAT, type=unescape_newlines,
                   help="prompt when no chat template is used ({question} is replaced; a typed \\n is a newline) "
                        "(default: %(default)r)")
    g.add_argument("--keep-rows", action="store_true", help="also write per-row NLLs and probabilities")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# ------------------------------------------------------------------------------------ models
def _model_name(name: str) -> str:
    return os.path.abspath(name) if os.path.exists(name) else name


def _adapter_kind(path: str) -> tuple[str, dict]:
    cfg_path = os.path.join(path, "adapter_config.json")
    if not os.path.isdir(path) or not os.path.isfile(cfg_path):
        raise UsageError(f"--adapter {path}: no adapter_config.json there (expected an ALTER or PEFT adapter directory)")
    meta = read_json_file(cfg_path, f"--adapter {path}: adapter_config.json is not valid JSON")
    from ..model.io import FORMAT
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        return "alter", meta
    if isinstance(meta, dict) and "peft_type" in meta:
        return "peft", meta
    raise UsageError(f"--adapter {path}: adapter_config.json is neither an ALTER adapter (format {FORMAT!r}) nor a "
                     "PEFT one (peft_type)")


def load_model(name: str, args, device):
    import torch
    from ..model.load import load_model as load_named
    try:
        model = load_named(name, dtype=getattr(torch, args.dtype), trust_remote_code=args.trust_remote_code,
                           progress=not args.no_progress)
    except (OSError, ValueError) as exc:            # ModelNameError is a ValueError
        raise RunError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval()


def attach_adapter(model, path: str, kind: str):
    import alter_kernels as ak
    if kind == "alter":
        try:
            cfg, _ = ak.read_adapter_config(path)
            ak.patch(model, cfg)
            ak.load_adapter(model, path)
        except (ak.AdapterError, ak.PatchError) as exc:
            raise RunError(f"--adapter {path}: {exc}") from None
        return model.eval()
    try:
        from peft import PeftModel
    except ImportError:
        raise UsageError(f"--adapter {path} is a PEFT adapter: install peft (pip install peft)") from None
    try:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise RunError(f"--adapter {path}: peft could not load it: {str(exc).splitlines()[0]}") from None
    return model.eval()


# -------------------------------------------------------------------------------------- table
def _fq_text(fq, meta: dict) -> str:
    if fq is not None:
        return f"{fq:.6g}"
    given = meta.get("reference") or meta.get("retain_model")
    return "n/a (not computable from the truth ratios)" if given else "n/a (no --retain-model / --reference)"


def format_table(res: dict) -> str:
    meta = res.get("meta", {})
    name = meta.get("model", "?") + (f" + adapter {meta['adapter']}" if meta.get("adapter") else "")
    fq = res.get("forget_quality")
    lines = [f"TOFU evaluation: {name}",
             f"  truth ratio: {res.get('truth_ratio_definition')}, max_new_tokens {res.get('max_new_tokens')}, "
             f"seed {meta.get('seed')}",
             f"forget quality  {_fq_text(fq, meta)}",
             f"model utility   {res['model_utility']:.4f}  (harmonic mean of the 9 numbers below, forget excluded; "
             f"retain part on the {res['retain']['n']} rows of {os.path.basename(meta.get('data', {}).get('retain', '?'))})",
             f"{'split':<14}{'rows':>6}{'probability':>13}{'ROUGE-L':>10}{'truth ratio':>13}"]
    for s in SPLITS:
        st = res[s]
        tr = st.get("truth_ratio")
        lines.append(f"{s.replace('_', ' '):<14}{st['n']:>6}{st['probability']:>13.4f}{st['rouge']:>10.4f}"
                     f"{'-' if tr is None else format(tr, '.4f'):>13}")
    lines.append("  truth ratio column: forget mean(min(R, 1/R)); others mean(max(0, 1 - R)); "
                 "real authors / world facts probability P_true / (P_true + sum P_false)")
    for s in ("forget", "retain"):
        if res.get(f"fluency_{s}"):
            lines.append(fluency_line(s, res[f"fluency_{s}"]))
    return "\n".join(lines)


def fluency_line(split: str, fl: dict) -> str:
    """One split's fluency line: repetition, distinct-1/2, mean length, degenerate share (or why not)."""
    deg = ("n/a (no retain-model answers to judge against: --retain-model, or a --reference that holds them)"
           if fl.get("degenerate_share") is None else
           f"{fl['degenerate_share']:.3f} (repetition above the retain model's {fl['degenerate_quantile']:.0%} "
           f"quantile {fl['degenerate_threshold']:.3f}; its own share {fl['reference_degenerate_share']:.3f}, "
           f"its repetition {fl['reference_repetition']:.3f})")
    return (f"fluency, {split} answers: repetition ({fl['repetition_n']}-grams) {fl['repetition']:.3f}, distinct-1 "
            f"{fl['distinct_1']:.3f}, distinct-2 {fl['distinct_2']:.3f}, mean length {fl['mean_words']:.1f} words, "
            f"degenerate {deg}")


# --------------------------------------------------------------------------------------- main
def _note(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def _resolve_model(args) -> tuple[str, str | None]:
    """(model name, adapter kind: "alter" / "peft" / None); the adapter's base model without --model."""
    adapter_kind, adapter_meta = (None, {})
    if args.adapter:
        adapter_kind, adapter_meta = _adapter_kind(args.adapter)
    model_name = args.model
    if model_name is None:
        model_name = adapter_meta.get("base_model") or adapter_meta.get("base_model_name_or_path")
        if not model_name:
            raise UsageError("--model is required" + (" (the adapter names no base model)" if args.adapter else ""))
        _note(f"model: {model_name} (the adapter's base model)")
    return model_name, adapter_kind


def _load_splits(files: dict, task_id) -> dict:
    from ..eval.data import load_rows
    rows = {}
    for s in SPLITS:
        need = ("question", "answer", "perturbed_answer")
        try:
            rows[s] = load_rows(files[s], require=need, task_id=task_id)
        except (ValueError, OSError) as exc:
            raise RunError(f"{s} data: {exc}") from None
        if not rows[s]:
            raise RunError(f"{s} data: {files[s]} holds no rows")
    _note("rows: " + ", ".join(f"{s} {len(rows[s])} ({files[s]})" for s in SPLITS))
    return rows


def _seed_device_tokenizer(args, model_name: str):
    """Seed torch / numpy / random, check the device, load the tokenizer: (device, tokenizer)."""
    import random

    import numpy as np
    import torch
    from ..model.load import load_tokenizer
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise UsageError(f"--device {device}: {str(exc).splitlines()[0]}") from None
    try:
        tok = load_tokenizer(args.tokenizer or model_name, trust_remote_code=args.trust_remote_code,
                             progress=not args.no_progress)
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot load tokenizer {args.tokenizer or model_name!r}: {str(exc).splitlines()[0]}") from None
    return device, tok


def _reference(args, rows: dict, tok, fmt, device, fingerprint: str, forget_file: str):
    """The retain model's forget-set truth ratios and its greedy forget / retain answers (the
    fluency reference) from --reference, or computed from --retain-model and saved with
    --save-reference; (None, {}) without either; and what the output's meta records about them."""
    from ..eval.tofu import generate_answers, truth_ratios
    retain_fp = rows_fingerprint(rows["retain"])
    if args.reference:
        reference, ref = read_reference(args.reference, args.truth_ratio, fingerprint)
        gens, notes = reference_generations(ref, retain_fp, {s: len(rows[s]) for s in ("forget", "retain")},
                                            args.max_new_tokens)
        for note in notes:
            _note(f"--reference {args.reference}: {note}: no degenerate share for that split")
        return reference, gens, {"reference": os.path.abspath(args.reference), "reference_n": len(reference)}
    if not args.retain_model:
        _note("no --retain-model / --reference: forget quality and degenerate shares are not computed")
        return None, {}, {}
    _note(f"retain model {args.retain_model}: forget-set truth ratios and forget / retain answers")
    retain_model = load_model(args.retain_model, args, device)
    tr = truth_ratios(retain_model, tok, rows["forget"], fmt, args.batch_size, mode=args.truth_ratio,
                      progress="retain model: forget" if not args.no_progress else False)
    reference = tr["ratio"].tolist()
    gens = {s: generate_answers(retain_model, tok, [r["question"] for r in rows[s]], fmt, args.max_new_tokens,
                                args.batch_size, progress=f"retain model: {s} answers" if not args.no_progress else False)
            for s in ("forget", "retain")}
    del retain_model, tr
    if args.save_reference:
        ensure_dir(os.path.dirname(os.path.abspath(args.save_reference)))
        write_json(args.save_reference, json_safe({
            "format": REFERENCE_FORMAT, "format_version": 1, "truth_ratio": args.truth_ratio,
            "retain_model": _model_name(args.retain_model), "forget_file": os.path.abspath(forget_file),
            "task_id": args.task_id, "forget_fingerprint": fingerprint, "prompt_format": args.prompt_format,
            "chat_template": args.chat_template_used, "n": len(reference), "truth_ratios": reference,
            "retain_fingerprint": retain_fp, "max_new_tokens": args.max_new_tokens, "generations": gens}))
        _note(f"reference written to {args.save_reference}")
    return reference, gens, {"retain_model": _model_name(args.retain_model), "reference_n": len(reference)}


def _meta(args, model_name: str, adapter_kind, ref_meta: dict, files: dict, fingerprint: str, device,
          seconds: float) -> dict:
    from ..version import __version__
    return {"model": _model_name(model_name),
            "adapter": os.path.abspath(args.adapter) if args.adapter else None, "adapter_type": adapter_kind,
            **ref_meta, "data": {s: os.path.abspath(files[s]) for s in SPLITS}, "task_id": args.task_id,
            "forget_fingerprint": fingerprint, "truth_ratio": args.truth_ratio,
            "max_new_tokens": args.max_new_tokens, "seed": args.seed, "device": str(device),
            "dtype": args.dtype, "batch_size": args.batch_size, "prompt_format": args.prompt_format,
            "chat_template": args.chat_template_used, "alter_kernels_version": __version__,
            "seconds": round(seconds, 2)}


def _run(args) -> int:
    from ..eval.format import QAFormat
    from ..eval.tofu import evaluate_tofu

    from . import eval_checks as checks
    checks.check_options(args)                                   # every option and path first (exit 2)
    model_name, adapter_kind = _resolve_model(args)
    checks.check_sources(args, model_name)
    files = resolve_data(args.data, args.forget_split)
    checks.check_outputs(args, model_name, files)
    if args.adapter:
        checks.check_adapter_files(args.adapter, adapter_kind)  # then every input file (exit 1)
    rows = _load_splits(files, args.task_id)
    fingerprint = rows_fingerprint(rows["forget"])
    if args.reference:
        read_reference(args.reference, args.truth_ratio, fingerprint)
    device, tok = _seed_device_tokenizer(args, model_name)
    for name in (model_name, args.retain_model):
        if name:
            checks.check_model_fit(args, tok, name)
    try:
        chat = QAFormat(template=args.prompt_format, chat=args.chat_template).uses_chat(tok)
    except ValueError as exc:
        raise UsageError(f"--chat-template {args.chat_template}: {exc}") from None
    _note(f"prompts: {'the tokenizer chat template' if chat else repr(args.prompt_format)} "
          f"(--chat-template {args.chat_template})")
    fmt = QAFormat(template=args.prompt_format, chat=chat, system_prompt=args.system_prompt)
    args.chat_template_used = chat
    t0 = time.perf_counter()
    reference, ref_gens, ref_meta = _reference(args, rows, tok, fmt, device, fingerprint, files["forget"])

    model = load_model(model_name, args, device)
    if args.adapter:
        model = attach_adapter(model, args.adapter, adapter_kind)
        _note(f"adapter {args.adapter} ({adapter_kind}) attached")
    res = evaluate_tofu(model, tok, rows["forget"], rows["retain"], rows["real_authors"], rows["world_facts"],
                        reference_truth_ratios=reference, fmt=fmt, batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens, keep_rows=args.keep_rows,
                        truth_ratio=args.truth_ratio, progress=not args.no_progress, reference_generations=ref_gens)
    res["meta"] = _meta(args, model_name, adapter_kind, ref_meta, files, fingerprint, device, time.perf_counter() - t0)
    res["meta"]["retain_fingerprint"] = rows_fingerprint(rows["retain"])
    first = ("forget_quality", "model_utility")
    res = {**{k: res[k] for k in first if k in res}, **{k: v for k, v in res.items() if k not in first}}
    ensure_dir(os.path.dirname(os.path.abspath(args.out)))
    write_json(args.out, json_safe(res))
    print(format_table(res))
    print(f"written: {args.out}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        try:
            return _run(args)
        except UsageError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        except RunError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:                     # a known failure of the run: one line, exit 1
            from .unlearn import _run_failure
            failure = _run_failure(exc, args.device or "the device")
            if failure is None:
                raise
            print(f"{PROG}: error: {failure.msg}", file=sys.stderr)
            return failure.code


if __name__ == "__main__":
    sys.exit(main())
