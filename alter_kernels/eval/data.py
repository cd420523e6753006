"""Loaders for TOFU-format data: a JSON array, JSON lines (``.jsonl``, or ``.json`` holding JSON
lines, one row included), an object holding the list ({"data": [...]} / {"train": [...]}), or
``hf:NAME[:CONFIG][@SPLIT]``.

The file reading and the ``task_id`` filter are those of the unlearning loader
(:func:`alter_kernels.unlearn.data.load_rows`); this module adds the evaluation's checks.
"""
from __future__ import annotations

import os

from ..unlearn.data import load_rows as _load_source

TOFU_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question")


def load_rows(source, require=("question", "answer"), task_id=None) -> list[dict]:
    """Rows from a path (``.json`` array / JSON lines / object holding a list, ``.jsonl`` lines,
    ``hf:...``) or a list of dicts.

    ``task_id``: keep only the rows of that task_id group (a list, or "1,2", keeps several); a
    file holding several groups and no ``task_id`` gets a UserWarning naming the groups and their
    counts. Checks that every row has the fields in ``require`` and raises a ValueError naming
    the file, the row and the missing field otherwise. ``perturbed_answer`` given as one string
    becomes a one-element list.
    """
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if not name.startswith("hf:") and not os.path.isfile(name):
            raise FileNotFoundError(f"load_rows: no such file {name!r}")
    rows, where = _load_source(source, "load_rows", task_id=task_id)
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"load_rows: {where} row {i} is {type(r).__name__}, expected an object")
        missing = [k for k in require if k not in r]
        if missing:
            raise ValueError(f"load_rows: {where} row {i} lacks {missing} (has {sorted(r)})")
        r = dict(r)
        if isinstance(r.get("perturbed_answer"), str):
            r["perturbed_answer"] = [r["perturbed_answer"]]
        out.append(r)
    return out
