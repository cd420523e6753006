"""Router probe: held-out routing accuracy of candidate router designs on the embedded benchmark.

    python bench/router_probe.py [--preset full|quick] [--seed 0] [--out bench/results/router_probe.json]

The router only learns from its own cross-entropy (spec 4) and, for the sequence candidates, reads
base-model features (the embeddings), so its accuracy can be measured without training adapters:
every candidate is fitted on the TRAINING rows (forget10 QA rows -> their domain's expert,
retain90 QA rows -> expert 0) and scored on held-out rows the fit never saw:

- ``para``: the paraphrased questions (+ answer) of the forget authors and of 40 retain rows, and
  the real-author / world-fact questions (expert 0);
- ``tmpl``: question wordings never seen in fitting ("Tell me about X.", "Who is X?") and name
  variants (surname only, first name only, a typo in the surname), with the name replaced the same
  way in the answer.

Accuracy is over the positions whose output predicts an answer token (what the routing affects in
scoring), reported per class: forget (sent to some forget expert), retain, real+world (sent to
expert 0), and at the first answer position alone (only the question is in the prefix).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alter_kernels.synthetic.inject import PRESETS, build_benchmark, with_overrides  # noqa: E402
from alter_kernels.eval import load_rows  # noqa: E402
from alter_kernels.unlearn.data import collate, tokenize_rows  # noqa: E402


def bench_for(preset, seed):
    base = PRESETS["quick" if preset == "quick" else "default"]
    return build_benchmark(base if seed == 0 else with_overrides(base, seed=seed), progress=False)


def typo(s: str) -> str:
    if len(s) < 4:
        return s + "e"
    i = len(s) // 2
    return s[:i] + s[i + 1] + s[i] + s[i + 2:]


def variants(rows):
    """Held-out wordings: name variants and unseen templates."""
    out = {"surname": [], "first": [], "typo": [], "tell_me": [], "who_is": []}
    for r in rows:
        n = r["author"]
        first, last = n.split(" ", 1)
        for k, rep in (("surname", last), ("first", first), ("typo", f"{first} {typo(last)}")):
            out[k].append({**r, "question": r["question"].replace(n, rep), "answer": r["answer"].replace(n, rep)})
        out["tell_me"].append({**r, "question": f"Tell me about {n}."})
        out["who_is"].append({**r, "question": f"Who is {n}?"})
    return out


@torch.no_grad()
def features(model, exs, pad_id, bs=32):
    """Per example: [T, d] per layer input (list over layers), prefix-mean of the RMS-normalised
    layer-0 input, answer-position mask [T] (output predicts an answer token)."""
    out = []
    for s in range(0, len(exs), bs):
        chunk = exs[s:s + bs]
        ids, att, lab = collate(chunk, pad_id)
        o = model(input_ids=ids, attention_mask=att, output_hidden_states=True, use_cache=False)
        hs = o.hidden_states[:-1]                             # inputs of the decoder layers
        h0 = hs[0].float()
        n0 = h0 * torch.rsqrt(h0.pow(2).mean(-1, keepdim=True) + 1e-6)
        m = att.float().unsqueeze(-1)
        pm = (n0 * m).cumsum(1) / m.cumsum(1).clamp(min=1)
        for j, e in enumerate(chunk):
            t = len(e.input_ids)
            lb = torch.tensor(e.labels)
            ans = torch.zeros(t, dtype=torch.bool)
            ans[:-1] = lb[1:] != -100
            out.append({"layers": [h[j, :t].float() for h in hs], "pmean": pm[j, :t], "ans": ans, "ids": ids[j, :t]})
    return out


def rms(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def fit_logreg(x, y, e, balanced=True, steps=400, lr=0.05, wd=1e-4, hidden=0, seed=0):
    torch.manual_seed(seed)
    d = x.shape[1]
    if hidden:
        net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, e))
    else:
        net = torch.nn.Linear(d, e)
    w = None
    if balanced:
        cnt = torch.bincount(y, minlength=e).float().clamp(min=1)
        w = cnt.sum() / (e * cnt)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=wd)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y, weight=w).backward()
        opt.step()
    return lambda z: net(z).detach()


def fit_lda(x, y, e, shrink=0.5, prior=None):
    mu = torch.stack([x[y == c].mean(0) for c in range(e)])
    xc = x - mu[y]
    cov = xc.T @ xc / max(len(x) - e, 1)
    d = x.shape[1]
    cov = (1 - shrink) * cov + shrink * torch.eye(d) * cov.diagonal().mean()
    inv = torch.linalg.inv(cov.double()).float()
    w = inv @ mu.T                                            # [d, e]
    b = -0.5 * (mu @ inv * mu).sum(1)
    if prior is not None:
        b = b + torch.log(torch.tensor(prior))
    return lambda z: z @ w + b


def centroid_router(x_pool, y_pool, e):
    """Today's init: columns = normalised mean-pooled class centroids, no bias."""
    cols = torch.stack([x_pool[y_pool == c].mean(0) for c in range(e)])
    cols = cols / cols.norm(dim=1, keepdim=True)
    return lambda z: z @ cols.T


def score(pred_fn, feats, labels, key, first_only=False, ents=None, theta=None):
    hit = {"forget": [0, 0], "retain": [0, 0], "domain": [0, 0]}
    for f, lab in zip(feats, labels):
        x = f[key] if isinstance(key, str) else key(f)
        pos = f["ans"].nonzero().flatten()
        if first_only:
            pos = pos[:1]
        if len(pos) == 0:
            continue
        p = pred_fn(x[pos]).argmax(-1)
        cls = "forget" if lab > 0 else "retain"
        hit[cls][0] += int(((p > 0) == (lab > 0)).sum())
        hit[cls][1] += len(pos)
        if lab > 0:
            hit["domain"][0] += int((p == lab).sum())
            hit["domain"][1] += len(pos)
    return {k: (v[0] / v[1] if v[1] else float("nan")) for k, v in hit.items()}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    b = bench_for(args.preset, args.seed)
    tok = b.tokenizer()
    pad = tok.pad_token_id
    model = b.load_model("finetuned").eval()
    forget = load_rows(b.path(b.config.forget_split))
    retain = load_rows(b.path(b.retain_split))
    real, world = load_rows(b.path("real_authors")), load_rows(b.path("world_facts"))
    doms = sorted({r["domain"] for r in forget})
    dmap = {d: i + 1 for i, d in enumerate(doms)}
    e = len(doms) + 1
    rng = random.Random(0)
    r_held = rng.sample(retain, 40)

    def prep(rows, name):
        return tokenize_rows([{"question": r["question"], "answer": r["answer"]} for r in rows], tok, name, name)

    t0 = time.perf_counter()
    tr_rows = forget + retain
    tr_y = [dmap[r["domain"]] for r in forget] + [0] * len(retain)
    tr_f = features(model, prep(tr_rows, "train"), pad)
    held = {}
    para_rows = ([{**r, "question": r["paraphrased_question"]} for r in forget]
                 + [{**r, "question": r["paraphrased_question"]} for r in r_held])
    held["para"] = (para_rows, [dmap[r["domain"]] for r in forget] + [0] * len(r_held))
    held["real_world"] = (real + world, [0] * (len(real) + len(world)))
    vf, vr = variants(forget), variants(r_held)
    for k in vf:
        held[k] = (vf[k] + vr[k], [dmap[r["domain"]] for r in forget] + [0] * len(r_held))
    held_f = {k: (features(model, prep(rows, k), pad), ys) for k, (rows, ys) in held.items()}
    print(f"features in {time.perf_counter() - t0:.0f}s", flush=True)

    # training matrices: answer positions ("content") or every real token ("all")
    def stack(key, where="ans"):
        xs, ys = [], []
        for f, y in zip(tr_f, tr_y):
            x = f[key] if isinstance(key, str) else key(f)
            m = f["ans"] if where == "ans" else torch.ones(len(f["ans"]), dtype=torch.bool)
            xs.append(x[m])
            ys.append(torch.full((int(m.sum()),), y))
        return torch.cat(xs), torch.cat(ys)

    nl = len(tr_f[0]["layers"])
    cands = {}
    pool = {li: torch.stack([f["layers"][li].mean(0) for f in tr_f]) for li in range(nl)}
    ypool = torch.tensor(tr_y)
    for li in range(nl):
        raw = (lambda f, li=li: f["layers"][li])
        nrm = (lambda f, li=li: rms(f["layers"][li]))
        cands[f"token L{li}: raw, centroid init (today's start)"] = (raw, centroid_router(pool[li], ypool, e))
        x, y = stack(raw, "all")
        cands[f"token L{li}: raw, no bias, CE all tokens"] = (raw, fit_logreg(x, y, e, balanced=False))
        x, y = stack(nrm, "ans")
        cands[f"token L{li}: rmsnorm + bias, balanced CE, content labels"] = (nrm, fit_logreg(x, y, e))
        cands[f"token L{li}: rmsnorm MLP(64), balanced CE, content labels"] = (nrm, fit_logreg(x, y, e, hidden=64))
    x, y = stack("pmean", "ans")
    cands["prefix-mean L0 rmsnorm: LDA (shrink 0.5), content labels"] = ("pmean", fit_lda(x, y, e))
    cands["prefix-mean L0 rmsnorm: + bias, balanced CE, content labels"] = ("pmean", fit_logreg(x, y, e))
    xa, ya = stack("pmean", "all")
    cands["prefix-mean L0 rmsnorm: + bias, balanced CE, all-token labels"] = ("pmean", fit_logreg(xa, ya, e))
    cands["prefix-mean L0 rmsnorm: LDA init then CE (what the engine does)"] = (
        "pmean", _lda_then_ce(x, y, e))
    n_f = len(forget)
    cands["prefix-mean L0 rmsnorm: LDA, training prior (0.9 retain)"] = (
        "pmean", fit_lda(x, y, e, prior=[len(retain) / len(tr_rows)] + [n_f / len(tr_rows) / (e - 1)] * (e - 1)))
    # prototype detector: keys = layer-0 inputs of the tokens of forget QUESTIONS that occur in no retain row
    q_ex = prep([{"question": r["question"], "answer": "x"} for r in forget], "fq")
    r_tok = set(t for f in tr_f[n_f:] for t in f["ids"].tolist())
    emb = model.get_input_embeddings().weight.detach().float()
    keys, kdom = [], []
    for ex, y in zip(q_ex, tr_y[:n_f]):
        for t in ex.input_ids[:-3]:
            if t not in r_tok and t not in keys:
                keys.append(t)
                kdom.append(y)
    kv = rms(emb[keys])
    kv = kv / kv.norm(dim=1, keepdim=True)
    allv = rms(emb) / rms(emb).norm(dim=1, keepdim=True)
    sim = allv @ kv.T
    sim[torch.tensor(keys), torch.arange(len(keys))] = -1
    print(f"prototype keys: {len(keys)}; max cos of another token to a key {float(sim.max()):.3f}; "
          f"99.9% quantile {float(sim.max(1).values.quantile(0.999)):.3f}", flush=True)
    kdom_t = torch.tensor(kdom)

    def proto_feat(f, kv=kv):
        h0 = rms(f["layers"][0])
        c = (h0 / h0.norm(dim=1, keepdim=True)) @ kv.T                    # [T, K]
        a = torch.stack([c[:, kdom_t == d].max(1).values if (kdom_t == d).any() else torch.full((len(c),), -1.0)
                         for d in range(1, e)], 1)
        return torch.cummax(a, 0).values                                    # running max over the prefix
    tau_m = 0.95

    def proto_rule(z, beta=50.0):
        return torch.cat([torch.full((len(z), 1), beta * tau_m), beta * z], 1)
    cands["prototype detector L0 (forget-question tokens absent from retain), running max"] = (proto_feat, proto_rule)
    res = {}
    for name, (key, fn) in cands.items():
        row = {}
        for hk, (hf, ys) in held_f.items():
            row[hk] = score(fn, hf, ys, key)
            row[hk + "@first"] = score(fn, hf, ys, key, first_only=True)
        res[name] = row
        p, rw = row["para"], row["real_world"]
        worst = min(row[k]["forget"] for k in ("surname", "first", "typo", "tell_me", "who_is"))
        worst_r = min(row[k]["retain"] for k in ("surname", "first", "typo", "tell_me", "who_is"))
        print(f"{name:<66} para F {p['forget']:.2f} R {p['retain']:.2f} RW {rw['retain']:.2f} dom {p['domain']:.2f}"
              f" | first F {row['para@first']['forget']:.2f} R {row['para@first']['retain']:.2f}"
              f" | tmpl worst F {worst:.2f} R {worst_r:.2f}", flush=True)
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"preset": args.preset, "seed": args.seed, "results": res}, f, indent=1)


def _lda_then_ce(x, y, e, steps=90, lr=3e-3):
    """LDA weights as the start, then the router CE with Adam (as ak.unlearn trains W_g)."""
    lda = fit_lda(x, y, e)
    w0 = lda(torch.eye(x.shape[1]))
    b0 = lda(torch.zeros(1, x.shape[1]))[0]
    w = torch.nn.Parameter(torch.cat([w0 - b0, b0[None]]))
    xb = torch.cat([x, torch.ones(len(x), 1)], 1)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(xb @ w, y).backward()
        opt.step()
    return lambda z: torch.cat([z, torch.ones(len(z), 1)], 1) @ w.detach()


if __name__ == "__main__":
    main()
