"""Data for unlearning: loading TOFU-style QA rows and plain-text passages, validation with
errors that name the file and row, tokenisation with the question masked, and batching.

Accepted inputs (``forget`` / ``retain`` of :func:`alter_kernels.unlearn`):

- a list of dicts: TOFU rows (``question``, ``answer``; optional ``domain`` int or str; other
  fields such as ``paraphrased_answer``, ``perturbed_answer``, ``paraphrased_question`` are
  kept on the row but not used for training) or text rows (``text``; optional ``domain``);
- a path to a JSON array (``.json``) or JSON lines (``.jsonl``) file of such rows;
- a path to a ``.txt`` file: one passage per blank-line-separated block (book-style forgetting);
- ``hf:NAME[:CONFIG][@SPLIT]``: a Hugging Face dataset (needs the optional ``datasets`` package
  and network access), e.g. ``hf:locuslab/TOFU:forget10@train``.

Public TOFU files carry a ``task_id`` field and some hold several task_id groups (TOFU's
``forget10_perturbed.json``: 3600 rows, the canonical split being the 400 rows of task_id "1").
``load_rows(src, task_id=...)`` keeps one group (or several); without it a file holding several
groups is used whole, with a warning naming the groups and their sizes.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from typing import Any

import torch

from ..common.rows import DataError, load_rows  # noqa: F401  (the one loader: alter_kernels.common.rows)
from ..common.text import (DEFAULT_CHAT_TEMPLATE, DEFAULT_PROMPT_FORMAT, IGNORE_INDEX, answer_separator,
                           chat_prompt_ids, uses_chat_template)


@dataclasses.dataclass
class Example:
    """One tokenised row: ``labels`` is -100 on prompt (question) tokens."""

    input_ids: list[int]
    labels: list[int]
    domain: Any = None            # raw domain value from the data (None: none given)
    index: int = 0                # position in its source (stable cache key)
    source: str = ""
    alias_keys: tuple = ()        # first tokens of the row's 'aliases' (the answer-key router's keys)

    @property
    def num_answer_tokens(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


# --------------------------------------------------------------------------------- loading
def _describe(src) -> str:
    return src if isinstance(src, str) else "<in-memory rows>"


def validate_rows(rows: list, where: str, name: str, allow_empty: bool = False) -> list[dict]:
    """Check every row; the error names the file and the (0-based) row."""
    if not rows and not allow_empty:
        raise DataError(f"{name}: {where} holds no rows; the {name} set must not be empty")
    out = []
    for i, r in enumerate(rows):
        at = f"{name}: {where} row {i}"
        if not isinstance(r, dict):
            raise DataError(f"{at}: expected an object with 'question' and 'answer' (or 'text'), "
                            f"got {type(r).__name__}")
        if "text" in r and "question" not in r:
            if not isinstance(r["text"], str):
                raise DataError(f"{at}: field 'text' must be a string, got {type(r['text']).__name__}")
            if not r["text"].strip():
                raise DataError(f"{at}: field 'text' is empty")
        else:
            for key in ("question", "answer"):
                if key not in r:
                    raise DataError(f"{at}: missing field {key!r} (a TOFU row needs 'question' and 'answer'; "
                                    "a passage row needs 'text'); it has fields "
                                    f"{sorted(r)}")
                if not isinstance(r[key], str):
                    raise DataError(f"{at}: field {key!r} must be a string, got {type(r[key]).__name__}")
            if not r["answer"].strip():
                raise DataError(f"{at}: field 'answer' is empty")
        al = r.get("aliases")
        if al is not None and (not isinstance(al, (list, tuple)) or not all(isinstance(a, str) and a.strip() for a in al)):
            raise DataError(f"{at}: field 'aliases' must be a list of non-empty strings (the answer's accepted "
                            f"names), got {al!r}")
        d = r.get("domain")
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, str))):
            raise DataError(f"{at}: field 'domain' must be an int or a string, got {type(d).__name__}")
        out.append(r)
    return out


def _row_key(r: dict):
    if "question" in r:
        return (" ".join(str(r["question"]).split()), " ".join(str(r.get("answer", "")).split()))
    return (" ".join(str(r.get("text", "")).split()),)


def overlapping_rows(forget_rows: list[dict], retain_rows: list[dict]) -> list[dict]:
    """The forget rows that also appear in the retain set: same question and answer (or same
    text for passage rows), compared with whitespace normalised."""
    retain_keys = {_row_key(r) for r in retain_rows}
    return [r for r in forget_rows if _row_key(r) in retain_keys]


def report_rows(forget_rows: list[dict], retain_rows: list[dict] | None, forget_src, retain_src,
                prefix: str = "unlearn", stream=None) -> list[dict]:
    """Print how many rows each set holds (to stderr) and warn (UserWarning) when forget rows
    also appear in the retain set, with their count and up to 3 examples. Returns the overlap."""
    msg = f"{prefix}: forget: {len(forget_rows)} rows from {_describe(forget_src)}"
    if retain_rows is not None:
        msg += f"; retain: {len(retain_rows)} rows from {_describe(retain_src)}"
    print(msg, file=stream or sys.stderr, flush=True)
    both = overlapping_rows(forget_rows, retain_rows or [])
    if both:
        ex = "; ".join(" -> ".join(repr(t if len(t) <= 60 else t[:57] + "...") for t in _row_key(r))
                       for r in both[:3])
        warnings.warn(f"{prefix}: {len(both)} of {len(forget_rows)} forget rows also appear in the retain set "
                      f"(same question and answer), e.g. {ex}. Training pushes these rows both ways; the sets "
                      "should be disjoint (a TOFU file with several task_id groups? keep one with "
                      "load_rows(..., task_id=...))", UserWarning, stacklevel=3)
    return both


# ----------------------------------------------------------------------------- tokenisation
def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


KEY_MIN_CHARS = 3     # a shorter token (" B" of "Brontë", " J" of "J.R.R. Tolkien") names no entity


def alias_first_tokens(tokenizer, aliases) -> tuple:
    """The tokens a model starts each alias with: mid-sentence (with a leading space) and, when it is
    a whole word, at the start of a turn (no space); for a several-word alias also the first token
    of its last word (" Fitzgerald" of "F. Scott Fitzgerald"). Tokens of fewer than KEY_MIN_CHARS
    characters are dropped; sorted ids."""
    out = set()
    for a in aliases:
        words = a.strip().split()
        cands = [_ids(tokenizer, " " + a.strip())[0]]
        plain = _ids(tokenizer, a.strip())[0]
        if tokenizer.decode([plain]).strip() == words[0]:
            cands.append(plain)
        if len(words) > 1:
            cands.append(_ids(tokenizer, " " + words[-1])[0])
        out |= {t for t in cands if len(tokenizer.decode([t]).strip()) >= KEY_MIN_CHARS}
    return tuple(sorted(out))


def tokenize_rows(rows: list[dict], tokenizer, where: str, name: str, max_length: int = 512,
                  chat_template: bool | str = DEFAULT_CHAT_TEMPLATE, prompt_format: str = DEFAULT_PROMPT_FORMAT,
                  ) -> list[Example]:
    """QA rows -> the chat template's prompt (``chat_template``: "auto" = when the tokenizer has
    one, "on", "off"; common.text.uses_chat_template) or [BOS] + ``prompt_format``, then the
    answer and [EOS], with the prompt masked; text rows -> windows of ``max_length`` tokens,
    every token a target."""
    if tokenizer is None:
        raise DataError(f"{name}: a tokenizer is needed (pass tokenizer=...)")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    try:
        chat = uses_chat_template(tokenizer, chat_template)
    except ValueError as exc:
        raise DataError(f"{name}: {exc}") from None
    out: list[Example] = []
    for i, r in enumerate(rows):
        dom = r.get("domain")
        if "text" in r and "question" not in r:
            ids = bos + _ids(tokenizer, r["text"]) + eos
            step = max(max_length, 2)
            for s in range(0, len(ids), step):
                win = ids[s:s + step]
                if len(win) >= 2:
                    out.append(Example(win, list(win), dom, i, where))
            continue
        if chat:
            prompt, sep = chat_prompt_ids(tokenizer, r["question"])
        else:
            text = prompt_format.format(question=r["question"])
            prompt, sep = bos + _ids(tokenizer, text), answer_separator(text)
        answer = _ids(tokenizer, sep + r["answer"].strip()) + eos
        ids = (prompt + answer)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]
        ex = Example(ids, labels, dom, i, where, alias_first_tokens(tokenizer, r.get("aliases") or ()))
        if ex.num_answer_tokens == 0:
            raise DataError(f"{name}: {where} row {i}: no answer token left after truncation to "
                            f"max_length={max_length} (prompt has {len(prompt)} tokens); raise max_length")
        out.append(ex)
    return out


def prepare(src, tokenizer, name: str, max_length: int = 512, chat_template: bool | str = DEFAULT_CHAT_TEMPLATE,
            allow_empty: bool = False, task_id=None, **kw) -> tuple[list[dict], list[Example]]:
    rows, where = load_rows(src, name, task_id=task_id)
    rows = validate_rows(rows, where, name, allow_empty=allow_empty)
    return rows, tokenize_rows(rows, tokenizer, where, name, max_length, chat_template, **kw)


# --------------------------------------------------------------------------------- batching
def collate(examples: list[Example], pad_id: int, extra: dict[str, list] | None = None):
    """Right-padded batch: input_ids, attention_mask, labels (-100 on prompt and padding)."""
    t = max(len(e.input_ids) for e in examples)
    b = len(examples)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    att = torch.zeros((b, t), dtype=torch.long)
    lab = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        att[i, :n] = 1
        lab[i, :n] = torch.tensor(e.labels)
    return ids, att, lab


def pad_float(seqs: list[torch.Tensor], t: int, fill: float) -> torch.Tensor:
    out = torch.full((len(seqs), t), fill, dtype=torch.float32)
    for i, s in enumerate(seqs):
        out[i, :s.shape[0]] = s
    return out


def epoch_order(n: int, seed: int, epoch: int, salt: int = 0) -> list[int]:
    """The deterministic shuffle of epoch ``epoch`` (so resuming needs no data-loader state)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch * 7919 + salt)
    return torch.randperm(n, generator=g).tolist()


def steps_per_epoch(n_forget: int, batch_size: int) -> int:
    return max(1, math.ceil(n_forget / batch_size))
