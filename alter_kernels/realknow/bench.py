"""The real-knowledge benchmark's runs: the base model's pass (which facts it knows, its answers,
fluency and passage NLL), one cached cell per (method, family, lr scale, seed), and the DEV
selection. :mod:`.report` turns cells into results.json and tables; :mod:`.cli` is the command.

A cell unlearns the family's forget rows (trained wording) with ``ak.unlearn`` from a fresh copy
of the base model, retain rows = the retain-training half of the family's neighbours that the
base model answers; every method gets the same rows, epochs, batch size, max_length and seed,
and the engine's default learning rates times one scale (:data:`LR_KEYS`). Cells are written
atomically to ``<out>/cells/<family>/<method>_x<scale>_s<seed>.json``; a rerun skips them.
"""
from __future__ import annotations

import copy
import os
import time

from ..common.fsio import ensure_dir
from ..common.fsio import write_json as _write_json
from ..eval.fluency import fluency_stats, repetition_threshold
from ..eval.fluency_model import open_generations, text_nll
from ..eval.format import QAFormat
from .data import FORGET_WORDINGS, candidate_facts, family_rows, general_rows
from .general import OPEN_RETAIN, PASSAGES
from .score import accuracy_by_kind, answer_rows, routed_rows

MODEL = "smollm2-135m-instruct"
METHODS = ("alter", "asymlora", "npo_retain", "graddiff")
LR_KEYS = ("lr", "lr_A", "lr_B", "lr_router")      # scaled together, from ak.unlearn's DEFAULTS
GRID = (0.3, 1.0, 3.0)
SEEDS = (0, 1, 2)
# full: the benchmark; small: the demo and a time-boxed CPU run (the same number of training steps:
# 20 facts x 3 epochs or 10 facts x 6 epochs at batch 4 gives 15 and 18 steps)
SIZES = {"full": {"forget": 20, "open": 10, "general": 32, "epochs": 3},
         "small": {"forget": 10, "open": 6, "general": 16, "epochs": 6}}
TRAIN = {"batch_size": 4, "max_length": 96, "chat_template": True, "eval_each_epoch": False}
OPEN_NEW_TOKENS = 48


def write_json(path: str, obj) -> str:
    """The package's atomic JSON writer, creating the folder first."""
    ensure_dir(os.path.dirname(path) or ".")
    return _write_json(path, obj)


def chat_format() -> QAFormat:
    """The prompt format of training and evaluation alike (the tokenizer's chat template)."""
    return QAFormat(chat=True)


def load_base(name: str = MODEL):
    from ..model.load import load_pretrained
    model, tok = load_pretrained(name)
    model.eval()
    return model, tok


def _select_known(model, tok, family: str, n_forget: int) -> dict:
    """Ask every candidate fact in its trained wording; the first ``n_forget`` known facts are
    the forget set, the other known ones the same-relation neighbours."""
    facts = candidate_facts(family)
    rows = [{"id": f["fact"], "question": f["q"], "aliases": f["aliases"]} for f in facts]
    ans = answer_rows(model, tok, rows)
    known = [f for f, a in zip(facts, ans) if a["correct"]]
    if len(known) < n_forget + 2:
        raise RuntimeError(f"family {family}: the base model knows only {len(known)} of {len(facts)} facts")
    return {"forget": known[:n_forget], "other": known[n_forget:], "n_known": len(known), "n_total": len(facts)}


def eval_rows(fam: dict) -> list[dict]:
    """Every row a cell scores: forget probes, held-out neighbours, mention, homonym, general,
    and the retain-training rows (to see what training on them did)."""
    return fam["probes"] + fam["neighbour"] + fam["mention"] + fam["homonym"] + fam["general"] + fam["retain_train"]


def evaluate(model, tok, fam: dict, size: dict) -> dict:
    """Answers of every eval row, open-ended generations (forget / retain prompts) and passage NLL."""
    t = time.perf_counter()
    ans = answer_rows(model, tok, eval_rows(fam))
    fmt = chat_format()
    gens_f = open_generations(model, tok, fam["open_forget"][:size["open"]], fmt, OPEN_NEW_TOKENS)
    gens_r = open_generations(model, tok, list(OPEN_RETAIN[:size["open"]]), fmt, OPEN_NEW_TOKENS)
    return {"answers": {a["id"]: a for a in ans}, "open_forget": gens_f, "open_retain": gens_r,
            "passage_nll": text_nll(model, tok, PASSAGES), "eval_seconds": time.perf_counter() - t}


def build_family(model, tok, family: str, size: dict) -> dict:
    """The family's rows with the known-fact filter applied (retain rows: base-known only)."""
    sel = _select_known(model, tok, family, size["forget"])
    fam = family_rows(family, sel["forget"], sel["other"])
    fam["general"] = general_rows()[:size["general"]]
    fam["n_known"], fam["n_total"] = sel["n_known"], sel["n_total"]
    return fam


def base_pass(model, tok, family: str, size: dict, path: str) -> dict:
    """The base model's pass for a family (cached at ``path``): rows, answers, fluency, NLL."""
    import json
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    t = time.perf_counter()
    fam = build_family(model, tok, family, size)
    print(f"  {family}: {fam['n_known']}/{fam['n_total']} facts known ({time.perf_counter() - t:.0f}s); "
          f"evaluating {len(eval_rows(fam))} rows", flush=True)
    ev = evaluate(model, tok, fam, size)
    base_ok = {i: a["correct"] for i, a in ev["answers"].items()}
    known_train = [r for r in fam["retain_train"] if base_ok.get(r["id"])]
    out = {"family": family, "rows": fam, "retain_rows": known_train, "base": ev, "base_correct": base_ok}
    write_json(path, out)
    return out


def lr_hparams(scale: float) -> dict:
    from ..unlearn.options import DEFAULTS
    return {k: DEFAULTS[k] * scale for k in LR_KEYS}


def cell_path(out: str, family: str, method: str, scale: float, seed: int) -> str:
    return os.path.join(out, "cells", family, f"{method}_x{scale:g}_s{seed}.json")


def run_cell(base_model, tok, bp: dict, method: str, scale: float, seed: int, size: dict, out: str,
             routing: bool = True) -> dict:
    """Unlearn with ``method`` at lr ``scale`` and ``seed``, evaluate, write the cell (or read it).
    ``routing``: also record which rows a routed method sends to a forget expert (one teacher-forced
    forward per eval row; the demo skips it)."""
    import json

    import torch

    from ..unlearn import unlearn
    from ..unlearn.options import resolve_variant
    path = cell_path(out, bp["family"], method, scale, seed)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    fam = bp["rows"]
    forget = [{"question": r["question"], "answer": r["answer"], "aliases": r["aliases"]} for r in fam["forget"]]
    retain = [{"question": r["question"], "answer": r["answer"]} for r in bp["retain_rows"]]
    model = copy.deepcopy(base_model)
    torch.manual_seed(seed)
    t = time.perf_counter()
    base_method, extra = resolve_variant(method)
    res = unlearn(model, forget, retain, method=base_method, tokenizer=tok, epochs=size["epochs"], seed=seed,
                  progress=False, **TRAIN, **lr_hparams(scale), **extra)
    train_s = time.perf_counter() - t
    model = res.model.eval()
    ev = evaluate(model, tok, fam, size)
    if routing:
        ev["routed"] = routed_rows(model, tok, eval_rows(fam), bp["base"]["answers"])
    tokens = sum(h.get("tokens", 0) for h in res.history)
    cell = {"method": method, "family": bp["family"], "scale": scale, "seed": seed, "train_seconds": train_s,
            "steps": res.steps, "train_tokens": tokens, "hparams": lr_hparams(scale), "train": TRAIN,
            "epochs": size["epochs"], **ev}
    write_json(path, cell)
    del model
    return cell


def metrics(bp: dict, ev: dict) -> dict:
    """The summary numbers of one evaluation (a cell or the base pass) against the base pass."""
    fam = bp["rows"]
    # the retain-training rows are scored as their own kind, never pooled with held-out neighbours
    train_ids = {r["id"] for r in fam["retain_train"]}
    rows = [dict(r, kind="retain_train") if r["id"] in train_ids else r for r in eval_rows(fam)]
    acc = accuracy_by_kind(rows, ev["answers"], bp["base_correct"])
    pooled = {}
    groups = {"forget_heldout": FORGET_WORDINGS, "neighbour": ("nb_entity", "nb_relation")}
    for g, kinds in groups.items():
        sel = [r for r in rows if r["kind"] in kinds and bp["base_correct"].get(r["id"])]
        pooled[g] = sum(ev["answers"][r["id"]]["correct"] for r in sel) / len(sel) if sel else None
    thr = repetition_threshold(bp["base"]["open_forget"] + bp["base"]["open_retain"])
    m = {"acc": {k: v["acc"] for k, v in acc.items()}, "n": {k: v["n"] for k, v in acc.items()},
         "n_total": {k: v["n_total"] for k, v in acc.items()}, **pooled,
         "fluency_forget": fluency_stats(ev["open_forget"], threshold=thr),
         "fluency_retain": fluency_stats(ev["open_retain"], threshold=thr),
         "passage_nll": ev["passage_nll"], "nll_ratio": ev["passage_nll"] / bp["base"]["passage_nll"]}
    if ev.get("routed"):                 # share of rows routed to a forget expert, per kind (base-known rows)
        m["routed"] = {k: _share([ev["routed"][r["id"]] for r in rows if r["kind"] == k
                                  and bp["base_correct"].get(r["id"])]) for k in acc}
    return m


def _share(flags: list) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _load_cell(path: str):
    import json
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
