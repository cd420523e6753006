"""TOFU / WMDP / MUSE-style evaluation of any Hugging Face causal LM (ALTER_SPEC section 8).

Works on any ``AutoModelForCausalLM`` + tokenizer and TOFU-format rows (see
:func:`alter_kernels.eval.data.load_rows`), batched. The prompt format is a
:class:`~alter_kernels.eval.format.QAFormat` (by default the tokenizer's chat template when it has
one, else the plain template; ``QAFormat(chat="off")`` forces the plain one).

Definitions (docs/benchmark.md, "Evaluation"):

- answer probability P = exp(-mean token NLL of the answer (and its eos) given the question);
- truth ratio R = P_pert / P_para, P_para the paraphrased true answer, P_pert a mean over the
  false answers, all after the original question: ``truth_ratio="geometric"`` (default; TOFU's
  aggregation script and open-unlearning) P_pert = exp(-mean of their mean token NLLs),
  ``"arithmetic"`` (the TOFU paper's equation) P_pert = mean of exp(-mean token NLL);
- forget quality = KS-test p-value between R of the model and R of the retain model, forget set;
- model utility = harmonic mean of {retain, real authors, world facts} x {probability, ROUGE-L
  recall of the greedy answer (``rouge_score``, stemmed), mean(max(0, 1 - R))}; on real authors /
  world facts the probability is P_correct / (P_correct + sum P_false).

The model is called plainly (``model(...)``, ``model.generate(...)``): a patched ALTER model is
evaluated through its own default inference rule. ``progress=True`` shows tqdm bars.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F

from .data import load_rows
from .fluency import split_results
from .format import IGNORE_INDEX, QAFormat, pad_batch
from .metrics import (TRUTH_RATIO_MODES, distinct_n, forget_quality, harmonic_mean, repetition_rate, rouge_l,
                      truth_ratio_from_nll, truth_ratio_score)

DEFAULT_MAX_NEW_TOKENS = 200        # TOFU generates up to 200 new tokens for its ROUGE scores
# the largest max_new_tokens alter-eval accepts (TOFU's answers are < 200 tokens; a model without
# an eos token otherwise generates for as long as it is told); the model's positions bound it too
MAX_NEW_TOKENS_CAP = 4096


def model_positions(model) -> int | None:
    """How many positions the model (or its config) can attend over, when its config says."""
    cfg = getattr(model, "config", model)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _fit(pairs, positions: int | None, what: str):
    """Sequences cut to the model's positions, with one warning naming how many were cut."""
    if positions is None:
        return pairs
    long = sum(len(p[0]) > positions for p in pairs)
    if not long:
        return pairs
    warnings.warn(f"{long} of {len(pairs)} {what} are longer than the model's {positions} positions; truncated to "
                  "fit (their scores cover the first tokens only)", UserWarning, stacklevel=3)
    return [(ids[:positions], labels[:positions]) for ids, labels in pairs]


def _device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _bar(total: int, desc, enabled):
    """A tqdm bar over ``total`` batches when ``enabled`` (a description string) is truthy."""
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=enabled if isinstance(enabled, str) else desc, unit="batch",
                leave=False, dynamic_ncols=True)


def _pad_id(tokenizer):
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")


@torch.no_grad()
def sequence_nll(model, tokenizer, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 16,
                 reduction: str = "mean", progress=False) -> torch.Tensor:
    """Per-sequence NLL of the labelled tokens of (input_ids, labels) pairs: mean per token
    (reduction="mean") or summed ("sum"). fp32 accumulation. Returns a CPU float64 tensor [n].
    ``progress``: a description string (or True) shows a tqdm bar over the batches."""
    dev = _device(model)
    pairs = _fit(pairs, model_positions(model), "question + answer sequences")
    out = torch.empty(len(pairs), dtype=torch.float64)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))      # little padding
    pad = _pad_id(tokenizer)
    bar = _bar(-(-len(order) // batch_size), "NLL", progress)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        ids, mask = pad_batch([pairs[i][0] for i in idx], pad)
        labels, _ = pad_batch([pairs[i][1] for i in idx], pad, fill=IGNORE_INDEX)
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        lg, lb = logits[:, :-1].float(), labels[:, 1:].to(dev)
        nll = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), lb.reshape(-1), ignore_index=IGNORE_INDEX,
                              reduction="none").view(lb.shape)
        n = (lb != IGNORE_INDEX).sum(-1)
        s = nll.sum(-1)
        vals = s / n.clamp(min=1) if reduction == "mean" else s
        vals = torch.where(n > 0, vals, torch.full_like(vals, float("nan")))
        out[torch.tensor(idx)] = vals.double().cpu()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def answer_nll(model, tokenizer, questions: Sequence[str], answers: Sequence[str],
               fmt: QAFormat | None = None, batch_size: int = 16, reduction: str = "mean",
               eos: bool | None = None, progress=False) -> torch.Tensor:
    """Mean (or summed) token NLL of each answer given its question."""
    fmt = fmt or QAFormat()
    if len(questions) != len(answers):
        raise ValueError(f"answer_nll: {len(questions)} questions but {len(answers)} answers")
    pairs = [fmt.encode(tokenizer, q, a, eos=eos) for q, a in zip(questions, answers)]
    return sequence_nll(model, tokenizer, pairs, batch_size, reduction, progress)


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts_ids: Sequence[list[int]],
                    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 16, stop_at_eos: bool = True,
                    progress=False) -> list[list[int]]:
    """Greedy continuations of token-id prompts (left padding, batched, KV cache via HF generate).
    Returns the new token ids of each prompt, cut at the first eos."""
    dev = _device(model)
    pad = _pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    res: list[list[int]] = [[] for _ in prompts_ids]
    positions = model_positions(model)
    if positions is not None and sum(len(p) >= positions for p in prompts_ids):
        warnings.warn(f"{sum(len(p) >= positions for p in prompts_ids)} of {len(prompts_ids)} prompts leave no room "
                      f"for an answer in the model's {positions} positions; their first tokens are dropped",
                      UserWarning, stacklevel=2)
        prompts_ids = [list(p)[-(positions - 1):] if len(p) >= positions else p for p in prompts_ids]
    order = sorted(range(len(prompts_ids)), key=lambda i: len(prompts_ids[i]))
    bar = _bar(-(-len(order) // batch_size), "generate", progress)
    short = 0
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        ids, mask = pad_batch([list(prompts_ids[i]) for i in idx], pad, side="left")
        new_tokens = max_new_tokens if positions is None else max(1, min(max_new_tokens, positions - ids.shape[1]))
        short += len(idx) if new_tokens < max_new_tokens else 0
        gen = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
                             max_new_tokens=new_tokens, pad_token_id=pad,
                             eos_token_id=eos if stop_at_eos else None, num_beams=1,
                             temperature=None, top_p=None, top_k=None)
        new = gen[:, ids.shape[1]:].cpu().tolist()
        for i, seq in zip(idx, new):
            if stop_at_eos and eos is not None and eos in seq:
                seq = seq[:seq.index(eos)]
            while seq and seq[-1] == pad:
                seq = seq[:-1]
            res[i] = seq
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if short:
        warnings.warn(f"{short} of {len(res)} answers were generated with fewer than max_new_tokens={max_new_tokens} "
                      f"new tokens: prompt + answer must fit in the model's {positions} positions", UserWarning,
                      stacklevel=2)
    return res


def generate_answers(model, tokenizer, questions: Sequence[str], fmt: QAFormat | None = None,
                     max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 16, progress=False) -> list[str]:
    fmt = fmt or QAFormat()
    prompts = [fmt.prompt_ids(tokenizer, q) for q in questions]
    outs = greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size, progress=progress)
    return [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]


def _progress_name(progress, what: str):
    return f"{progress}: {what}" if isinstance(progress, str) else bool(progress) and what


def truth_ratios(model, tokenizer, rows: Sequence[dict], fmt: QAFormat | None = None,
                 batch_size: int = 16, mode: str = "geometric", progress=False) -> dict:
    """Per-question NLLs and truth ratios. Needs ``perturbed_answer`` (list) on every row; the
    paraphrased answer defaults to the answer. ``mode``: "geometric" (default) or "arithmetic"
    mean of the perturbed answers' probabilities (:func:`~alter_kernels.eval.metrics.truth_ratio_from_nll`).
    Returns {"para_nll", "pert_nll" [n, k] (padded with NaN when rows have different k),
    "pert_mean_nll", "ratio"}."""
    if mode not in TRUTH_RATIO_MODES:
        raise ValueError(f"truth_ratios: mode must be one of {TRUTH_RATIO_MODES}, got {mode!r}")
    rows = load_rows(rows, require=("question", "answer", "perturbed_answer"))
    qs = [r["question"] for r in rows]
    para = answer_nll(model, tokenizer, qs, [r.get("paraphrased_answer") or r["answer"] for r in rows],
                      fmt, batch_size, progress=_progress_name(progress, "paraphrased NLL"))
    flat_q, flat_a, owner = [], [], []
    for i, r in enumerate(rows):
        if not r["perturbed_answer"]:
            raise ValueError(f"truth_ratios: row {i} has an empty perturbed_answer list")
        for p in r["perturbed_answer"]:
            flat_q.append(r["question"])
            flat_a.append(p)
            owner.append(i)
    pert_flat = answer_nll(model, tokenizer, flat_q, flat_a, fmt, batch_size,
                           progress=_progress_name(progress, "perturbed NLL"))
    k = max(len(r["perturbed_answer"]) for r in rows) if rows else 0
    pert = torch.full((len(rows), k), float("nan"), dtype=torch.float64)
    fill = [0] * len(rows)
    for v, i in zip(pert_flat.tolist(), owner):
        pert[i, fill[i]] = v
        fill[i] += 1
    pert_mean = torch.nanmean(pert, dim=1)
    ratio = torch.tensor(truth_ratio_from_nll(para.tolist(), pert.tolist(), mode), dtype=torch.float64)
    return {"para_nll": para, "pert_nll": pert, "pert_mean_nll": pert_mean, "ratio": ratio}


def split_stats(model, tokenizer, rows, kind: str = "retain", fmt: QAFormat | None = None,
                batch_size: int = 16, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, generations: bool = True,
                truth_ratio: str = "geometric", progress=False, task_id=None) -> dict:
    """TOFU's three numbers on one split plus the per-row data.

    kind: "forget" / "retain" (probability = exp(-mean NLL of the answer)) or "options" (real
    authors / world facts: P_correct / (P_correct + sum P_false)). The truth-ratio score is
    mean(min(R, 1/R)) for "forget" and mean(max(0, 1 - R)) otherwise; ``truth_ratio`` picks the
    definition of R ("geometric" or "arithmetic", see :func:`truth_ratios`). ``progress``: True
    or a split name shows tqdm bars. ``task_id``: passed to :func:`load_rows`.
    """
    if kind not in ("forget", "retain", "options"):
        raise ValueError(f"split_stats: kind must be 'forget', 'retain' or 'options', got {kind!r}")
    if truth_ratio not in TRUTH_RATIO_MODES:
        raise ValueError(f"split_stats: truth_ratio must be one of {TRUTH_RATIO_MODES}, got {truth_ratio!r}")
    rows = load_rows(rows, task_id=task_id)
    if not rows:
        raise ValueError(f"split_stats: no rows for the {kind} split")
    qs = [r["question"] for r in rows]
    ans = [r["answer"] for r in rows]
    a_nll = answer_nll(model, tokenizer, qs, ans, fmt, batch_size, progress=_progress_name(progress, "answer NLL"))
    out = {"n": len(rows), "answer_nll": a_nll.tolist()}
    has_pert = all(r.get("perturbed_answer") for r in rows)
    if has_pert:
        tr = truth_ratios(model, tokenizer, rows, fmt, batch_size, mode=truth_ratio, progress=progress)
        out["truth_ratios"] = tr["ratio"].tolist()
        out["truth_ratio"] = truth_ratio_score(out["truth_ratios"], "forget" if kind == "forget" else "retain")
    if kind == "options":
        if not has_pert:
            raise ValueError("split_stats(kind='options') needs perturbed_answer on every row")
        pert = tr["pert_nll"].tolist()          # the false answers' NLLs, already scored for R
        probs = []
        for i, r in enumerate(rows):
            k = len(r["perturbed_answer"])
            pc = math.exp(-a_nll[i].item())
            pf = sum(math.exp(-x) for x in pert[i][:k])
            probs.append(pc / (pc + pf))
        out["probs"] = probs
    else:
        out["probs"] = torch.exp(-a_nll).tolist()
    out["probability"] = sum(out["probs"]) / max(1, len(rows))
    if generations:
        gens = generate_answers(model, tokenizer, qs, fmt, max_new_tokens, batch_size,
                                progress=_progress_name(progress, "generate"))
        out["generations"] = gens
        out["rouges"] = [rouge_l(g, a)["recall"] for g, a in zip(gens, ans)]
        out["rouge"] = sum(out["rouges"]) / max(1, len(rows))
    return out


def model_utility(retain: dict, real_authors: dict, world_facts: dict) -> float:
    """Harmonic mean of the 9 numbers {retain, real authors, world facts} x {probability, rouge,
    truth_ratio} (each argument a :func:`split_stats` result)."""
    vals = [s[k] for s in (retain, real_authors, world_facts) for k in ("probability", "rouge", "truth_ratio")]
    return harmonic_mean(vals)


def evaluate_tofu(model, tokenizer, forget, retain, real_authors, world_facts,
                  reference_truth_ratios: Sequence[float] | None = None, fmt: QAFormat | None = None,
                  batch_size: int = 16, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, keep_rows: bool = False,
                  truth_ratio: str = "geometric", progress: bool = False, task_id=None,
                  reference_generations: dict | None = None) -> dict:
    """The TOFU suite. ``reference_truth_ratios``: the retain model's forget-set truth ratios
    (``result["forget"]["truth_ratios"]`` of the retain model, computed with the same
    ``truth_ratio`` definition); without them forget quality is not computed. Returns
    forget_quality, model_utility, forget_rouge, retain_rouge, the sub-metrics under
    "utility_parts", and per split stats under "forget" / "retain" / "real_authors" /
    "world_facts" (per-row lists dropped unless keep_rows).

    truth_ratio: "geometric" (default, TOFU's aggregation and open-unlearning) or "arithmetic"
    (the TOFU paper's equation); see :func:`~alter_kernels.eval.metrics.truth_ratio_from_nll`.
    max_new_tokens: greedy generation length for ROUGE (TOFU: 200). progress: tqdm bars.
    task_id: keep that task_id group of every file that has the field (:func:`load_rows`).

    Fluency (issue 24): "fluency_forget" / "fluency_retain" (:func:`~alter_kernels.eval.fluency.split_fluency`
    of the greedy answers: repetition, distinct-1/2, mean words, degenerate share) and the pooled
    "fluency" (distinct-2, repetition rate of forget + retain answers). ``reference_generations``:
    the retain model's greedy answers {"forget": [...], "retain": [...]} on the same questions
    (its ``result["forget"]["generations"]`` ...); without them degenerate_share is None."""
    kw = dict(fmt=fmt, batch_size=batch_size, max_new_tokens=max_new_tokens, truth_ratio=truth_ratio,
              task_id=task_id)
    st = {}
    for name, rows, kind in (("forget", forget, "forget"), ("retain", retain, "retain"),
                             ("real_authors", real_authors, "options"), ("world_facts", world_facts, "options")):
        st[name] = split_stats(model, tokenizer, rows, kind, progress=name if progress else False, **kw)
    res = {"model_utility": model_utility(st["retain"], st["real_authors"], st["world_facts"]),
           "forget_rouge": st["forget"]["rouge"], "retain_rouge": st["retain"]["rouge"],
           "forget_probability": st["forget"]["probability"],
           "forget_truth_ratio": st["forget"].get("truth_ratio"), "truth_ratio_definition": truth_ratio,
           "max_new_tokens": max_new_tokens}
    if reference_truth_ratios is not None:
        res["forget_quality"] = forget_quality(st["forget"]["truth_ratios"], reference_truth_ratios)
    res["utility_parts"] = {f"{s}_{k}": st[s][k] for s in ("retain", "real_authors", "world_facts")
                            for k in ("probability", "rouge", "truth_ratio")}
    gens = st["forget"]["generations"] + st["retain"]["generations"]
    res["fluency"] = {"distinct_2": distinct_n(gens, 2), "repetition_rate_2": repetition_rate(gens, 2)}
    res.update(split_results({s: st[s]["generations"] for s in ("forget", "retain")}, reference_generations))
    keep = ("truth_ratios", "generations") if not keep_rows else None
    for name, s in st.items():
        res[name] = s if keep_rows else {k: v for k, v in s.items() if not isinstance(v, list) or k in keep}
    return res


@torch.no_grad()
def mcq_accuracy(model, tokenizer, items, fmt: QAFormat | None = None, batch_size: int = 16,
                 normalize: bool = False) -> dict:
    """Multiple-choice accuracy from option log-likelihoods (WMDP / MMLU style, like lm-eval's acc):
    each option is scored as the answer to the question (summed token log-probability, no eos;
    ``normalize=True`` divides by the option's token count); the top option is the prediction.
    Items: {"question", "choices": [...], "answer_index": int} (``answer`` also accepted as the
    index). Returns {"accuracy", "n", "predictions"}."""
    items = load_rows(items, require=("question", "choices"))
    flat_q, flat_a, owner = [], [], []
    for i, it in enumerate(items):
        if len(it["choices"]) < 2:
            raise ValueError(f"mcq_accuracy: item {i} has fewer than 2 choices")
        for c in it["choices"]:
            flat_q.append(it["question"])
            flat_a.append(str(c))
            owner.append(i)
    nll = answer_nll(model, tokenizer, flat_q, flat_a, fmt, batch_size,
                     reduction="mean" if normalize else "sum", eos=False).tolist()
    scores: list[list[float]] = [[] for _ in items]
    for v, i in zip(nll, owner):
        scores[i].append(-v)
    preds = [max(range(len(s)), key=s.__getitem__) for s in scores]
    gold = []
    for i, it in enumerate(items):
        g = it.get("answer_index", it.get("answer"))
        if not isinstance(g, int):
            raise ValueError(f"mcq_accuracy: item {i} needs an integer 'answer_index', got {g!r}")
        gold.append(g)
    acc = sum(int(p == g) for p, g in zip(preds, gold)) / max(1, len(items))
    return {"accuracy": acc, "n": len(items), "predictions": preds}


def verbatim_rouge(model, tokenizer, texts: Sequence[str], prefix_tokens: int = 24,
                   max_new_tokens: int = 64, batch_size: int = 16) -> dict:
    """MUSE-style verbatim memorisation: greedy continuation of the first ``prefix_tokens`` tokens
    of each text, ROUGE-L (F and recall) against the true continuation (at most
    ``max_new_tokens`` tokens of it). Texts too short to leave a continuation are skipped."""
    prompts, refs = [], []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for t in texts:
        ids = list(tokenizer(t, add_special_tokens=False).input_ids)
        if len(ids) <= prefix_tokens:
            continue
        prompts.append(bos + ids[:prefix_tokens])
        refs.append(tokenizer.decode(ids[prefix_tokens:prefix_tokens + max_new_tokens]))
    if not prompts:
        return {"rouge_f": float("nan"), "rouge_recall": float("nan"), "n": 0, "continuations": []}
    outs = greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    conts = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    scores = [rouge_l(c, r) for c, r in zip(conts, refs)]
    return {"rouge_f": sum(s["f"] for s in scores) / len(scores),
            "rouge_recall": sum(s["recall"] for s in scores) / len(scores),
            "n": len(scores), "continuations": conts}
