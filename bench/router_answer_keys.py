"""A router by the answer the base model is about to give (issue 23): route position t to the
forget expert when the base model's next-token distribution there puts mass on a forget answer.

    python bench/router_answer_keys.py [--threads 1] [--out bench/results/router_answer_keys]

score(t) = max over the forget set's key tokens k of p_base(k | tokens up to t). Key tokens: the
first token of every alias of every forget row, with a leading space (mid-sentence) and without
(start of a turn) ("plain"); "space" keeps only the leading-space forms; "case" adds the lower-case,
upper-case and capitalised spellings to "plain".
Rows, families, DEV/TEST split and report format are the detector study's (bench/router_detector.py):
every row of the cached base pass is teacher-forced with the base model's own stored greedy answer
(bench/results/realknow/small/cells/<family>/base_x1_s0.json, base.answers), and every position from
the last prompt token on is scored. Position j (0 = the last prompt token, j = i + 1 = answer token
i) is the forward that emits answer token j; ALTER's base pass runs on a token before the patched
pass does (alter_kernels/model/inference.py), so routing position j by its own score acts on the
emission of answer token j. A row is routed when some position scores >= tau. tau: the largest value
keeping DEV held-out recall (every held-out wording pooled, base-known rows) >= 0.95, applied
unchanged to TEST. The gated variant counts a position only when the base distribution there is
low-entropy by ALTER's own gate (Tsallis q = AlterConfig.q_route, <= THRESHOLD).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from alter_kernels.common.constants import THRESHOLD  # noqa: E402
from alter_kernels.common.fsio import atomic_write, ensure_dir, write_json  # noqa: E402
from alter_kernels.config import AlterConfig  # noqa: E402
from alter_kernels.model.load import load_tokenizer  # noqa: E402
from alter_kernels.realknow.data import FORGET_WORDINGS, NEIGHBOUR_KINDS  # noqa: E402
from alter_kernels.realknow.score import prompt_ids  # noqa: E402
from router_detector import DEV_FAMILY, MODEL, NEG_FAMILIES, TEST_FAMILY, _fmt, family_table, load_family, \
    split_sets  # noqa: E402
from router_scorers import TARGET_RECALL, dev_threshold, evaluate  # noqa: E402

KEY_SETS = ("space", "plain", "case")
GATES = ("none", "tsallis")
SCORES = ("prob", "ratio")      # p(key), or p(key) / max_v p(v) (1 when a key is the base argmax)
CACHE = os.path.join(ROOT, "bench", "out", "router_answer_keys", "positions.pt")
# general questions whose answer is a forget answer of the test family (or the dev family)
PROBES = {"capitals": ["Which city is the Eiffel Tower in?", "In which city is the Brandenburg Gate?",
                       "Where is the Colosseum?", "Which city hosted the 2020 Summer Olympics?"],
          "books": ["Who wrote Hamlet?", "Who wrote Animal Farm?", "Who wrote Emma?"]}


# ------------------------------------------------------------------------------------- key tokens
def spellings(alias: str, key_set: str) -> list[str]:
    if key_set not in KEY_SETS:
        raise ValueError(f"unknown key set {key_set!r}; choose from {KEY_SETS}")
    forms = [alias]
    if key_set == "case":
        forms += [alias.lower(), alias.upper(), alias[:1].upper() + alias[1:]]
    return [p + f for f in dict.fromkeys(forms) for p in ((" ",) if key_set == "space" else ("", " "))]


def key_tokens(tok, forget_rows: list[dict], key_set: str) -> dict:
    """{fact: sorted first-token ids of every spelling of every alias of that forget row}."""
    out = {}
    for r in forget_rows:
        ids = {tok.encode(s, add_special_tokens=False)[0] for a in r["aliases"] for s in spellings(a, key_set)}
        out[r["fact"]] = sorted(ids)
    return out


def alias_start(tok, answer: str, aliases: list[str]) -> int | None:
    """Index of the answer token where the earliest alias occurrence (case-insensitive, at word
    edges) starts, or None when the answer states no alias."""
    hits = [m.start() for a in aliases if a.strip()
            for m in [re.search(r"(?<![A-Za-z0-9])" + re.escape(a.lower()), answer.lower())] if m]
    if not hits:
        return None
    pos = min(hits)
    spans = tok(answer, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return next(i for i, (_s, e) in enumerate(spans) if e > pos)


# ------------------------------------------------------------------------------ teacher forcing
def _key(ids: list[int]) -> str:
    return hashlib.sha1((MODEL + repr(ids)).encode()).hexdigest()


@torch.no_grad()
def position_records(rows: list[dict], answers: dict, tok, keys: list[int], need_model) -> dict:
    """{row id: {"probs": [P, K] base probabilities of ``keys`` at positions 0..n (0 = last prompt
    token), "tsallis": [P], "greedy": fraction of answer tokens that are the base argmax,
    "alias_at": answer token where the alias starts or None, "seen": key columns whose token occurs
    in the prompt, "seconds"}}, cached by token ids."""
    from alter_kernels.ops import tsallis_entropy
    q = AlterConfig().q_route
    cache = torch.load(CACHE, weights_only=True) if os.path.isfile(CACHE) else {}
    kt = torch.tensor(keys)
    out, dirty = {}, False
    for r in rows:
        p_ids = prompt_ids(tok, r)
        text = answers[r["id"]]["answer"]
        a_ids = tok.encode(text, add_special_tokens=False)
        ids = p_ids + a_ids
        k = _key(ids)
        if k not in cache or not torch.equal(cache[k]["keys"], kt) or "pmax" not in cache[k]:
            t0 = time.perf_counter()
            logits = need_model()(torch.tensor([ids]), use_cache=False).logits[0, len(p_ids) - 1:].float()
            probs = logits.softmax(-1)
            greedy = (logits[:-1].argmax(-1) == torch.tensor(a_ids)).double().mean() if a_ids else torch.tensor(1.0)
            cache[k] = {"keys": kt, "probs": probs[:, kt].clone(), "tsallis": tsallis_entropy(logits, q).clone(),
                        "pmax": probs.max(-1).values.clone(),
                        "greedy": float(greedy), "seconds": time.perf_counter() - t0, "n": len(ids)}
            dirty = True
        seen = set(p_ids)
        out[r["id"]] = dict(cache[k], alias_at=alias_start(tok, text, r["aliases"]),
                            seen=[c for c, t in enumerate(keys) if t in seen])
    if dirty:
        ensure_dir(os.path.dirname(CACHE))
        atomic_write(CACHE, writer=lambda f: torch.save(cache, f))
    return out


# ------------------------------------------------------------------------------------- scoring
def position_scores(probs: torch.Tensor, cols: list[int], tsallis: torch.Tensor | None = None,
                    theta: float = THRESHOLD, pmax: torch.Tensor | None = None) -> torch.Tensor:
    """[P] max over the key columns ``cols`` of ``probs`` [P, K], divided by ``pmax`` [P] (the
    largest probability at each position) when given; with ``tsallis`` [P], positions above the
    entropy gate ``theta`` score 0."""
    if not cols:
        return torch.zeros(probs.shape[0], dtype=probs.dtype)
    s = probs[:, cols].max(-1).values
    if pmax is not None:
        s = s / pmax
    if tsallis is not None:
        s = torch.where(tsallis <= theta, s, torch.zeros_like(s))
    return s


def first_fire(scores: torch.Tensor, tau: float) -> int | None:
    """The first position scoring >= tau, or None."""
    hit = (scores >= tau).nonzero()
    return int(hit[0, 0]) if len(hit) else None


def choose_tau(held_known: list[float], target: float = TARGET_RECALL) -> float:
    """The largest tau with pooled recall >= target over the row scores of the held-out base-known rows."""
    return dev_threshold(held_known, target)


def row_scores(recs: dict, groups: dict, cols: list[int], gate: str, unseen: bool = False, score: str = "prob") -> dict:
    """{group: [per-position score tensors]} for every row of every group; ``unseen`` drops, per
    row, the keys whose token already occurs in its prompt (restating the question's own entity)."""
    def one(rec):
        c = [x for x in cols if x not in rec["seen"]] if unseen else cols
        return position_scores(rec["probs"], c, rec["tsallis"] if gate == "tsallis" else None,
                               pmax=rec["pmax"] if score == "ratio" else None)
    return {g: [one(recs[r["id"]]) for r in rows] for g, rows in groups.items()}


def fire_offsets(pos_scores: dict, groups: dict, recs: dict, base_correct: dict, tau: float) -> dict:
    """Where the first firing lands relative to the alias's first token (position j emits answer
    token j; offset = j - alias token) on base-known positive rows whose answer states the alias."""
    offs, never, no_alias = [], 0, 0
    for g in ("forget",) + FORGET_WORDINGS:
        for r, s in zip(groups.get(g, []), pos_scores.get(g, [])):
            if not base_correct.get(r["id"]):
                continue
            a = recs[r["id"]]["alias_at"]
            if a is None:
                no_alias += 1
                continue
            j = first_fire(s, tau)
            if j is None:
                never += 1
            else:
                offs.append(j - a)
    return {"before": sum(o < 0 for o in offs), "at": sum(o == 0 for o in offs), "after": sum(o > 0 for o in offs),
            "never": never, "no_alias_in_answer": no_alias, "median_offset": statistics.median(offs) if offs else None,
            "offsets": offs}


def fp_examples(pos_scores: dict, groups: dict, tau: float, answers: dict, limit: int = 3) -> list:
    """Routed rows of the must-not families: question, answer, the first firing position and its score."""
    ex = []
    for g in ("retain_train",) + NEG_FAMILIES:
        for r, s in zip(groups.get(g, []), pos_scores.get(g, [])):
            j = first_fire(s, tau)
            if j is not None and sum(e["group"] == g for e in ex) < limit:
                ex.append({"group": g, "kind": r["kind"], "question": r.get("question"), "answer": answers[r["id"]]["answer"],
                           "position": j, "score": float(s[j])})
    return ex


def misses(pos_scores: dict, groups: dict, recs: dict, fam: dict, tau: float) -> list:
    """Base-known positive rows that never fire or fire only after the alias token."""
    out = []
    for g in ("forget",) + FORGET_WORDINGS:
        for r, s in zip(groups.get(g, []), pos_scores.get(g, [])):
            j, a = first_fire(s, tau), recs[r["id"]]["alias_at"]
            if fam["base_correct"].get(r["id"]) and (j is None or (a is not None and j > a)):
                out.append({"group": g, "question": r.get("question") or str(r.get("messages")),
                            "answer": fam["answers"][r["id"]]["answer"], "max_score": float(s.max()),
                            "first_fire": j, "alias_at": a})
    return out


def evaluate_family(fam: dict, recs: dict, cols: list[int], gate: str, tau=None, unseen: bool = False,
                    score: str = "prob") -> dict:
    sets = split_sets(fam)
    groups = dict(sets["groups"], general_all=fam["rows"]["general"])
    ps = row_scores(recs, groups, cols, gate, unseen, score)
    maxes = {g: [float(s.max()) for s in v] for g, v in ps.items()}
    bc = fam["base_correct"]
    held = [m for g in FORGET_WORDINGS if g in maxes for m, r in zip(maxes[g], groups[g]) if bc.get(r["id"])]
    tau = choose_tau(held) if tau is None else tau
    ev = evaluate(maxes, groups, bc, FORGET_WORDINGS, NEG_FAMILIES, tau)
    ev.update(first_fire=fire_offsets(ps, groups, recs, bc, tau), fp_examples=fp_examples(ps, groups, tau, fam["answers"]),
              misses=misses(ps, groups, recs, fam, tau))
    return ev


# ----------------------------------------------------------------------------------------- study
def load(family: str) -> dict:
    import json
    fam = load_family(family)
    with open(os.path.join(ROOT, "bench", "results", "realknow", "small", "cells", family, "base_x1_s0.json")) as f:
        fam["answers"] = json.load(f)["base"]["answers"]
    return fam


def all_rows(fam: dict) -> list[dict]:
    r = fam["rows"]
    return [x for k in ("forget", "probes", "retain_train", "neighbour", "mention", "homonym", "general") for x in r[k]]


def study(fams: dict, recs: dict, keysets: dict, keys: list[int]) -> dict:
    """Per key set and gate: tau on DEV, the DEV and TEST evaluations at that tau."""
    out = {}
    for ks in KEY_SETS:
        cols = {f: [keys.index(t) for t in sorted({t for v in keysets[f][ks].values() for t in v})] for f in fams}
        for score in SCORES:
            for gate in GATES:
                for unseen in (False, True):
                    dev = evaluate_family(fams[DEV_FAMILY], recs, cols[DEV_FAMILY], gate, None, unseen, score)
                    test = evaluate_family(fams[TEST_FAMILY], recs, cols[TEST_FAMILY], gate, dev["tau"], unseen, score)
                    out[f"{ks}/{score}/{gate}/{'unseen' if unseen else 'all'}"] = {
                        "keys": ks, "score": score, "gate": gate, "unseen": unseen, "tau": dev["tau"], "dev": dev,
                        "test": test}
    return out


def choose(study_out: dict) -> str:
    """The DEV choice, as the detector study ranks: lowest pooled false-positive rate, then worst
    family, then the highest minimum per-family recall (all rows), then the name."""
    d = {k: v["dev"] for k, v in study_out.items()}
    return min(d, key=lambda k: (d[k]["pooled_fp"], d[k]["worst_fp"], -d[k]["min_recall"], k))


def probe_answers(fams: dict, tok, need_model, keysets, keys) -> list[dict]:
    """General questions whose answer is a forget answer: greedy answer, row max score per key set."""
    from alter_kernels.realknow.score import answer_rows
    out = []
    for f, qs in PROBES.items():
        rows = [{"id": f"probe/{f}/{i}", "question": q, "aliases": ["-"], "kind": "probe"} for i, q in enumerate(qs)]
        ans = {a["id"]: a for a in answer_rows(need_model(), tok, rows)}
        recs = position_records(rows, ans, tok, keys, need_model)
        cols = [keys.index(t) for t in sorted({t for v in keysets[f]["space"].values() for t in v})]
        for r in rows:
            rec = recs[r["id"]]
            c = [x for x in cols if x not in rec["seen"]]
            s, ratio = position_scores(rec["probs"], c), position_scores(rec["probs"], c, pmax=rec["pmax"])
            out.append({"family": f, "question": r["question"], "answer": ans[r["id"]]["answer"],
                        "max_prob": float(s.max()), "max_ratio": float(ratio.max()), "argmax_position": int(s.argmax())})
    return out


def cost(keysets: dict, vocab: int, hidden: int) -> dict:
    out = {}
    for f, d in keysets.items():
        for ks, per_fact in d.items():
            n = [len(v) for v in per_fact.values()]
            k = len({t for v in per_fact.values() for t in v})
            out[f"{f}/{ks}"] = {"facts": len(n), "keys_per_fact_mean": sum(n) / len(n), "keys_per_fact_max": max(n),
                                "K": k, "macs_per_position": k * hidden, "share_of_lm_head": k / vocab}
    return out


# ---------------------------------------------------------------------------------------- report
def fire_line(ff: dict) -> str:
    return (f"first firing vs the alias's first token (base-known positive rows whose answer states it): "
            f"before {ff['before']}, at {ff['at']}, after {ff['after']}, never {ff['never']} "
            f"(median offset {ff['median_offset']}; {ff['no_alias_in_answer']} rows state no alias)")


def write_report(out_dir: str, res: dict) -> None:
    ensure_dir(out_dir)
    write_json(os.path.join(out_dir, "results.json"), res)
    t = res["timing"]
    lines = ["# Router by the answer the base model is about to give (issue 23)", "",
             f"Machine: {res['machine']}. Model {MODEL} fp32, {res['threads']} torch thread. {t['rows']} rows "
             f"teacher-forced with the base model's stored greedy answer, mean {t['mean_tokens']:.0f} tokens, "
             f"{t['ms_per_row']:.0f} ms per row; answer tokens equal to the base argmax: {t['greedy_match']:.3f}. "
             f"tau: {res['threshold_rule']}. Gate 'tsallis': {res['gate_rule']}.", "",
             f"Variant chosen on DEV (lowest pooled FP, then worst-family FP, then min recall): **{res['chosen']}**.", "",
             "| keys / score / gate / prompt keys | tau (DEV) | DEV pooled FP | DEV worst FP | TEST min recall, base-known "
             "(n >= 5) | TEST pooled FP | TEST worst FP |", "|---|---|---|---|---|---|---|"]
    for name, c in res["study"].items():
        rk = [v["known"] for k, v in c["test"]["recall"].items() if k != "forget" and v["n_known"] >= 5]
        lines.append(f"| {name} | {c['tau']:.4f} | {_fmt(c['dev']['pooled_fp'])} | {_fmt(c['dev']['worst_fp'])} | "
                     f"{_fmt(min(rk))} | {_fmt(c['test']['pooled_fp'])} | {_fmt(c['test']['worst_fp'])} |")
    lines.append("")
    for name, c in res["study"].items():
        if c["keys"] != "space" and name != res["chosen"]:
            continue           # the plain / case variants: summary row above, full tables in results.json
        lines += [f"## {name}: keys {c['keys']}, score {c['score']}, gate {c['gate']}, keys in the prompt "
                  f"{'dropped' if c['unseen'] else 'kept'}: tau {c['tau']:.4f}", ""]
        for side, fam in (("test", TEST_FAMILY), ("dev", DEV_FAMILY)):
            ev = c[side]
            lines += family_table(ev, f"{side.upper()} {fam}" + (" (tau chosen here)" if side == "dev" else ", DEV tau"))
            g = ev["fp"]["general_all"]
            lines += [f"general, all 16 rows: {g['routed']}/{g['n']} routed. " + fire_line(ev["first_fire"]), ""]
            for e in ev["fp_examples"]:
                lines.append(f"- routed {e['group']} ({e['kind']}): \"{e['question']}\" -> \"{e['answer']}\" "
                             f"(position {e['position']}, score {e['score']:.3f})")
            for e in ev["misses"]:
                lines.append(f"- MISS {e['group']}: \"{e['question']}\" -> \"{e['answer']}\" (max {e['max_score']:.3f}, "
                             f"first fire {e['first_fire']}, alias at {e['alias_at']})")
            lines.append("")
    lines += ["## General questions whose answer is a forget answer (space keys, keys in the prompt dropped)", "",
              "| family | question | base answer | max p(key) | max p(key) / p(top) | at position |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {p['family']} | {p['question']} | {p['answer']} | {p['max_prob']:.3f} | {p['max_ratio']:.3f} | "
              f"{p['argmax_position']} |" for p in res["probes"]]
    lines += ["", "## Cost", "", "| family/keys | facts | keys per fact (mean, max) | K | MACs per position | "
              "share of the LM head |", "|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['facts']} | {v['keys_per_fact_mean']:.1f}, {v['keys_per_fact_max']} | {v['K']} | "
              f"{v['macs_per_position']} | {v['share_of_lm_head']:.5f} |" for k, v in res["cost"].items()]
    atomic_write(os.path.join(out_dir, "table.md"), "\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "router_answer_keys"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = {}

    def need_model():
        if not loaded:
            from alter_kernels.model.load import load_model
            loaded["m"] = load_model(MODEL, progress=False).eval()
        return loaded["m"]

    fams = {f: load(f) for f in (DEV_FAMILY, TEST_FAMILY)}
    tok = load_tokenizer(MODEL, progress=False)
    keysets = {f: {ks: key_tokens(tok, fam["rows"]["forget"], ks) for ks in KEY_SETS} for f, fam in fams.items()}
    keys = sorted({t for d in keysets.values() for v in d["case"].values() for t in v})
    recs = {}
    for fam in fams.values():
        recs.update(position_records(all_rows(fam), fam["answers"], tok, keys, need_model))
    n = [r["n"] for r in recs.values()]
    res = {"machine": "2-core shared CPU (AMD EPYC VM, torch CPU), load ~2-3 from other runs", "threads": args.threads,
           "dev": DEV_FAMILY, "test": TEST_FAMILY,
           "threshold_rule": (f"the largest tau keeping DEV held-out recall (all held-out wordings pooled, base-known "
                              f"rows) >= {TARGET_RECALL}, applied unchanged to TEST"),
           "gate_rule": f"a position counts only when the base Tsallis entropy (q={AlterConfig().q_route}) <= {THRESHOLD}",
           "timing": {"rows": len(recs), "mean_tokens": sum(n) / len(n),
                      "ms_per_row": 1000 * sum(r["seconds"] for r in recs.values()) / len(recs),
                      "greedy_match": sum(r["greedy"] for r in recs.values()) / len(recs)},
           "keysets": {f: {ks: {fact: [tok.decode([t]) for t in v] for fact, v in d.items()} for ks, d in kd.items()}
                       for f, kd in keysets.items()},
           "study": study(fams, recs, keysets, keys),
           "chosen": None,
           "probes": probe_answers(fams, tok, need_model, keysets, keys)}
    res["chosen"] = choose(res["study"])
    res["cost"] = cost(keysets, len(tok), need_model().config.hidden_size)
    write_report(args.out, res)
    print(open(os.path.join(args.out, "table.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
