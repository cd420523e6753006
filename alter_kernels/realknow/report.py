"""From cells to results: the DEV selection score, per-family results.json (mean ± std over
seeds) and the markdown table."""
from __future__ import annotations

import math
import statistics

from ..eval.fluency import fluency_ratio
from ..eval.metrics import harmonic_mean
from .data import FORGET_WORDINGS

TABLE_KINDS = ("forget",) + FORGET_WORDINGS + ("nb_entity", "nb_relation", "mention", "homonym", "general",
                                               "retain_train")
SELECTION = ("harmonic mean of (1 - forget accuracy over the trained and held-out wordings, held-out "
             "neighbour accuracy / base, general accuracy / base, (1 - open-prompt repetition) / (1 - base "
             "repetition) capped at 1, base passage NLL / passage NLL capped at 1); ties: smaller scale")


def _ratio(x, base):
    if x is None or not base:
        return None
    return x / base


def selection_score(m: dict, base: dict) -> float:
    """The DEV selection score of a cell's metrics ``m`` against the base model's ``base``."""
    f_rows = [v for k, v in m["acc"].items() if k in ("forget",) + FORGET_WORDINGS and v is not None]
    nums = [m["n"][k] for k in m["acc"] if k in ("forget",) + FORGET_WORDINGS and m["acc"][k] is not None]
    forget_acc = sum(a * n for a, n in zip(f_rows, nums)) / max(1, sum(nums))
    rep = (m["fluency_forget"]["repetition"] + m["fluency_retain"]["repetition"]) / 2
    rep_b = (base["fluency_forget"]["repetition"] + base["fluency_retain"]["repetition"]) / 2
    parts = [1.0 - forget_acc, _ratio(m["neighbour"], base["neighbour"]) or 0.0,
             _ratio(m["acc"].get("general"), base["acc"].get("general")) or 0.0,
             fluency_ratio(rep, rep_b), min(1.0, 1.0 / m["nll_ratio"])]
    return harmonic_mean([max(0.0, p) for p in parts])


def _mean_std(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def flat(m: dict) -> dict:
    """The numbers of one evaluation as a flat {name: value}."""
    out = {f"acc_{k}": m["acc"].get(k) for k in TABLE_KINDS}
    out.update({"forget_heldout": m["forget_heldout"], "neighbour": m["neighbour"],
                "rep_forget": m["fluency_forget"]["repetition"], "rep_retain": m["fluency_retain"]["repetition"],
                "distinct2_forget": m["fluency_forget"]["distinct_2"],
                "distinct2_retain": m["fluency_retain"]["distinct_2"],
                "degenerate_forget": m["fluency_forget"].get("degenerate_share"),
                "nll_ratio": m["nll_ratio"]})
    out.update({f"routed_{k}": v for k, v in (m.get("routed") or {}).items()})   # routed methods only
    return out


def aggregate(per_seed: list[dict]) -> dict:
    """{name: {"mean", "std", "values"}} over seeds of flat metrics (plus train_seconds)."""
    keys = per_seed[0].keys()
    out = {}
    for k in keys:
        mu, sd = _mean_std([d.get(k) for d in per_seed])
        out[k] = {"mean": mu, "std": sd, "values": [d.get(k) for d in per_seed]}
    return out


COLUMNS = (("forget", "acc_forget"), ("held-out", "forget_heldout"), ("template", "acc_template"),
           ("indirect", "acc_indirect"), ("lower", "acc_lower"), ("upper", "acc_upper"), ("typo", "acc_typo"),
           ("partial", "acc_partial"), ("space", "acc_whitespace"), ("unicode", "acc_unicode"),
           ("blank", "acc_fill_blank"), ("contin.", "acc_continuation"), ("embedded", "acc_embedded"),
           ("multiturn", "acc_multiturn"), ("nb entity", "acc_nb_entity"), ("nb relation", "acc_nb_relation"),
           ("mention", "acc_mention"), ("homonym", "acc_homonym"), ("general", "acc_general"),
           ("retain train", "acc_retain_train"), ("rep F", "rep_forget"), ("rep R", "rep_retain"), ("dist-2 F", "distinct2_forget"),
           ("NLL ratio", "nll_ratio"), ("train s", "train_seconds"))


def _fmt(d):
    if d is None or d.get("mean") is None:
        return "-"
    if d.get("std"):
        return f"{d['mean']:.2f}±{d['std']:.2f}"
    return f"{d['mean']:.2f}"


def markdown_table(rows: dict) -> str:
    """rows: {label: aggregate dict}. One line per method; accuracies are over base-known items."""
    head = "| method | " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|---" * (len(COLUMNS) + 1) + "|"
    lines = [head, sep]
    for label, agg in rows.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(agg.get(k)) for _, k in COLUMNS) + " |")
    return "\n".join(lines)


def routing_table(rows: dict) -> str | None:
    """Share of base-known rows routed to a forget expert, per kind (rows of routed methods only;
    None when no row has any). A forget wording should be near 1; every other kind near 0."""
    kinds = [k for k in TABLE_KINDS if any(f"routed_{k}" in agg for agg in rows.values())]
    routed = {label: agg for label, agg in rows.items() if any(f"routed_{k}" in agg for k in kinds)}
    if not routed:
        return None
    lines = ["| method | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for label, agg in routed.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(agg.get(f"routed_{k}")) for k in kinds) + " |")
    return "\n".join(lines)
