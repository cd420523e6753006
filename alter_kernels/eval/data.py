"""Loaders for TOFU-format data: a JSON array, JSON lines, or {"data": [...]} / {"train": [...]}."""
from __future__ import annotations

import json
import os

TOFU_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question")


def load_rows(source, require=("question", "answer")) -> list[dict]:
    """Rows from a path (``.json`` array or object holding one, ``.jsonl`` lines) or a list of dicts.

    Checks that every row has the fields in ``require`` and raises a ValueError naming the file,
    the row and the missing field otherwise. ``perturbed_answer`` given as one string becomes a
    one-element list.
    """
    name = "rows"
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if not os.path.isfile(name):
            raise FileNotFoundError(f"load_rows: no such file {name!r}")
        with open(name, encoding="utf-8") as f:
            text = f.read()
        stripped = text.lstrip()
        if name.endswith(".jsonl") or (stripped and stripped[0] == "{" and "\n{" in stripped.rstrip()):
            rows = []
            for i, line in enumerate(text.splitlines()):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"load_rows: {name} line {i + 1} is not JSON: {e}") from None
        else:
            data = json.loads(text)
            if isinstance(data, dict):
                for key in ("data", "train", "rows", "examples"):
                    if isinstance(data.get(key), list):
                        data = data[key]
                        break
                else:
                    raise ValueError(f"load_rows: {name} holds a JSON object without a list under "
                                     f"'data'/'train'/'rows'/'examples'")
            rows = data
    else:
        rows = list(source)
    if not isinstance(rows, list):
        raise ValueError(f"load_rows: {name} must hold a list of rows, got {type(rows).__name__}")
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"load_rows: {name} row {i} is {type(r).__name__}, expected an object")
        missing = [k for k in require if k not in r]
        if missing:
            raise ValueError(f"load_rows: {name} row {i} lacks {missing} (has {sorted(r)})")
        r = dict(r)
        if isinstance(r.get("perturbed_answer"), str):
            r["perturbed_answer"] = [r["perturbed_answer"]]
        out.append(r)
    return out
