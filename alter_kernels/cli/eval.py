"""``alter-eval``: TOFU evaluation of a model (optionally with an ALTER or PEFT adapter) on
TOFU-format files, from the command line.

    alter-eval --model M [--adapter A] --data DIR_or_FILES (--retain-model R | --reference REF.json) \
               --out eval.json [--task-id 1] [--truth-ratio geometric] [--max-new-tokens 200] [--seed 0]

``--data`` is a folder holding the standard names (TOFU's ``forget10_perturbed.json``,
``retain_perturbed.json``, ``real_authors_perturbed.json``, ``world_facts_perturbed.json``, or
the embedded benchmark's ``forget10.json``, ``retain90.json``, ``real_authors.json``,
``world_facts.json``), or the four files. Forget quality needs the retain model's forget-set
truth ratios: ``--retain-model`` computes them (``--save-reference`` keeps them for later runs),
``--reference`` reads them back (or the ``eval.json`` of an earlier run of the retain model).

An ALTER adapter directory (``adapter_config.json`` written by ``ak.save_adapter``) is loaded by
patching the model with the adapter's config and ``ak.load_adapter``; a PEFT adapter directory
through ``peft`` (merged). The model is then called plainly: an ALTER model is evaluated with its
default inference rule. Prints the TOFU table and writes it as JSON (atomically). Exit status: 0
done, 2 bad usage or input (one line ``alter-eval: error: ...``). docs/benchmark.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
import warnings

from .._fsio import ensure_dir, json_safe, write_json

PROG = "alter-eval"
REFERENCE_FORMAT = "alter_kernels.tofu_reference"
SPLITS = ("forget", "retain", "real_authors", "world_facts")


class UsageError(Exception):
    """Bad command-line usage or input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):              # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n")


def build_parser() -> argparse.ArgumentParser:
    from .format import DEFAULT_TEMPLATE
    from .metrics import TRUTH_RATIO_MODES
    from .tofu import DEFAULT_MAX_NEW_TOKENS
    p = _Parser(prog=PROG, description="TOFU evaluation (forget quality, model utility and its 9 parts, ROUGE-L, "
                                       "probabilities, truth ratios) of a causal LM, optionally with an ALTER or "
                                       "PEFT adapter, on TOFU-format files.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="model directory or Hugging Face name (default: the adapter's base model)")
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
                     help="model directory or name of the retain model (trained without the forget set)")
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
    g.add_argument("--chat-template", action="store_true", help="prompt with the tokenizer's chat template")
    g.add_argument("--system-prompt", default=None, help="system prompt of --chat-template")
    g.add_argument("--prompt-format", default=DEFAULT_TEMPLATE, type=_unescape,
                   help="prompt without --chat-template ({question} is replaced; a typed \\n is a newline) "
                        "(default: %(default)r)")
    g.add_argument("--keep-rows", action="store_true", help="also write per-row NLLs and probabilities")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# ------------------------------------------------------------------------------------- data
_FORGET_RE = re.compile(r"^(forget\d+)(_perturbed)?\.jsonl?$")


def _pick(folder: str, names: list[str], what: str) -> str:
    for n in names:
        for ext in (".json", ".jsonl"):
            path = os.path.join(folder, n + ext)
            if os.path.isfile(path):
                return path
    raise UsageError(f"--data {folder}: no {what} file (looked for {', '.join(n + '.json' for n in names)})")


def resolve_data(data: list[str], forget_split: str | None = None) -> dict:
    """{"forget", "retain", "real_authors", "world_facts"} -> file path."""
    if len(data) == 1 and os.path.isdir(data[0]):
        folder = data[0]
        found = sorted({m.group(1) for f in os.listdir(folder) if (m := _FORGET_RE.match(f))})
        if forget_split is None:
            if not found:
                raise UsageError(f"--data {folder}: no forget file (forgetNN_perturbed.json or forgetNN.json)")
            if len(found) > 1:
                raise UsageError(f"--data {folder} holds several forget splits {found}; pick one with --forget-split")
            forget_split = found[0]
        forget = _pick(folder, [f"{forget_split}_perturbed", forget_split], f"{forget_split} forget")
        m = re.fullmatch(r"forget(\d+)", forget_split)
        retain_names = ["retain_perturbed"] + ([f"retain{100 - int(m.group(1)):02d}"] if m else [])
        return {"forget": forget, "retain": _pick(folder, retain_names, "retain"),
                "real_authors": _pick(folder, ["real_authors_perturbed", "real_authors"], "real authors"),
                "world_facts": _pick(folder, ["world_facts_perturbed", "world_facts"], "world facts")}
    for f in data:
        if not os.path.isfile(f):
            raise UsageError(f"--data: {f} is not a file" + (" (a folder must be given alone)" if os.path.isdir(f) else ""))
    if len(data) != 4:
        raise UsageError(f"--data takes one folder or four files (forget, retain, real authors, world facts), "
                         f"got {len(data)} files")
    keys = {"forget": r"forget", "retain": r"retain", "real_authors": r"real[_-]?author", "world_facts": r"world[_-]?fact"}
    by_name = {}
    for f in data:
        hits = [k for k, pat in keys.items() if re.search(pat, os.path.basename(f).lower())]
        if len(hits) == 1 and hits[0] not in by_name:
            by_name[hits[0]] = f
    if len(by_name) == 4:
        return by_name
    return dict(zip(SPLITS, data))


def _fingerprint(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(r["question"].encode("utf-8") + b"\x00")
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------ models
def _model_name(name: str) -> str:
    return os.path.abspath(name) if os.path.isdir(name) else name


def _read_json(path: str, what: str):
    """json.load(path), or a UsageError "<what> (<reason>)"."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{what} ({exc})") from None


def _adapter_kind(path: str) -> tuple[str, dict]:
    cfg_path = os.path.join(path, "adapter_config.json")
    if not os.path.isdir(path) or not os.path.isfile(cfg_path):
        raise UsageError(f"--adapter {path}: no adapter_config.json there (expected an ALTER or PEFT adapter directory)")
    meta = _read_json(cfg_path, f"--adapter {path}: adapter_config.json is not valid JSON")
    from ..adapter_io import FORMAT
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        return "alter", meta
    if isinstance(meta, dict) and "peft_type" in meta:
        return "peft", meta
    raise UsageError(f"--adapter {path}: adapter_config.json is neither an ALTER adapter (format {FORMAT!r}) nor a "
                     "PEFT one (peft_type)")


def load_model(name: str, args, device):
    import torch
    from transformers import AutoModelForCausalLM
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=getattr(torch, args.dtype),
                                                     trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval()


def attach_adapter(model, path: str, kind: str):
    import alter_kernels as ak
    if kind == "alter":
        try:
            cfg, _ = ak.read_adapter_config(path)
            ak.patch(model, cfg)
            ak.load_adapter(model, path)
        except (ak.AdapterError, ak.PatchError) as exc:
            raise UsageError(f"--adapter {path}: {exc}") from None
        return model.eval()
    try:
        from peft import PeftModel
    except ImportError:
        raise UsageError(f"--adapter {path} is a PEFT adapter: install peft (pip install peft)") from None
    try:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UsageError(f"--adapter {path}: peft could not load it: {str(exc).splitlines()[0]}") from None
    return model.eval()


# ---------------------------------------------------------------------------------- reference
def read_reference(path: str, truth_ratio: str, fingerprint: str) -> tuple[list[float], dict]:
    ref = _read_json(path, f"--reference {path}: cannot read it")
    if isinstance(ref, dict) and ref.get("format") == REFERENCE_FORMAT:
        ratios, mode, fp = ref.get("truth_ratios"), ref.get("truth_ratio"), ref.get("forget_fingerprint")
    elif isinstance(ref, dict) and isinstance(ref.get("forget"), dict) and "truth_ratios" in ref["forget"]:
        ratios, mode = ref["forget"]["truth_ratios"], ref.get("truth_ratio_definition")   # an alter-eval output
        fp = (ref.get("meta") or {}).get("forget_fingerprint")
    else:
        raise UsageError(f"--reference {path}: neither a reference written by --save-reference nor an alter-eval output")
    if not isinstance(ratios, list) or not ratios or not all(isinstance(x, (int, float)) for x in ratios):
        raise UsageError(f"--reference {path}: 'truth_ratios' must be a non-empty list of numbers")
    if mode is not None and mode != truth_ratio:
        raise UsageError(f"--reference {path} holds {mode} truth ratios but --truth-ratio is {truth_ratio}")
    if fp is not None and fp != fingerprint:
        raise UsageError(f"--reference {path} was computed on other forget questions than --data's "
                         f"(fingerprint {fp} vs {fingerprint}); check --data / --task-id")
    return [float(x) for x in ratios], ref


# -------------------------------------------------------------------------------------- table
def format_table(res: dict) -> str:
    meta = res.get("meta", {})
    name = meta.get("model", "?") + (f" + adapter {meta['adapter']}" if meta.get("adapter") else "")
    fq = res.get("forget_quality")
    lines = [f"TOFU evaluation: {name}",
             f"  truth ratio: {res.get('truth_ratio_definition')}, max_new_tokens {res.get('max_new_tokens')}, "
             f"seed {meta.get('seed')}",
             f"forget quality  {'n/a (no --retain-model / --reference)' if fq is None else f'{fq:.6g}'}",
             f"model utility   {res['model_utility']:.4f}  (harmonic mean of the 9 numbers below, forget excluded)",
             f"{'split':<14}{'rows':>6}{'probability':>13}{'ROUGE-L':>10}{'truth ratio':>13}"]
    for s in SPLITS:
        st = res[s]
        tr = st.get("truth_ratio")
        lines.append(f"{s.replace('_', ' '):<14}{st['n']:>6}{st['probability']:>13.4f}{st['rouge']:>10.4f}"
                     f"{'-' if tr is None else format(tr, '.4f'):>13}")
    lines.append("  truth ratio column: forget mean(min(R, 1/R)); others mean(max(0, 1 - R)); "
                 "real authors / world facts probability P_true / (P_true + sum P_false)")
    fl = res.get("fluency", {})
    if fl:
        lines.append(f"fluency (forget + retain answers): distinct-2 {fl['distinct_2']:.3f}, "
                     f"repetition rate {fl['repetition_rate_2']:.3f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- main
def _run(args) -> int:
    import random

    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from .. import __version__
    from .data import load_rows
    from .format import QAFormat
    from .tofu import evaluate_tofu, truth_ratios

    def note(msg):
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.save_reference and not args.retain_model:
        raise UsageError("--save-reference needs --retain-model (it saves that model's truth ratios)")
    if "{question}" not in args.prompt_format and not args.chat_template:
        raise UsageError(f"--prompt-format must contain {{question}}, got {args.prompt_format!r}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out) or (os.path.exists(out_dir) and not os.path.isdir(out_dir)):
        raise UsageError(f"--out {args.out} must be a file path")

    adapter_kind, adapter_meta = (None, {})
    if args.adapter:
        adapter_kind, adapter_meta = _adapter_kind(args.adapter)
    model_name = args.model
    if model_name is None:
        model_name = adapter_meta.get("base_model") or adapter_meta.get("base_model_name_or_path")
        if not model_name:
            raise UsageError("--model is required" + (" (the adapter names no base model)" if args.adapter else ""))
        note(f"model: {model_name} (the adapter's base model)")

    files = resolve_data(args.data, args.forget_split)
    rows = {}
    for s in SPLITS:
        need = ("question", "answer", "perturbed_answer")
        try:
            rows[s] = load_rows(files[s], require=need, task_id=args.task_id)
        except (ValueError, OSError) as exc:
            raise UsageError(f"{s} data: {exc}") from None
        if not rows[s]:
            raise UsageError(f"{s} data: {files[s]} holds no rows")
    note("rows: " + ", ".join(f"{s} {len(rows[s])} ({files[s]})" for s in SPLITS))
    fingerprint = _fingerprint(rows["forget"])

    seed = args.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise UsageError(f"--device {device}: {str(exc).splitlines()[0]}") from None
    try:
        tok = AutoTokenizer.from_pretrained(args.tokenizer or model_name, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load tokenizer {args.tokenizer or model_name!r}: {str(exc).splitlines()[0]}") from None
    fmt = QAFormat(template=args.prompt_format, chat=args.chat_template, system_prompt=args.system_prompt)
    progress = not args.no_progress
    t0 = time.perf_counter()

    reference, ref_meta = None, {}
    if args.reference:
        reference, _ = read_reference(args.reference, args.truth_ratio, fingerprint)
        ref_meta = {"reference": os.path.abspath(args.reference), "reference_n": len(reference)}
    elif args.retain_model:
        note(f"retain model {args.retain_model}: forget-set truth ratios")
        retain_model = load_model(args.retain_model, args, device)
        tr = truth_ratios(retain_model, tok, rows["forget"], fmt, args.batch_size, mode=args.truth_ratio,
                          progress="retain model: forget" if progress else False)
        reference = tr["ratio"].tolist()
        del retain_model, tr
        ref_meta = {"retain_model": _model_name(args.retain_model), "reference_n": len(reference)}
        if args.save_reference:
            ensure_dir(os.path.dirname(os.path.abspath(args.save_reference)))
            write_json(args.save_reference, json_safe({
                "format": REFERENCE_FORMAT, "format_version": 1, "truth_ratio": args.truth_ratio,
                "retain_model": _model_name(args.retain_model), "forget_file": os.path.abspath(files["forget"]),
                "task_id": args.task_id, "forget_fingerprint": fingerprint, "prompt_format": args.prompt_format,
                "chat_template": args.chat_template, "n": len(reference), "truth_ratios": reference}))
            note(f"reference written to {args.save_reference}")
    else:
        note("no --retain-model / --reference: forget quality is not computed")

    model = load_model(model_name, args, device)
    if args.adapter:
        model = attach_adapter(model, args.adapter, adapter_kind)
        note(f"adapter {args.adapter} ({adapter_kind}) attached")
    res = evaluate_tofu(model, tok, rows["forget"], rows["retain"], rows["real_authors"], rows["world_facts"],
                        reference_truth_ratios=reference, fmt=fmt, batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens, keep_rows=args.keep_rows,
                        truth_ratio=args.truth_ratio, progress=progress)
    res["meta"] = {"model": _model_name(model_name),
                   "adapter": os.path.abspath(args.adapter) if args.adapter else None, "adapter_type": adapter_kind,
                   **ref_meta, "data": {s: os.path.abspath(files[s]) for s in SPLITS}, "task_id": args.task_id,
                   "forget_fingerprint": fingerprint, "truth_ratio": args.truth_ratio,
                   "max_new_tokens": args.max_new_tokens, "seed": seed, "device": str(device),
                   "dtype": args.dtype, "batch_size": args.batch_size, "prompt_format": args.prompt_format,
                   "chat_template": args.chat_template, "alter_kernels_version": __version__,
                   "seconds": round(time.perf_counter() - t0, 2)}
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


if __name__ == "__main__":
    sys.exit(main())
