"""The evaluation's view of the one row loader (:func:`alter_kernels.common.rows.load_rows`):
the rows only, every row checked for the fields the evaluation needs.

Sources: a JSON array, JSON lines (``.jsonl``, or ``.json`` holding JSON lines, one row
included), an object holding the list ({"data": [...]} / {"train": [...]}), ``hf:NAME[:CONFIG][@SPLIT]``
or a list of dicts.
"""
from __future__ import annotations

import os

from ..common.rows import DataError, load_rows as _load

TOFU_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question")

__all__ = ["DataError", "TOFU_FIELDS", "load_rows"]


def load_rows(source, require=("question", "answer"), task_id=None) -> list[dict]:
    """Rows from a path (``.json`` array / JSON lines / object holding a list, ``.jsonl`` lines,
    ``hf:...``) or a list of dicts.

    ``task_id``: keep only the rows of that task_id group (a list, or "1,2", keeps several); a
    file holding several groups and no ``task_id`` gets a UserWarning naming the groups and their
    counts. Checks that every row has the fields in ``require`` and raises a :class:`DataError`
    (a ValueError) naming the file, the row and the missing field otherwise; a path that is not a
    file raises FileNotFoundError. ``perturbed_answer`` given as one string becomes a
    one-element list.
    """
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if not name.startswith("hf:") and not os.path.isfile(name):
            raise FileNotFoundError(f"load_rows: no such file {name!r}")
    return _load(source, "load_rows", task_id=task_id, require=require)[0]
