"""A router by meaning (issue 23 groundwork): can a detector over SmolLM2-135M-Instruct's hidden
states route the realknow benchmark's forget prompts by what they mean?

    python bench/router_detector.py [--threads 1] [--out bench/results/router_detector]

Rows: the cached base pass of the real-knowledge benchmark (bench/results/realknow/small/cells/
<family>/base_x1_s0.json; no generation is re-run). Every prompt goes through the chat template
as the realknow scorer formats it (alter_kernels.realknow.score.prompt_ids). Features, per layer in
LAYERS (the output of decoder layer L; 30 is the last layer, after the final norm): the last
prompt token's state, and the mean over the prompt tokens from the first user turn's
``<|im_start|>`` on (what a causal router sees when the answer starts). Features are cached in
bench/out/router_detector/ so reruns are instant.

Detectors are fitted on the training side only: positives = the ``forget`` rows (trained
wording, optionally augmented, AUGMENTS), negatives = ``retain_train`` + the fitting half of the
general rows (even positions; the odd ones are the evaluation half). Settings (layer, feature,
scorer, its hyper-parameter, threshold) are chosen on DEV_FAMILY and applied unchanged to
TEST_FAMILY's own refit. The scorers live in bench/router_scorers.py.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from alter_kernels.common.fsio import atomic_write, ensure_dir, write_json  # noqa: E402
from alter_kernels.model.load import load_tokenizer  # noqa: E402
from alter_kernels.realknow.data import FORGET_WORDINGS, NEIGHBOUR_KINDS  # noqa: E402
from alter_kernels.realknow.score import prompt_ids  # noqa: E402
from router_scorers import GRID, SCORERS, choose_dev, evaluate, fit_scorer, prefix_match_routes  # noqa: E402

MODEL = "smollm2-135m-instruct"
LAYERS = (4, 8, 12, 16, 20, 24, 30)
FEATURES = ("last", "mean")
DEV_FAMILY, TEST_FAMILY = "books", "capitals"
CELLS = os.path.join(ROOT, "bench", "results", "realknow", "small", "cells")
CACHE = os.path.join(ROOT, "bench", "out", "router_detector", "features.pt")
NEG_FAMILIES = ("neighbour", "mention", "homonym", "general_eval")
# augmentation variants of the positives and the held-out families each one leaks into
AUGMENTS = {"none": ((), ()), "case": (("lower", "upper"), ("lower", "upper")),
            "case+swap": (("lower", "upper", "swap"), ("lower", "upper", "typo"))}


# ----------------------------------------------------------------------------------------- data
def load_family(family: str) -> dict:
    path = os.path.join(CELLS, family, "base_x1_s0.json")
    if not os.path.isfile(path):
        raise SystemExit(f"router_detector: no base pass at {path} (run the realknow benchmark first)")
    with open(path) as f:
        d = json.load(f)
    return {"rows": d["rows"], "base_correct": d["base_correct"], "retain_rows": d["retain_rows"]}


def swap_typo(word: str) -> str:
    """Swap the 2nd and 3rd letters (the benchmark's own typo swaps letters mid-word of the
    longest word, so this is the same kind of edit at another place)."""
    return word[0] + word[2] + word[1] + word[3:] if len(word) >= 4 else word


def augment(row: dict, how: str) -> dict:
    q = row["question"]
    if how == "lower":
        q = q.lower()
    elif how == "upper":
        q = q.upper()
    elif how == "swap":
        first = row["entity"].split(" ")[0]
        q = q.replace(first, swap_typo(first), 1)
    else:
        raise ValueError(f"augment: unknown transform {how!r}")
    return dict(row, id=f"{row['id']}~{how}", question=q)


def split_sets(fam: dict, augments=()) -> dict:
    """The fitting side (pos, neg) and the evaluation groups of one family (lists of rows)."""
    rows = fam["rows"]
    general = rows["general"]
    pos = list(rows["forget"]) + [augment(r, a) for a in augments for r in rows["forget"]]
    groups = {k: [r for r in rows["probes"] if r["kind"] == k] for k in ("forget",) + FORGET_WORDINGS}
    groups = {k: v for k, v in groups.items() if v}
    groups.update(retain_train=rows["retain_train"], neighbour=rows["neighbour"], mention=rows["mention"],
                  homonym=rows["homonym"], general_eval=general[1::2])
    for k in NEIGHBOUR_KINDS:              # the held-out neighbours by kind (reported, not used to choose)
        groups[k] = [r for r in rows["neighbour"] if r["kind"] == k]
    return {"pos": pos, "neg": list(rows["retain_train"]) + general[0::2], "groups": groups}


# ------------------------------------------------------------------------------------- features
def user_start(ids: list[int], im_start: int) -> int:
    """Index of the first user turn's ``<|im_start|>`` (the second one: the first opens the system turn)."""
    at = [i for i, t in enumerate(ids) if t == im_start]
    if len(at) < 2:
        raise ValueError("router_detector: the chat prompt has no system turn followed by a user turn")
    return at[1]


def _key(ids: list[int]) -> str:
    return hashlib.sha1((MODEL + repr(LAYERS) + repr(ids)).encode()).hexdigest()


def _load_cache() -> dict:
    if os.path.isfile(CACHE):
        return torch.load(CACHE, weights_only=True)
    return {"feats": {}, "seconds": {}}


def _save_cache(cache: dict) -> None:
    ensure_dir(os.path.dirname(CACHE))
    atomic_write(CACHE, writer=lambda f: torch.save(cache, f))


@torch.no_grad()
def extract(rows: list[dict], tok, need_model) -> tuple[dict, dict]:
    """{row id: [2, len(LAYERS), d] fp32 (last, mean)} and per-prompt extraction seconds; the
    model is loaded only when some prompt is not cached."""
    cache = _load_cache()
    todo = [(r["id"], prompt_ids(tok, r)) for r in rows]
    missing = [(i, ids) for i, ids in todo if _key(ids) not in cache["feats"]]
    model = need_model() if missing else None
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    for n, (rid, ids) in enumerate(missing):
        t0 = time.perf_counter()
        out = model(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
        hs = torch.stack([out.hidden_states[layer][0] for layer in LAYERS])        # [L, T, d]
        s = user_start(ids, im_start)
        f = torch.stack([hs[:, -1], hs[:, s:].mean(1)]).float().clone()
        cache["feats"][_key(ids)] = f
        cache["seconds"][_key(ids)] = time.perf_counter() - t0
        if n % 50 == 49:
            print(f"  features {n + 1}/{len(missing)}", flush=True)
            _save_cache(cache)
    if missing:
        _save_cache(cache)
    feats = {i: cache["feats"][_key(ids)] for i, ids in todo}
    secs = {i: cache["seconds"][_key(ids)] for i, ids in todo}
    return feats, {"ids": {i: len(ids) for i, ids in todo}, "seconds": secs}


def matrix(feats: dict, rows: list[dict], li: int, fi: int) -> torch.Tensor:
    return torch.stack([feats[r["id"]][fi, li] for r in rows]).double()


# ----------------------------------------------------------------------------------------- study
def run_config(feats, sets, cfg, base_correct, tau=None) -> dict:
    li, fi = LAYERS.index(cfg["layer"]), FEATURES.index(cfg["feature"])
    score = fit_scorer(cfg["scorer"], matrix(feats, sets["pos"], li, fi), matrix(feats, sets["neg"], li, fi),
                       cfg["param"])
    scores = {k: score(matrix(feats, rows, li, fi)).tolist() for k, rows in sets["groups"].items()}
    return evaluate(scores, sets["groups"], base_correct, FORGET_WORDINGS, NEG_FAMILIES, tau)


def study(feats, fams: dict) -> dict:
    """Per augmentation variant: the DEV grid, the DEV choice (per scorer and overall) and its
    TEST refit with the threshold unchanged."""
    out = {}
    for aug, (transforms, leaks) in AUGMENTS.items():
        dev_sets = split_sets(fams[DEV_FAMILY], transforms)
        test_sets = split_sets(fams[TEST_FAMILY], transforms)
        grid = []
        for layer in LAYERS:
            for feature in FEATURES:
                for scorer in SCORERS:
                    for param in GRID[scorer]:
                        cfg = {"layer": layer, "feature": feature, "scorer": scorer, "param": param}
                        grid.append(dict(cfg, dev=run_config(feats, dev_sets, cfg, fams[DEV_FAMILY]["base_correct"])))
        chosen = {s: choose_dev([g for g in grid if g["scorer"] == s]) for s in SCORERS}
        chosen["overall"] = choose_dev(grid)
        res = {}
        for name, g in chosen.items():
            cfg = {k: g[k] for k in ("layer", "feature", "scorer", "param")}
            tau = g["dev"]["tau"]
            res[name] = {"config": cfg, "tau": tau, "dev": g["dev"],
                         "test": run_config(feats, test_sets, cfg, fams[TEST_FAMILY]["base_correct"], tau),
                         "test_midpoint": run_config(feats, test_sets, cfg, fams[TEST_FAMILY]["base_correct"], 0.0)}
        for g in grid:       # the oracle: each config with its threshold chosen on TEST itself (upper bound)
            cfg = {k: g[k] for k in ("layer", "feature", "scorer", "param")}
            g["oracle"] = run_config(feats, test_sets, cfg, fams[TEST_FAMILY]["base_correct"])
        o = choose_dev(grid, "oracle")
        res["test_oracle"] = {"config": {k: o[k] for k in ("layer", "feature", "scorer", "param")},
                              "tau": o["oracle"]["tau"], "test": o["oracle"]}
        out[aug] = {"transforms": list(transforms), "leaks_into": list(leaks), "chosen": res,
                    "grid": [{k: g[k] for k in ("layer", "feature", "scorer", "param")} | {
                        f"{w}_{m}": g[w][m] for w in ("dev", "oracle") for m in ("tau", "pooled_fp", "worst_fp",
                                                                                 "min_recall")} for g in grid]}
    return out


def prefix_baseline(fams: dict, tok, need_model) -> dict:
    """Today's prefix-match rule at the first answer token, per family (no training needed)."""
    model = need_model()
    out = {}
    for name, fam in fams.items():
        sets = split_sets(fam)
        routes = prefix_match_routes(model, tok, fam["rows"]["forget"], fam["retain_rows"], sets["groups"])
        scores = {k: [1.0 if x else -1.0 for x in v] for k, v in routes.items()}
        out[name] = evaluate(scores, sets["groups"], fam["base_correct"], FORGET_WORDINGS, NEG_FAMILIES, 0.0)
    return out


# ---------------------------------------------------------------------------------------- report
def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def family_table(ev: dict, title: str) -> list[str]:
    fams = [k for k in ("forget",) + FORGET_WORDINGS if k in ev["recall"]]
    lines = [f"**{title}**", "", "| family | " + " | ".join(fams) + " |", "|---" * (len(fams) + 1) + "|"]
    lines.append("| recall, all rows | " + " | ".join(_fmt(ev["recall"][k]["all"]) for k in fams) + " |")
    lines.append("| recall, base-known rows | " + " | ".join(
        f"{_fmt(ev['recall'][k]['known'])} (n={ev['recall'][k]['n_known']})" for k in fams) + " |")
    negs = ("retain_train",) + NEG_FAMILIES[:1] + NEIGHBOUR_KINDS + NEG_FAMILIES[1:]
    lines += ["", "| routed (false positive) | " + " | ".join(negs) + " |", "|---" * (len(negs) + 1) + "|",
              "| rate | " + " | ".join(f"{_fmt(ev['fp'][k]['rate'])} ({ev['fp'][k]['routed']}/{ev['fp'][k]['n']})"
                                       for k in negs) + " |", ""]
    return lines


def write_report(out_dir: str, results: dict) -> None:
    ensure_dir(out_dir)
    write_json(os.path.join(out_dir, "results.json"), results)
    t = results["timing"]
    lines = ["# Router by meaning: detector study (issue 23)", "",
             f"Machine: {results['machine']}. Model {MODEL} fp32, {results['threads']} torch thread(s). "
             f"Feature extraction: {t['prompts']} prompts, mean {t['mean_tokens']:.0f} tokens, "
             f"{t['ms_per_prompt']:.0f} ms per prompt (one forward, all hidden states). "
             f"Settings chosen on {DEV_FAMILY} (DEV), reported on {TEST_FAMILY} (TEST) after refitting on "
             f"its own training rows; threshold: {results['threshold_rule']}", ""]
    for aug, a in results["study"].items():
        c = a["chosen"]["overall"]
        lines += [f"## Augmentation: {aug} (leaks into: {', '.join(a['leaks_into']) or 'nothing'})", "",
                  f"Chosen on DEV: layer {c['config']['layer']}, feature {c['config']['feature']}, scorer "
                  f"{c['config']['scorer']} (param {c['config']['param']}), tau {c['tau']:.3f}", ""]
        lines += family_table(c["test"], f"TEST {TEST_FAMILY}, DEV threshold")
        lines += family_table(c["test_midpoint"], f"TEST {TEST_FAMILY}, midpoint threshold (tau = 0)")
        lines += family_table(c["dev"], f"DEV {DEV_FAMILY} (settings chosen here: in-sample)")
        o = a["chosen"]["test_oracle"]
        lines += family_table(o["test"], f"TEST ORACLE (not a result: config and threshold chosen on {TEST_FAMILY} "
                              f"itself, at pooled recall 0.95): layer {o['config']['layer']} {o['config']['feature']} "
                              f"{o['config']['scorer']} ({o['config']['param']}), tau {o['tau']:.3f}")
        lines += ["Best per scorer on DEV, on TEST at the DEV threshold:", ""]
        for s, g in a["chosen"].items():
            if s not in ("overall", "test_oracle"):
                lines.append(f"- {s}: layer {g['config']['layer']} {g['config']['feature']} param "
                             f"{g['config']['param']}: DEV pooled FP {_fmt(g['dev']['pooled_fp'])}; TEST min recall "
                             f"{_fmt(g['test']['min_recall'])}, pooled FP {_fmt(g['test']['pooled_fp'])}, worst FP "
                             f"{_fmt(g['test']['worst_fp'])}")
        lines.append("")
    if results.get("prefix_match"):
        lines += ["## Today's prefix-match rule (emulated, no training)", ""]
        for fam, ev in results["prefix_match"].items():
            lines += family_table(ev, f"prefix_match, {fam}")
    atomic_write(os.path.join(out_dir, "table.md"), "\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "router_detector"))
    ap.add_argument("--no-prefix", action="store_true", help="skip the prefix-match baseline")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = {}

    def need_model():
        if not loaded:
            from alter_kernels.model.load import load_model
            loaded["m"] = load_model(MODEL, progress=False).eval()
        return loaded["m"]

    fams = {f: load_family(f) for f in (DEV_FAMILY, TEST_FAMILY)}
    tok = load_tokenizer(MODEL, progress=False)
    rows = {}
    for fam in fams.values():
        for aug in ("none", "case+swap"):
            s = split_sets(fam, AUGMENTS[aug][0])
            for r in s["pos"] + s["neg"] + [x for g in s["groups"].values() for x in g]:
                rows[r["id"]] = r
    feats, timing = extract(list(rows.values()), tok, need_model)
    secs = list(timing["seconds"].values())
    results = {"machine": "2-core shared CPU (AMD EPYC VM, torch CPU), load ~2-3 from other runs",
               "threads": args.threads, "layers": LAYERS, "features": FEATURES, "dev": DEV_FAMILY, "test": TEST_FAMILY,
               "general_split": "general rows at even positions fit the detector, odd positions evaluate it",
               "threshold_rule": ("the largest tau that keeps DEV held-out recall (all held-out wordings pooled) "
                                  ">= 0.95, applied unchanged to the TEST refit; scores are scale-free "
                                  "(see bench/router_scorers.py)"),
               "timing": {"prompts": len(secs), "ms_per_prompt": 1000 * sum(secs) / len(secs),
                          "mean_tokens": sum(timing["ids"].values()) / len(secs)},
               "study": study(feats, fams)}
    if not args.no_prefix:
        results["prefix_match"] = prefix_baseline(fams, tok, need_model)
    write_report(args.out, results)
    print(open(os.path.join(args.out, "table.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
