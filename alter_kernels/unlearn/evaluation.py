"""What a run measures: per-epoch metrics (means of the step logs, held-out forget / retain NLL,
held-out routing accuracy) and :func:`router_accuracy` for any labelled rows."""
from __future__ import annotations

import math
import random
import warnings

import torch

from . import _model_api as _m
from . import objectives as obj
from .batches import map_batches
from .data import Example, collate, pad_float, tokenize_rows
from .util import device_of


@torch.no_grad()
def eval_nll(model, spec, exs, cache, pad_id, bs, dev, limit, ctx=None) -> float:
    """Mean answer-token NLL of the first ``limit`` examples, routed as in training (ALTER: the
    cached entropies; AsymLoRA: every token low) without routing labels."""
    exs = exs[:limit]

    def one(idx):
        ids, att, lab = collate([exs[i] for i in idx], pad_id)
        ids, att, lab = ids.to(dev), att.to(dev), lab.to(dev)
        ent = None
        if spec.entropy:
            ent = pad_float([cache[0][i] for i in idx], ids.shape[1], math.inf).to(dev)
        elif spec.all_low:
            ent = torch.zeros(ids.shape, device=dev)
        if _m.is_patched(model):
            with _m.routing_inputs(model, entropy=ent, labels=None):
                logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
        else:
            logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
        sl, sy = obj.shift(logits, lab)
        cnt = int((sy != -100).sum())
        return [(float(obj.masked_nll(sl, sy)) * cnt, cnt)]

    # FSDP2: the forwards are collectives, every rank runs as many
    parts = map_batches(len(exs), bs, one, ctx, lockstep=ctx is not None and ctx.mode == "fsdp2")
    tot, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
    return tot / n if n else float("nan")


def _log_means(history: list, epoch: int) -> dict | None:
    """The epoch's step count and the means (sums for tokens and seconds) of its step logs."""
    recs = [h for h in history if h["epoch"] == epoch]
    if not recs:
        return None
    keys = [k for k in recs[0] if k not in ("step", "epoch") and isinstance(recs[0][k], (int, float))]
    m = {"epoch": epoch, "steps": len(recs), "last_step": recs[-1]["step"]}
    for k in keys:
        vals = [r[k] for r in recs if k in r and not (isinstance(r[k], float) and math.isnan(r[k]))]
        if vals:
            m[k if k in ("tokens", "seconds") else f"mean_{k}"] = (sum(vals) if k in ("tokens", "seconds")
                                                                    else sum(vals) / len(vals))
    if m.get("seconds"):
        m["tokens_per_s"] = m["tokens"] / m["seconds"]
    return m


def forget_nll_now(run) -> float:
    """The held-out forget NLL of the model as it is now (eval mode for the measurement)."""
    model, d = run.model, run.data
    was = model.training
    model.eval()
    try:
        return eval_nll(model, run.spec, d.forget, d.forget_cache, d.pad_id, run.batch_size, run.dev,
                        run.opts.eval_max_examples, run.dist)
    finally:
        model.train(was)


def epoch_metrics(run, metrics: list, history: list, epoch: int, evaluate: bool = True) -> None:
    """Append epoch ``epoch``'s metrics; evaluate: also the held-out measures (the model is
    evaluated as it is now: use it at the end of the epoch only)."""
    m = _log_means(history, epoch)
    if m is None:
        return
    model, opts, d = run.model, run.opts, run.data
    if evaluate and opts.eval_each_epoch:
        was = model.training
        model.eval()
        lim, bs = opts.eval_max_examples, run.batch_size
        m["eval_forget_nll"] = forget_nll_now(run)
        if d.retain:
            m["eval_retain_nll"] = eval_nll(model, run.spec, d.retain, d.retain_cache, d.pad_id, bs, run.dev, lim,
                                            run.dist)
        if run.held is not None:
            ra = router_accuracy(model, run.held[0], run.held[1], d.pad_id, bs, run.dev, ctx=run.dist,
                                 all_low=run.spec.all_low)
            ra["heldout"] = run.held[2]
            m["router_accuracy"] = ra
            m["router_acc_forget"], m["router_acc_retain"] = ra["forget"], ra["retain"]
        model.train(was)
    metrics.append(m)


def warn_degenerate_routing(run, history: list) -> None:
    """ALTER: warn when every token theta splits was on one side of it: the answer tokens of the
    run's steps, or, with the key-token router, the forget entity's tokens (the only ones it sends
    to a forget expert, and those theta is chosen from: its answer tokens all on the low side say
    nothing about its routing)."""
    cfg = run.cfg
    if cfg.router_input == "key_tokens":
        from .caches import _scored, key_token_positions
        d = run.data
        vals = _scored(d.forget, d.forget_cache[0], key_token_positions(d.forget, d.retain, [d.pad_id]))
        share = [float((vals > cfg.threshold).double().mean())] if vals.numel() else []
        what = "entity (key) token"
    else:
        share = [h["high_entropy_share"] for h in history if not math.isnan(h.get("high_entropy_share", math.nan))]
        what = "answer token"
    if share and (max(share) == 0.0 or min(share) == 1.0):
        warnings.warn(f"unlearn[alter]: every {what} was {'high' if min(share) == 1.0 else 'low'}-entropy "
                      f"(threshold {cfg.threshold} with q_route {cfg.q_route}); ALTER degrades into "
                      f"{'plain multi-expert LoRA' if min(share) == 1.0 else 'AsymLoRA'}. Pick a threshold "
                      "inside the range of the base model's entropies for this q (spec 3).")


# The one home of "the run did not unlearn": the held-out forget NLL (mean answer-token NLL, routed
# as in training) rose by less than ln 2 nats, i.e. the forget answers' per-token probability
# exp(-NLL) did not even halve. A share of the start value would mean nothing for memorised
# answers (NLL near 0); measured on the demo's quick benchmark: the engine's default learning
# rates move it 0.0007 -> 0.0008 (ga, npo_retain), 0.014 (lora), 0.33 (alter; greedy answers
# unchanged), the demo's selected rates to 5-19 nats.
UNCHANGED_FORGET_NATS = math.log(2)
# What the warning suggests: all learning rates times this (the demo's tiny models needed x10-x100,
# alter_kernels/demo/selected_hparams.json)
SUGGESTED_LR_SCALE = 30


def forget_unchanged(start: float, end: float) -> bool:
    """True when the forget NLL moved from ``start`` to ``end`` too little to count as unlearning."""
    return end - start < UNCHANGED_FORGET_NATS


def warn_unchanged_forget(run, start: float | None, metrics: list) -> bool | None:
    """Warn when the run ends with the forget set's NLL essentially where it started (see
    ``forget_unchanged``), naming the learning rates to scale. Returns whether it warned (None:
    not measured: no eval_each_epoch, or a resumed run)."""
    end = metrics[-1].get("eval_forget_nll") if metrics else None
    if start is None or end is None or not (math.isfinite(start) and math.isfinite(end)):
        return None
    if not forget_unchanged(start, end):
        return False
    names = (("lr",) if not run.spec.adapter else ("lr_B",) if not run.spec.routed else ("lr_A", "lr_B", "lr_router"))
    k = SUGGESTED_LR_SCALE
    now = ", ".join(f"{n}={getattr(run.opts, n):g}" for n in names)
    flags = " ".join(f"--{n.replace('_', '-')} {getattr(run.opts, n) * k:g}" for n in names)
    warnings.warn(f"unlearn[{run.method}]: the forget set is essentially not unlearned: its held-out NLL went "
                  f"{start:.3g} -> {end:.3g} nats per answer token (probability {math.exp(-start):.3f} -> "
                  f"{math.exp(-end):.3f}; unlearning should at least halve it, a rise of "
                  f"{UNCHANGED_FORGET_NATS:.2f} nats). The learning rates ({now}) are the paper's for 7B models; "
                  f"smaller models need larger ones: scale them together, e.g. x{k} (alter-unlearn {flags}), "
                  "or train more epochs.", stacklevel=2)
    return True


# ----------------------------------------------------------------------------------- routing accuracy
def heldout_routing_set(f_rows, f_dom, r_rows, tokenizer, dkw, limit: int, seed: int):
    """(examples, expert ids, held_out): the forget rows and up to ``limit // 4`` retain rows (a
    seeded sample), asked with their ``paraphrased_question`` where the rows have one (held out
    from training); rows without one are asked as in training (held_out False)."""
    rng = random.Random(f"router-eval-{seed}")
    r_rows = r_rows or []
    r_pick = list(range(len(r_rows)))
    rng.shuffle(r_pick)
    r_pick = sorted(r_pick[:max(limit // 4, 1)])
    rows, ys = [], []
    para = True
    for r, d in list(zip(f_rows, f_dom))[:limit] + [(r_rows[i], 0) for i in r_pick]:
        if not isinstance(r, dict) or "question" not in r:
            continue
        q = r.get("paraphrased_question")
        if not isinstance(q, str) or not q.strip():
            para = False
            q = r["question"]
        rows.append({"question": q, "answer": r["answer"]})
        ys.append(int(d))
    if not rows or not any(y > 0 for y in ys):
        return None
    exs = tokenize_rows(rows, tokenizer, "<held-out routing rows>", "router_eval", dkw["max_length"],
                        dkw["chat_template"], prompt_format=dkw["prompt_format"])
    return exs, ys, para


def _routing_counts(model, examples, experts, idx, pad_id, device, layers, all_low):
    """Per layer [forget right, forget total, retain right, retain total, forget own-expert right]."""
    ids, att, lab = collate([examples[i] for i in idx], pad_id)
    ids, att, lab = ids.to(device), att.to(device), lab.to(device)
    ent = (torch.zeros(ids.shape, device=device) if all_low else
           _m.token_entropy(model, ids, att).to(device))
    with _m.routing_inputs(model, entropy=ent, labels=None):
        model(input_ids=ids, attention_mask=att, use_cache=False)
    plans = _m.last_plans(model)
    content = lab != -100
    content[:, :-1] |= lab[:, 1:] != -100
    y = torch.tensor([experts[i] for i in idx], device=device)[:, None].expand_as(ids)
    rows = _m.get_state(model).config.router_input == "key_tokens"
    out = []
    for name in layers:
        pred = plans[name].router_logits.argmax(-1).view(ids.shape)
        if rows:        # key_tokens routes the entity's own tokens only: a row is right when any of its tokens
            # goes to a forget expert (forget rows, that expert the row's own for the last count) or none does
            pick = torch.where(att.bool(), pred, torch.zeros_like(pred))
            routed = pick.max(1).values                   # a forget expert some token goes to (0: none)
            yr = y[:, 0]
            out.append([int(((routed > 0) & (yr > 0)).sum()), int((yr > 0).sum()), int(((routed == 0) & (yr == 0)).sum()),
                        int((yr == 0).sum()), int(((routed == yr) & (yr > 0)).sum())])
            continue
        fm, rm = content & (y > 0), content & (y == 0)
        out.append([int(((pred > 0) & fm).sum()), int(fm.sum()), int(((pred == 0) & rm).sum()), int(rm.sum()),
                    int(((pred == y) & fm).sum())])
    return [out]


@torch.no_grad()
def router_accuracy(model, examples: list[Example], experts: list[int], pad_id: int, batch_size: int = 8,
                    device=None, ctx=None, all_low: bool = False) -> dict:
    """Routing accuracy of a patched model on labelled rows, as it routes at inference (base-model
    entropies, no labels), over the content positions (answer tokens and the token before each:
    the outputs that score and generate the answer). A forget row's position is right when the
    router's choice (argmax of its logits) is a forget expert, a retain row's when it is expert 0.
    With ``router_input="key_tokens"`` (forget experts on the entity's own tokens only) the unit
    is the row: a forget row is right when some token of it goes to a forget expert, a retain row
    when none does (counts in "tokens" are then rows).
    Returns {"forget", "retain", "overall" (the smaller of the two), "forget_domain" (the row's own
    expert), "per_layer": {layer: {"forget", "retain"}}, "tokens": {"forget", "retain"}}."""
    device = device or device_of(model)
    layers = list(_m.get_state(model).routers)
    parts = map_batches(len(examples), batch_size,
                        lambda idx: _routing_counts(model, examples, experts, idx, pad_id, device, layers, all_low),
                        ctx, lockstep=ctx is not None and ctx.mode == "fsdp2")
    tot = torch.tensor(parts, dtype=torch.float64).sum(0)            # [layers, 5]
    per = {n: {"forget": float(t[0] / t[1]) if t[1] else float("nan"),
               "retain": float(t[2] / t[3]) if t[3] else float("nan")} for n, t in zip(layers, tot)}
    s = tot.sum(0)
    f = float(s[0] / s[1]) if s[1] else float("nan")
    r = float(s[2] / s[3]) if s[3] else float("nan")
    return {"forget": f, "retain": r, "overall": min(f, r) if s[1] and s[3] else (f if s[1] else r),
            "forget_domain": float(s[4] / s[1]) if s[1] else float("nan"), "per_layer": per,
            "tokens": {"forget": int(tot[0, 1]), "retain": int(tot[0, 3])}}
