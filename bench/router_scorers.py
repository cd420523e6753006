"""Scorers and metrics of the router-by-meaning detector study (bench/router_detector.py).

Every scorer is fitted on positives P [n_p, d] and negatives N [n_n, d] (float64), after a
per-dimension z-score with the fitting rows' mean and std, and returns ``score(X) -> [n]``:
higher means "route to the forget expert"; a row routes when ``score >= tau``. Scores are
scale-free so that a threshold chosen on one family's fit can be applied to another's:

- ``cosine``: max cosine to a positive minus max cosine to a negative (in [-2, 2]; 0 = equally
  near both classes);
- ``mahalanobis``: two class means and one shared within-class covariance shrunk towards a
  scaled identity, (1 - a) S + a (tr S / d) I; the score is (d_N^2 - d_P^2) / (2 D^2), D the
  Mahalanobis distance between the means: the positive mean scores +0.5, the negative -0.5;
- ``logistic``: L2-regularised logistic regression (class-balanced loss, LBFGS), its logit
  divided by the logit gap between the class means (the same +-0.5 scale as mahalanobis).
"""
from __future__ import annotations

import math

import torch

SCORERS = ("cosine", "mahalanobis", "logistic")
GRID = {"cosine": (None,), "mahalanobis": (0.1, 0.3, 0.6, 0.9), "logistic": (1e-3, 1e-2, 1e-1, 1.0)}
TARGET_RECALL = 0.95        # the DEV threshold rule: the largest tau keeping pooled held-out recall >= this


def _standardiser(x: torch.Tensor):
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    return lambda z: (z - mu) / sd


def fit_cosine(p: torch.Tensor, n: torch.Tensor, _param=None):
    std = _standardiser(torch.cat([p, n]))
    unit = lambda z: torch.nn.functional.normalize(std(z), dim=-1)  # noqa: E731
    up, un = unit(p), unit(n)
    return lambda x: (unit(x) @ up.t()).max(1).values - (unit(x) @ un.t()).max(1).values


def fit_mahalanobis(p: torch.Tensor, n: torch.Tensor, shrink: float):
    if not 0.0 < shrink <= 1.0:
        raise ValueError(f"mahalanobis: shrinkage must be in (0, 1], got {shrink}")
    std = _standardiser(torch.cat([p, n]))
    zp, zn = std(p), std(n)
    mp, mn = zp.mean(0), zn.mean(0)
    r = torch.cat([zp - mp, zn - mn])
    s = r.t() @ r / max(r.shape[0] - 2, 1)
    d = s.shape[0]
    s = (1 - shrink) * s + shrink * (torch.trace(s) / d) * torch.eye(d, dtype=s.dtype)
    w = torch.linalg.solve(s, mp - mn)
    gap = float(w @ (mp - mn))
    mid = (mp + mn) / 2
    return lambda x: (std(x) - mid) @ w / gap


def fit_logistic(p: torch.Tensor, n: torch.Tensor, l2: float, iters: int = 200):
    std = _standardiser(torch.cat([p, n]))
    x = torch.cat([std(p), std(n)])
    y = torch.cat([torch.ones(len(p)), torch.zeros(len(n))]).double()
    wt = torch.where(y > 0, 0.5 / len(p), 0.5 / len(n))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (wt * torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")).sum()
        loss = loss + l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    gap = float(w @ (std(p).mean(0) - std(n).mean(0)))
    if gap <= 0:
        raise ValueError("logistic: the fitted direction does not separate the class means")
    return lambda z: (std(z) @ w + b) / gap


def fit_scorer(name: str, p: torch.Tensor, n: torch.Tensor, param):
    fits = {"cosine": fit_cosine, "mahalanobis": fit_mahalanobis, "logistic": fit_logistic}
    if name not in fits:
        raise ValueError(f"unknown scorer {name!r}; choose from {SCORERS}")
    if len(p) < 2 or len(n) < 2:
        raise ValueError(f"{name}: need at least 2 positives and 2 negatives, got {len(p)} and {len(n)}")
    return fits[name](p, n, param)


def dev_threshold(pos_scores, target: float = TARGET_RECALL) -> float:
    """The largest tau with mean(score >= tau) >= target over ``pos_scores``."""
    s = sorted(pos_scores, reverse=True)
    if not s:
        raise ValueError("dev_threshold: no held-out positive scores")
    return float(s[max(math.ceil(target * len(s)) - 1, 0)])


def evaluate(scores: dict, groups: dict, base_correct: dict, pos_kinds, neg_kinds, tau=None) -> dict:
    """Recall per positive group (all rows; rows the base model answers), routed rate per
    negative group. ``tau`` None: chosen by :func:`dev_threshold` on the pooled held-out
    positives (``pos_kinds`` present in ``scores``). Also the summary ``min_recall`` (over
    ``pos_kinds``) and ``worst_fp`` (over ``neg_kinds``)."""
    held = [s for k in pos_kinds if k in scores for s in scores[k]]
    if tau is None:
        tau = dev_threshold(held)
    recall, fp = {}, {}
    for k, vals in scores.items():
        hit = [v >= tau for v in vals]
        if k == "forget" or k in pos_kinds:
            known = [h for h, r in zip(hit, groups[k]) if base_correct.get(r["id"])]
            recall[k] = {"all": sum(hit) / len(hit), "n": len(hit),
                         "known": (sum(known) / len(known)) if known else None, "n_known": len(known)}
        else:
            fp[k] = {"rate": sum(hit) / len(hit) if hit else None, "routed": sum(hit), "n": len(hit)}
    rec = [recall[k]["all"] for k in pos_kinds if k in recall]
    fps = [fp[k]["rate"] for k in neg_kinds if k in fp and fp[k]["rate"] is not None]
    neg = [fp[k] for k in neg_kinds if k in fp and fp[k]["n"]]
    return {"tau": tau, "recall": recall, "fp": fp, "min_recall": min(rec), "worst_fp": max(fps),
            "pooled_fp": sum(d["routed"] for d in neg) / sum(d["n"] for d in neg),
            "pooled_recall": sum(v >= tau for v in held) / len(held)}


def choose_dev(grid: list[dict], key: str = "dev") -> dict:
    """The choice on ``key`` ("dev"): lowest pooled false-positive rate over the negative
    families at the threshold, then the lowest worst-family rate, then the highest minimum
    per-family recall, then the earlier grid entry. (Ranking by the worst family first tied
    28-52 of 126 configs on DEV's 6-row neighbour family, so the pooled rate comes first.)"""
    return min(enumerate(grid), key=lambda ig: (ig[1][key]["pooled_fp"], ig[1][key]["worst_fp"],
                                                -ig[1][key]["min_recall"], ig[0]))[1]


# ------------------------------------------------------------------------- today's prefix-match rule
@torch.no_grad()
def prefix_match_routes(model, tok, forget_rows, retain_rows, groups: dict) -> dict:
    """Whether today's prefix-match router sends the first answer token of each row to a forget
    expert: keys chosen as alter_kernels.unlearn.subdomains.fit_prefix_router does (prompt tokens
    of the forget rows absent from every retain row, else answer tokens), a token matching a key
    at embedding cosine >= AlterConfig.router_match anywhere in the prompt. An emulation at
    token level (no adapter is built); {group: [bool]}."""
    from alter_kernels.config import AlterConfig
    from alter_kernels.realknow.score import prompt_ids
    from alter_kernels.unlearn.data import tokenize_rows
    qa = lambda rs: [{"question": r["question"], "answer": r["answer"]} for r in rs]  # noqa: E731
    f_ex = tokenize_rows(qa(forget_rows), tok, "forget", "forget")
    r_ex = tokenize_rows(qa(retain_rows), tok, "retain", "retain")
    r_tok = {int(t) for ex in r_ex for t in ex.input_ids} | {int(tok.pad_token_id)}
    keys = set()
    for ex in f_ex:
        prompt = [int(t) for t, lab in zip(ex.input_ids, ex.labels) if lab == -100]
        answer = [int(t) for t, lab in zip(ex.input_ids, ex.labels) if lab != -100]
        keys |= set([t for t in prompt if t not in r_tok] or [t for t in answer if t not in r_tok])
    emb = model.get_input_embeddings().weight.detach().float()
    emb = torch.nn.functional.normalize(emb, dim=-1)
    k = emb[sorted(keys)]
    m = AlterConfig().router_match
    out = {}
    for g, rows in groups.items():
        out[g] = [bool(((emb[prompt_ids(tok, r)] @ k.t()) >= m).any()) for r in rows]
    return out
