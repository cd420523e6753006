"""The one loader of data rows (TOFU-style QA rows, text passages), for unlearning and
evaluation alike, and :class:`DataError`.

Accepted sources: a list of dicts; a path to a JSON array (``.json``), JSON lines (``.jsonl``, or
a ``.json`` holding JSON lines, one row included) or an object holding the list (``{"data": [...]}``
/ ``rows`` / ``train`` / ``examples``); a ``.txt`` file (one passage per blank-line-separated
block, rows ``{"text": ...}``); ``hf:NAME[:CONFIG][@SPLIT]`` (a Hugging Face dataset: needs the
optional ``datasets`` package and network access), e.g. ``hf:locuslab/TOFU:forget10@train``.

Public TOFU files carry a ``task_id`` field and some hold several task_id groups (TOFU's
``forget10_perturbed.json``: 3600 rows, the canonical split being the 400 rows of task_id "1").
``load_rows(src, task_id=...)`` keeps one group (or several); without it a file holding several
groups is used whole, with a warning naming the groups and their sizes.
"""
from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from typing import Sequence


class DataError(ValueError):
    """Bad data: the message names the source (file) and the row."""


def load_rows(src, name: str = "data", task_id=None, require=None) -> tuple[list[dict], str]:
    """Rows, and a description of where they came from (for error messages).

    ``src``: a path (``.json`` array / JSON lines / object holding a list, ``.jsonl`` lines,
    ``.txt`` passages), ``hf:NAME[:CONFIG][@SPLIT]``, or an iterable of rows. ``name`` starts
    every error message (``"forget"``, ``"retain"``, ...).

    ``task_id``: keep only the rows whose ``task_id`` field equals it (compared as strings; a
    list / tuple / set, or a comma-separated string, keeps several groups). Without it, rows in
    several task_id groups are all kept and, when read from a file, a UserWarning names the
    groups and their counts (in-memory rows were already chosen by the caller: no warning).

    ``require``: field names every row must have (the evaluation's check); with it, every row
    must be an object, the rows are copies, and a ``perturbed_answer`` given as one string
    becomes a one-element list. Every failure is a :class:`DataError` (a ValueError).
    """
    rows, where = _read_rows(src, name)
    rows, where = _select_task(rows, where, name, task_id, warn=isinstance(src, (str, os.PathLike)))
    if require is not None:
        rows = _check_fields(rows, where, name, tuple(require))
    return rows, where


def _check_fields(rows: list, where: str, name: str, require: tuple) -> list[dict]:
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise DataError(f"{name}: {where} row {i} is {type(r).__name__}, expected an object")
        missing = [k for k in require if k not in r]
        if missing:
            raise DataError(f"{name}: {where} row {i} lacks {missing} (has {sorted(r)})")
        r = dict(r)
        if isinstance(r.get("perturbed_answer"), str):
            r["perturbed_answer"] = [r["perturbed_answer"]]
        for field in require + tuple(k for k in _OPTIONAL_TEXT if r.get(k) is not None):
            why = _field_problem(field, r.get(field))
            if why:
                raise DataError(f"{name}: {where} row {i}: field {field!r} {why}, got {_short(r.get(field))}")
        out.append(r)
    return out


_TEXT_FIELDS = ("question", "answer", "paraphrased_answer", "paraphrased_question", "text")
_OPTIONAL_TEXT = ("paraphrased_answer", "paraphrased_question")     # may be absent or null


def _field_problem(field: str, v) -> str | None:
    """Why value ``v`` cannot be field ``field`` of a row (None: it can)."""
    if field in _TEXT_FIELDS and not isinstance(v, str):
        return "must be a string"
    if field == "perturbed_answer" and (not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v)):
        return "must be a string or a non-empty list of strings"
    if field == "choices" and (not isinstance(v, list) or not v):
        return "must be a non-empty list"
    return None


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


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
        raw = _read_text(path, name)
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
                except RecursionError:
                    raise DataError(f"{name}: {path} line {i + 1} is nested too deeply to be a row") from None
                except json.JSONDecodeError as exc:
                    raise DataError(f"{name}: {path} line {i + 1} is not valid JSON ({exc.msg})") from exc
            return rows, path
        try:
            data = json.loads(raw)
        except RecursionError:
            raise DataError(f"{name}: {path} is nested too deeply to hold rows") from None
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


def _read_text(path: str, name: str) -> str:
    """The file's text; DataError naming the file when it is a directory, unreadable or not UTF-8."""
    if os.path.isdir(path):
        raise DataError(f"{name}: {path} is a directory; expected a .json, .jsonl or .txt file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"{name}: cannot read {path} ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataError(f"{name}: {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}, "
                        f"line {line}); save it as UTF-8") from None


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
