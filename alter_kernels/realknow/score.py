"""Scoring the benchmark's probes: normalised substring match of accepted aliases in greedy
answers generated through the chat template, and accuracy restricted to what the base knows."""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

QA_MAX_NEW_TOKENS = 20        # a short factual answer ("The capital of France is Paris.") fits


def normalise(text: str) -> str:
    """Lower case, accents and width variants folded (NFKD), every run of characters other than
    a-z / 0-9 one space, padded with one space each side (so matches stop at word edges)."""
    s = unicodedata.normalize("NFKD", text)
    s = "".join(c for c in s if not unicodedata.combining(c))
    return " " + re.sub(r"[^a-z0-9]+", " ", s.lower()).strip() + " "


def is_correct(answer: str, aliases: Sequence[str]) -> bool:
    """True when some alias, normalised, occurs in the normalised answer as whole words."""
    if not aliases:
        raise ValueError("is_correct: a row without aliases cannot be scored")
    a = normalise(answer)
    return any(normalise(x) in a for x in aliases if normalise(x).strip())


def prompt_ids(tokenizer, row: dict) -> list[int]:
    """The chat-template prompt of a row (its ``messages``, else one user turn with its question)."""
    msgs = row.get("messages") or [{"role": "user", "content": row["question"]}]
    out = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    if isinstance(out, dict) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    return list(out)


def answer_rows(model, tokenizer, rows: Sequence[dict], max_new_tokens: int = QA_MAX_NEW_TOKENS,
                batch_size: int = 32) -> list[dict]:
    """Greedy answers to ``rows``: [{"id", "answer", "correct"}] in row order."""
    import torch

    from ..eval.tofu import greedy_generate
    ids = [prompt_ids(tokenizer, r) for r in rows]
    with torch.no_grad():
        outs = greedy_generate(model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size)
    res = []
    for r, o in zip(rows, outs):
        text = tokenizer.decode(o, skip_special_tokens=True)
        res.append({"id": r["id"], "answer": text, "correct": is_correct(text, r["aliases"])})
    return res


def accuracy_by_kind(rows: Sequence[dict], answers: dict, base_correct: dict) -> dict:
    """{kind: {"acc", "n", "n_total"}}: accuracy over the rows of each kind that the base model
    answers correctly (``base_correct``: id -> bool); ``answers``: id -> {"correct", ...}."""
    out: dict = {}
    for r in rows:
        d = out.setdefault(r["kind"], {"hits": 0, "n": 0, "n_total": 0})
        d["n_total"] += 1
        if base_correct.get(r["id"]):
            d["n"] += 1
            d["hits"] += bool(answers[r["id"]]["correct"])
    return {k: {"acc": (d["hits"] / d["n"]) if d["n"] else None, "n": d["n"], "n_total": d["n_total"]}
            for k, d in out.items()}


def routed_rows(model, tokenizer, rows: Sequence[dict], answers: dict) -> dict:
    """{id: True when some position of the row's prompt and the base model's answer (``answers``:
    id -> {"answer"}, teacher-forced, routed by the model's own inference rule) gives a forget
    expert weight > 0.5 in the first patched layer}; {} for a model without routed experts."""
    import torch

    from ..model.state import is_patched, last_plans
    if not is_patched(model):
        return {}
    out = {}
    with torch.no_grad():
        for r in rows:
            ans = tokenizer.encode(answers[r["id"]]["answer"], add_special_tokens=False)
            ids = torch.tensor([prompt_ids(tokenizer, r) + ans])
            model(input_ids=ids, use_cache=False)
            plan = next(iter(last_plans(model).values()))
            out[r["id"]] = bool((plan.expert_weights[:, 1:].max(-1).values > 0.5).any())
    return out
