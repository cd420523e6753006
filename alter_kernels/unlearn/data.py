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
import json
import math
import os
import sys
import warnings
from collections import Counter
from typing import Any, Sequence

import torch

IGNORE_INDEX = -100


class DataError(ValueError):
    """Bad unlearning data: the message names the source (file) and the row."""


@dataclasses.dataclass
class Example:
    """One tokenised row: ``labels`` is -100 on prompt (question) tokens."""

    input_ids: list[int]
    labels: list[int]
    domain: Any = None            # raw domain value from the data (None: none given)
    index: int = 0                # position in its source (stable cache key)
    source: str = ""

    @property
    def num_answer_tokens(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE_INDEX)


# --------------------------------------------------------------------------------- loading
def _describe(src) -> str:
    return src if isinstance(src, str) else "<in-memory rows>"


def load_rows(src, name: str = "data", task_id=None) -> tuple[list[dict], str]:
    """Rows and a description of where they came from (for error messages).

    ``task_id``: keep only the rows whose ``task_id`` field equals it (compared as strings; a
    list / tuple / set, or a comma-separated string, keeps several groups). Without it, rows in
    several task_id groups are all kept and, when read from a file, a UserWarning names the
    groups and their counts (in-memory rows were already chosen by the caller: no warning).
    """
    rows, where = _read_rows(src, name)
    return _select_task(rows, where, name, task_id, warn=isinstance(src, (str, os.PathLike)))


def _task_ids(task_id) -> list[str]:
    if isinstance(task_id, (list, tuple, set, frozenset)):
        return [str(t).strip() for t in task_id]
    return [t.strip() for t in str(task_id).split(",") if t.strip()]


def _groups_text(counts: Counter) -> str:
    items = [f"{k!r}: {v}" for k, v in list(counts.items())[:12]]
    return "{" + ", ".join(items) + (", ..." if len(counts) > 12 else "") + "}"


def _select_task(rows: list, where: str, name: str, task_id, warn: bool = True) -> tuple[list, str]:
    counts = Counter(str(r["task_id"]) for r in rows if isinstance(r, dict) and "task_id" in r)
    if task_id is None:
        if len(counts) > 1 and warn:
            warnings.warn(f"{name}: {where} holds {len(rows)} rows in {len(counts)} task_id groups "
                          f"{_groups_text(counts)}; all of them are used. Keep one group with "
                          "load_rows(..., task_id=...) (alter-eval --task-id)", UserWarning, stacklevel=3)
        return rows, where
    wanted = _task_ids(task_id)
    if not wanted:
        raise DataError(f"{name}: empty task_id {task_id!r}")
    if not counts:
        warnings.warn(f"{name}: task_id={task_id!r} given but {where} has no task_id field; all {len(rows)} "
                      "rows are used", UserWarning, stacklevel=3)
        return rows, where
    missing = [t for t in wanted if t not in counts]
    if missing:
        raise DataError(f"{name}: {where} has no rows with task_id {', '.join(map(repr, missing))}; its groups "
                        f"are {_groups_text(counts)}")
    keep = set(wanted)
    picked = [r for r in rows if isinstance(r, dict) and str(r.get("task_id")) in keep]
    return picked, f"{where} (task_id {','.join(wanted)})"


def _read_rows(src, name: str) -> tuple[list, str]:
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if path.startswith("hf:"):
            return _load_hf(path), path
        if not os.path.exists(path):
            raise DataError(f"{name}: file {path} not found (expected a .json, .jsonl or .txt file, "
                            "or hf:NAME[:CONFIG][@SPLIT])")
        low = path.lower()
        with open(path, encoding="utf-8") as f:
            raw = f.read()
        if low.endswith(".txt"):
            blocks = [b.strip() for b in raw.replace("\r\n", "\n").split("\n\n")]
            return [{"text": b} for b in blocks if b], path
        if low.endswith(".jsonl"):
            rows = []
            for i, line in enumerate(raw.splitlines()):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{name}: {path} line {i + 1} is not valid JSON ({exc.msg})") from exc
            return rows, path
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            # a .json file holding JSON lines is common enough to accept
            try:
                data = [json.loads(line) for line in raw.splitlines() if line.strip()]
            except json.JSONDecodeError:
                raise DataError(f"{name}: {path} is neither a JSON array nor JSON lines ({exc})") from exc
        if isinstance(data, dict):
            for key in ("data", "rows", "train", "examples"):
                if isinstance(data.get(key), list):
                    data = data[key]
                    break
            else:
                if "question" in data or "text" in data:
                    data = [data]          # one row: a one-line JSON-lines file, or a single object
                else:
                    raise DataError(f"{name}: {path} holds a JSON object that is neither a row (no 'question' "
                                    "or 'text' field) nor an object with a list under 'data' / 'rows' / "
                                    f"'train' / 'examples'; its keys are {sorted(data)[:8]}")
        if not isinstance(data, list):
            raise DataError(f"{name}: {path} must hold a JSON array or JSON lines of rows, got a JSON "
                            f"{type(data).__name__}")
        return data, path
    if isinstance(src, dict):
        raise DataError(f"{name}: expected a list of rows or a file path, got a single dict")
    if isinstance(src, Sequence) or hasattr(src, "__iter__"):
        return list(src), "<in-memory rows>"
    raise DataError(f"{name}: expected a list of dict rows or a path, got {type(src).__name__}")


def _load_hf(spec: str) -> list[dict]:
    try:
        import datasets  # optional dependency
    except ImportError as exc:
        raise DataError(f"{spec}: loading a Hugging Face dataset needs the optional `datasets` package "
                        "(pip install datasets) and network access") from exc
    body = spec[3:]
    split = "train"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    name, _, config = body.partition(":")
    ds = datasets.load_dataset(name, config or None, split=split)
    return [dict(r) for r in ds]


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


def tokenize_rows(rows: list[dict], tokenizer, where: str, name: str, max_length: int = 512,
                  chat_template: bool = False, prompt_format: str = "Question: {question}\nAnswer:",
                  ) -> list[Example]:
    """QA rows -> [BOS] prompt answer [EOS] with the prompt masked; text rows -> windows of
    ``max_length`` tokens, every token a target."""
    if tokenizer is None:
        raise DataError(f"{name}: a tokenizer is needed (pass tokenizer=...)")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{name}: chat_template=True but the tokenizer has no chat template")
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
        if chat_template:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": r["question"]}],
                                                   add_generation_prompt=True, tokenize=True)
            if hasattr(prompt, "keys"):              # transformers 5 returns a BatchEncoding
                prompt = prompt["input_ids"]
            prompt = [int(x) for x in prompt]
        else:
            prompt = bos + _ids(tokenizer, prompt_format.format(question=r["question"]))
        answer = _ids(tokenizer, " " + r["answer"].strip()) + eos
        ids = (prompt + answer)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]
        ex = Example(ids, labels, dom, i, where)
        if ex.num_answer_tokens == 0:
            raise DataError(f"{name}: {where} row {i}: no answer token left after truncation to "
                            f"max_length={max_length} (prompt has {len(prompt)} tokens); raise max_length")
        out.append(ex)
    return out


def prepare(src, tokenizer, name: str, max_length: int = 512, chat_template: bool = False,
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
