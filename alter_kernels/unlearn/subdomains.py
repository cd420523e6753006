"""Forget sub-domains (spec 6): labels from the data, or k-means over base-model features, and
router initialisation at the normalised centroids.

- Labels in the data (``domain`` field, int or str) take priority. Distinct values are sorted
  and mapped to forget experts first_expert, first_expert + 1, ...
- Otherwise the forget examples are clustered with k-means (k-means++ seeding, Lloyd steps,
  plain torch, seeded) on the base model's mean-pooled last hidden state. N is given, or
  chosen as the k in 2..max_k with the best silhouette score (``"auto"``).
- Router init: in every decoder layer, column d of W_g is the normalised mean of that layer's
  *input* hidden states (mean-pooled per example) over cluster d; column 0 is the same for the
  retain examples. Each layer therefore gets centroids in its own feature space.
"""
from __future__ import annotations

import dataclasses
import re

import torch

from . import _model_api as _patch
from .data import Example, collate
from .util import device_of, progress_bar


def map_domain_labels(values: list, first_expert: int, name: str = "forget") -> tuple[list[int], dict]:
    """Raw domain values -> expert ids. All rows must have a label, or none."""
    have = [v is not None for v in values]
    if not any(have):
        return [], {}
    if not all(have):
        missing = have.index(False)
        raise ValueError(f"{name}: some rows have a 'domain' and some do not (row {missing} has none); "
                         "label every row or none (then sub-domains are found by k-means)")
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        raise ValueError(f"{name}: 'domain' mixes types {sorted(k.__name__ for k in kinds)}; use all int or all str")
    uniq = sorted(set(values))
    mapping = {v: first_expert + i for i, v in enumerate(uniq)}
    return [mapping[v] for v in values], mapping


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on rows of x [n, d] (float64 inside): returns (assignments [n], centroids [k, d])."""
    x = x.double()
    n = x.shape[0]
    if k < 1 or k > n:
        raise ValueError(f"kmeans: k must be in 1..{n} (number of points), got {k}")
    g = torch.Generator().manual_seed(seed)
    idx = [int(torch.randint(n, (1,), generator=g))]
    for _ in range(1, k):                               # k-means++ seeding
        d2 = torch.cdist(x, x[idx]).min(1).values ** 2
        if float(d2.sum()) <= 0:
            rest = [i for i in range(n) if i not in idx]
            idx.append(rest[0])
            continue
        idx.append(int(torch.multinomial(d2 / d2.sum(), 1, generator=g)))
    cent = x[idx].clone()
    assign = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(x, cent).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
        for j in range(k):
            m = assign == j
            if m.any():
                cent[j] = x[m].mean(0)
            else:                                        # empty cluster: take the farthest point
                far = torch.cdist(x, cent).min(1).values.argmax()
                cent[j] = x[far]
    return assign, cent


def silhouette(x: torch.Tensor, assign: torch.Tensor) -> float:
    x = x.double()
    d = torch.cdist(x, x)
    labels = assign.unique()
    if len(labels) < 2:
        return -1.0
    s = []
    for i in range(x.shape[0]):
        own = assign == assign[i]
        a = d[i, own].sum() / max(int(own.sum()) - 1, 1)
        b = min(float(d[i, assign == c].mean()) for c in labels if c != assign[i])
        s.append(0.0 if int(own.sum()) == 1 else (b - float(a)) / max(b, float(a), 1e-12))
    return float(sum(s) / len(s))


def choose_k(x: torch.Tensor, max_k: int = 8, seed: int = 0, desc: str | None = None) -> int:
    """The k in 2..max_k (and < the number of points) with the best silhouette (1 if none);
    desc: a progress line over the candidates."""
    best, best_s = 1, -2.0
    for k in progress_bar(range(2, min(max_k, x.shape[0] - 1) + 1), desc, "k"):
        s = silhouette(x, kmeans(x, k, seed)[0])
        if s > best_s:
            best, best_s = k, s
    return best


@torch.no_grad()
def pooled_features(model, examples: list[Example], pad_id: int, batch_size: int = 8, device=None,
                    desc: str | None = None) -> list[torch.Tensor]:
    """Mean-pooled hidden states of the base model (adapters off), one [n, d] tensor per entry of
    HF's ``hidden_states`` (entry i is the input of decoder layer i; the last is the final
    normed state). desc: a progress line over the batches."""
    device = device or device_of(model)
    ctx = _patch.disable_adapters(model) if _patch.is_patched(model) else _null()
    feats: list[list[torch.Tensor]] = []
    with ctx:
        for s in progress_bar(range(0, len(examples), batch_size), desc, "batch"):
            ids, att, _ = collate(examples[s:s + batch_size], pad_id)
            ids, att = ids.to(device), att.to(device)
            out = model(input_ids=ids, attention_mask=att, output_hidden_states=True, use_cache=False)
            m = att.unsqueeze(-1).float()
            for j, h in enumerate(out.hidden_states):
                if len(feats) <= j:
                    feats.append([])
                feats[j].append(((h.float() * m).sum(1) / m.sum(1).clamp(min=1)).cpu())
    return [torch.cat(f) for f in feats]


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _layer_index(path: str) -> int:
    nums = re.findall(r"\d+", path)
    if not nums:
        raise ValueError(f"cannot find the layer index in decoder-layer path {path!r}")
    return int(nums[-1])


@torch.no_grad()
def init_router(model, forget_feats: list[torch.Tensor], forget_assign: torch.Tensor,
                retain_feats: list[torch.Tensor] | None, experts: list[int], init_retain: bool = True) -> None:
    """Set W_g's columns (every layer) to the normalised centroids of that layer's inputs.

    forget_assign [n] holds expert ids (values in ``experts``); retain features give column 0.
    """
    state = _patch.get_state(model)
    for layer_path in state.routers:
        w = _patch.layer_routers(model)[layer_path].weight
        li = _layer_index(layer_path)
        f = forget_feats[li]
        cols = {}
        for e in experts:
            m = forget_assign == e
            if m.any():
                cols[e] = f[m].mean(0)
        if init_retain and retain_feats is not None:
            cols[0] = retain_feats[li].mean(0)
        for e, c in cols.items():
            w[:, e] = (c / c.norm().clamp(min=1e-12)).to(w.dtype)


# --------------------------------------------------------------------------- prefix-match router
ROUTER_BETA = 40.0      # W_g scale at init: a matched key gives its expert logit 40, the retain bias 20 (a gap
                        # of 20 / tau_high: forget experts get gate ~1e-11 on retain rows, ~1 on matched rows)


def _grow_key_rows(w_old: torch.Tensor, old: int, new_dom: list[int], init_weights: bool) -> torch.Tensor:
    """W_g [old + K_new + 1, E] of a keyed router: the old key rows, the new ones, the bias row last.
    init_weights: new key row i gets ROUTER_BETA at expert new_dom[i]; a fresh bias row ROUTER_BETA / 2
    at the retain expert."""
    w = torch.zeros(old + len(new_dom) + 1, w_old.shape[1], dtype=w_old.dtype, device=w_old.device)
    w[:old] = w_old[:old]
    w[-1] = w_old[-1]
    if init_weights:
        for i, d in enumerate(new_dom):
            w[old + i, d] = ROUTER_BETA
        if old == 0:
            w[-1, 0] = ROUTER_BETA / 2
    return w


def entity_tokens(ex: Example, exclude: set) -> list[int]:
    """A forget row's entity tokens: the tokens of its prompt not in ``exclude`` (the tokens of
    every retain row), or, for a row with none, those of its answer (the prefix router's keys)."""
    prompt = [int(t) for t, l in zip(ex.input_ids, ex.labels) if l == -100]
    answer = [int(t) for t, l in zip(ex.input_ids, ex.labels) if l != -100]
    return [t for t in prompt if t not in exclude] or [t for t in answer if t not in exclude]


@torch.no_grad()
def entity_swap(model, forget: list[Example], retain: list[Example], special_ids=()) -> dict[int, int]:
    """{forget entity token: a retain-only prompt token} (``forget_loss="generic"``): each entity
    token of the forget rows (:func:`entity_tokens`) is paired with the most similar (input
    embedding cosine) token that occurs in retain prompts and in no forget row, each used once (an
    entity token left without one stays), so the swapped row names an entity the model has not
    seen as a whole."""
    f_tok = set(int(t) for ex in forget for t in ex.input_ids)
    r_tok = set(int(t) for ex in retain for t in ex.input_ids) | set(int(t) for t in special_ids)
    ents = sorted({t for ex in forget for t in entity_tokens(ex, r_tok)})
    cands = sorted({int(t) for ex in retain for t, l in zip(ex.input_ids, ex.labels) if l == -100} - f_tok
                   - set(int(t) for t in special_ids))
    if not ents or not cands:
        return {}
    emb = model.get_input_embeddings().weight.detach().float()
    e = torch.nn.functional.normalize(emb[torch.tensor(ents)], dim=-1)
    c = torch.nn.functional.normalize(emb[torch.tensor(cands)], dim=-1)
    sim = e @ c.t()
    out, used = {}, set()
    for i in sim.max(1).values.argsort(descending=True).tolist():
        order = sim[i].argsort(descending=True).tolist()
        j = next((j for j in order if cands[j] not in used), None)
        if j is None:                                  # more entity tokens than candidates: left as they are
            continue
        out[ents[i]] = cands[j]
        used.add(cands[j])
    return out


@torch.no_grad()
def fit_prefix_router(model, forget: list[Example], forget_assign: list[int], retain: list[Example],
                      init_weights: bool = True, special_ids=()) -> dict:
    """Keys and W_g of the prefix-match router (config.router_input == "prefix_match").

    Keys: the tokens of the forget rows' prompts that occur in no retain row (for a forget row
    with none, the tokens of its answer that occur in no retain row), each assigned to the expert
    of the forget rows it occurs in most; a key is the unit-norm input of the first patched layer
    for that token (the embedding row). A model continuing an earlier request keeps its keys and
    W_g rows and appends the new ones. W_g (every layer): row k has ROUTER_BETA at its key's
    expert, the bias row ROUTER_BETA / 2 at the retain expert, so a token routes to a forget expert
    once one of its expert's keys occurred in its prefix. Returns a summary (keys, uncovered rows).
    """
    state = _patch.get_state(model)
    routers = [_patch.layer_routers(model)[p] for p in state.routers]
    emb = model.get_input_embeddings().weight
    r_tok = set(int(t) for ex in retain for t in ex.input_ids) | set(int(t) for t in special_ids)
    old = routers[0].keys.shape[0]
    old_ids = set()
    if old:
        kn = routers[0].keys.to(torch.float32)
        en = emb.detach().to(torch.float32)
        en = en / en.norm(dim=1, keepdim=True).clamp(min=1e-12)
        old_ids = set(int(i) for i in (en @ kn.t()).argmax(0).tolist())
    counts: dict[int, dict[int, int]] = {}
    uncovered = 0
    for ex, e in zip(forget, forget_assign):
        cand = entity_tokens(ex, r_tok)
        if not cand:
            uncovered += 1
        for t in set(cand):
            if t in old_ids:
                continue
            counts.setdefault(t, {})
            counts[t][e] = counts[t].get(e, 0) + 1
    new_ids = sorted(counts)
    new_dom = [max(counts[t].items(), key=lambda kv: (kv[1], -kv[0]))[0] for t in new_ids]
    k_new = len(new_ids)
    for r in routers:
        dev, dt = r.keys.device, r.keys.dtype
        if k_new:
            v = emb.detach()[torch.tensor(new_ids, device=emb.device)].to(torch.float32)
            v = (v / v.norm(dim=1, keepdim=True).clamp(min=1e-12)).to(device=dev, dtype=dt)
        else:
            v = torch.zeros(0, r.keys.shape[1], device=dev, dtype=dt)
        r.keys = torch.cat([r.keys, v])
        r.weight = torch.nn.Parameter(_grow_key_rows(r.weight.detach(), old, new_dom, init_weights),
                                      requires_grad=r.weight.requires_grad)
    state.config = dataclasses.replace(state.config, router_keys=old + k_new)
    return {"keys": old + k_new, "new_keys": k_new, "uncovered_forget_rows": uncovered}


# --------------------------------------------------------------------------- answer-key router
def answer_key_candidates(forget: list[Example], forget_top: list[torch.Tensor], exclude: set) -> list[list[int]]:
    """Each forget row's answer keys: the first tokens of its ``aliases`` (Example.alias_keys) when it
    has some; otherwise the answer tokens the base model states itself (its greedy next token at the
    position before, ``forget_top``) that are not in ``exclude``, not in the row's own prompt and in
    at most a quarter of the forget rows (a word of every answer is template, not fact)."""
    stated = []
    for ex, top in zip(forget, forget_top):
        prompt = set(int(t) for t, l in zip(ex.input_ids, ex.labels) if l == -100)
        stated.append({int(ex.input_ids[i]) for i in range(1, len(ex.input_ids))
                       if ex.labels[i] != -100 and int(top[i - 1]) == int(ex.input_ids[i])} - prompt - exclude)
    rows_with: dict[int, int] = {}
    for st in stated:
        for t in st:
            rows_with[t] = rows_with.get(t, 0) + 1
    common = {t for t, n in rows_with.items() if n > max(1, len(forget) // 4)}
    return [list(ex.alias_keys) if ex.alias_keys else sorted(st - common) for ex, st in zip(forget, stated)]


@torch.no_grad()
def fit_answer_gate(model, forget: list[Example], forget_top: list[torch.Tensor], special_ids=()) -> dict:
    """The answer keys of "prefix_answer_keys" (the prefix-match router's gate): every forget row's
    :func:`answer_key_candidates`, retain rows not excluded (the entity keys tell rows apart; a fact
    value may be shared with retain rows). A continuing run keeps the old keys and adds new ones."""
    state = _patch.get_state(model)
    routers = [_patch.layer_routers(model)[p] for p in state.routers]
    cands = answer_key_candidates(forget, forget_top, set(int(t) for t in special_ids))
    old = set(int(t) for t in routers[0].answer_keys.tolist())
    new_ids = sorted({t for c in cands for t in c} - old)
    for r in routers:
        r.answer_keys = torch.cat([r.answer_keys, torch.tensor(new_ids, dtype=r.answer_keys.dtype,
                                                               device=r.answer_keys.device)])
    state.config = dataclasses.replace(state.config, router_answer_keys=len(old) + len(new_ids))
    return {"answer_keys": len(old) + len(new_ids), "uncovered_forget_rows": sum(1 for c in cands if not c)}


@torch.no_grad()
def fit_answer_keys(model, forget: list[Example], forget_assign: list[int], forget_top: list[torch.Tensor],
                    retain: list[Example], init_weights: bool = True, special_ids=()) -> dict:
    """Keys and W_g of the answer-key router (config.router_input == "answer_keys").

    Keys: :func:`answer_key_candidates` of every forget row, tokens of retain rows excluded; each
    key goes to the expert of the forget rows it occurs in most. A model continuing
    an earlier request keeps its keys and W_g rows and appends the new ones. W_g (every layer): as
    the prefix-match router's (row k: ROUTER_BETA at its key's expert; the bias row ROUTER_BETA / 2
    at the retain expert). Returns a summary (keys, uncovered rows: forget rows with no key).
    """
    state = _patch.get_state(model)
    routers = [_patch.layer_routers(model)[p] for p in state.routers]
    r_tok = set(int(t) for ex in retain for t in ex.input_ids) | set(int(t) for t in special_ids)
    old_ids = set(int(t) for t in routers[0].keys.tolist())
    counts: dict[int, dict[int, int]] = {}
    cands = answer_key_candidates(forget, forget_top, r_tok)
    for e, cand in zip(forget_assign, cands):
        for t in set(cand) - old_ids:
            counts.setdefault(t, {})
            counts[t][e] = counts[t].get(e, 0) + 1
    uncovered = sum(1 for c in cands if not c)
    new_ids = sorted(counts)
    new_dom = [max(counts[t].items(), key=lambda kv: (kv[1], -kv[0]))[0] for t in new_ids]
    old = routers[0].keys.shape[0]
    for r in routers:
        r.keys = torch.cat([r.keys, torch.tensor(new_ids, dtype=r.keys.dtype, device=r.keys.device)])
        r.weight = torch.nn.Parameter(_grow_key_rows(r.weight.detach(), old, new_dom, init_weights),
                                      requires_grad=r.weight.requires_grad)
    state.config = dataclasses.replace(state.config, router_keys=old + len(new_ids))
    return {"keys": old + len(new_ids), "new_keys": len(new_ids), "uncovered_forget_rows": uncovered}
