"""The TOFU files of bench/tofu_real.py: splits by task_id, authors, and the disjointness checks.

TOFU's 4000 question/answer rows are 200 fictitious authors of 20 consecutive rows each. The
files hold no author field; the author of a row is its position in TOFU's own order, which the
files give back as ``retain90.json`` (authors 0..179) followed by task "1" of ``forget10.json``
(authors 180..199): author = position // 20. :func:`load_tofu` rebuilds that order, checks it
(4000 distinct rows, every split row found in it, every task a set of whole authors) and
numbers the authors, so every set below is built from whole authors and checked for overlap.
Files are read from where they are (``../shared/tofu`` or ``--data``); nothing is copied.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from alter_kernels.common.rows import load_rows

ROWS_PER_AUTHOR = 20
N_AUTHORS = 200
FILES = ("forget01_perturbed.json", "forget10_perturbed.json", "forget10.json", "retain90.json",
         "retain_perturbed.json", "real_authors_perturbed.json", "world_facts_perturbed.json")
HUB_DATASET = "locuslab/TOFU"       # the same files on the Hugging Face hub (hf:locuslab/TOFU:<config>@train)


class TofuDataError(RuntimeError):
    """The TOFU files are missing or not what TOFU's layout says."""


def missing_files(data_dir: str) -> list[str]:
    return [f for f in FILES if not os.path.isfile(os.path.join(data_dir, f))]


def _key(r: dict) -> tuple:
    return (" ".join(r["question"].split()), " ".join(r["answer"].split()))


def _qa(rows: list[dict]) -> list[dict]:
    """question / answer only (what finetuning and unlearning train on)."""
    return [{"question": r["question"], "answer": r["answer"]} for r in rows]


@dataclass
class Tofu:
    """The rows TOFU's files hold, with each row's author."""
    data_dir: str
    author: dict                  # row key -> author number
    retain_pool: list             # retain90 rows in order (authors 0..179)
    retain_eval: list             # retain_perturbed rows (utility split)
    real_authors: list
    world_facts: list

    def authors_of(self, rows: list[dict]) -> set:
        try:
            return {self.author[_key(r)] for r in rows}
        except KeyError as exc:
            raise TofuDataError(f"a row is not one of TOFU's 4000: {exc}") from None

    def forget_split(self, forget: str, task_id: str) -> list[dict]:
        """The perturbed rows (truth-ratio fields included) of ``<forget>_perturbed.json`` task ``task_id``."""
        rows = load_rows(os.path.join(self.data_dir, f"{forget}_perturbed.json"), "forget", task_id=task_id)[0]
        if not rows:
            raise TofuDataError(f"{forget}_perturbed.json has no task_id {task_id!r}")
        authors = self.authors_of(rows)
        if len(rows) != len(authors) * ROWS_PER_AUTHOR:
            raise TofuDataError(f"{forget} task {task_id}: {len(rows)} rows are not whole authors ({sorted(authors)})")
        return rows

    def rows_of_authors(self, authors) -> list[dict]:
        keep = set(authors)
        return [r for r in self.retain_pool if self.author[_key(r)] in keep]


def load_tofu(data_dir: str) -> Tofu:
    """Read and check the TOFU files in ``data_dir`` (TofuDataError naming what is wrong)."""
    missing = missing_files(data_dir)
    if missing:
        raise TofuDataError(f"{data_dir}: missing {', '.join(missing)}")
    path = lambda name: os.path.join(data_dir, name)          # noqa: E731
    retain90 = load_rows(path("retain90.json"), "retain90")[0]
    forget10_1 = load_rows(path("forget10.json"), "forget10", task_id="1")[0]
    order = retain90 + forget10_1
    author = {}
    for i, r in enumerate(order):
        author.setdefault(_key(r), i // ROWS_PER_AUTHOR)
    if len(order) != N_AUTHORS * ROWS_PER_AUTHOR or len(author) != len(order):
        raise TofuDataError(f"{data_dir}: retain90.json + forget10.json task 1 hold {len(order)} rows, "
                            f"{len(author)} distinct; TOFU has {N_AUTHORS * ROWS_PER_AUTHOR} distinct rows")
    t = Tofu(data_dir, author, retain90, load_rows(path("retain_perturbed.json"), "retain_perturbed")[0],
             load_rows(path("real_authors_perturbed.json"), "real_authors")[0],
             load_rows(path("world_facts_perturbed.json"), "world_facts")[0])
    t.authors_of(t.retain_eval)                                # every utility row is a TOFU row
    return t


@dataclass
class Sets:
    """Every row set of one run, built from whole authors and checked (:func:`build_sets`)."""
    test_forget: list             # perturbed rows (evaluation) of the TEST forget split
    dev_forget: list
    retain_train: list            # retain authors: the unlearning retain set, in every finetuning set
    finetune: list                # retain_train + TEST forget + DEV forget (question / answer)
    retain_models: dict           # name -> rows of each retain model; split -> that name in ``retain_model_of``
    retain_model_of: dict
    retain_eval: list             # utility rows (authors trained on)
    real_authors: list
    world_facts: list
    report: dict


def build_sets(t: Tofu, size) -> Sets:
    """The sets of ``size`` (a tofu_real.Size): TEST / DEV forget splits, whole retain authors
    disjoint from both, the finetuning set and the retain model(s); raises TofuDataError when
    any two sets that must be disjoint share an author or a row."""
    test = t.forget_split(size.forget, size.test_task)[:size.forget_rows]
    dev = t.forget_split(size.forget, size.dev_task)[:size.dev_rows or size.forget_rows]
    fa_test, fa_dev = t.authors_of(test), t.authors_of(dev)
    if fa_test & fa_dev:
        raise TofuDataError(f"TEST and DEV forget splits share authors {sorted(fa_test & fa_dev)}")
    pool = sorted({t.author[_key(r)] for r in t.retain_pool} - fa_test - fa_dev)
    authors = pool if size.retain_authors is None else pool[:size.retain_authors]
    retain_train = _qa(t.rows_of_authors(authors))
    if size.retain_rows is not None:
        retain_train = retain_train[:size.retain_rows]
    finetune = retain_train + _qa(test) + _qa(dev)
    if size.shared_retain:
        models = {"retain": retain_train}
        of = {"test": "retain", "dev": "retain"}
    else:
        models = {"retain_test": retain_train + _qa(dev), "retain_dev": retain_train + _qa(test)}
        of = {"test": "retain_test", "dev": "retain_dev"}
    trained = t.authors_of(retain_train)
    eval_authors = sorted(t.authors_of(t.retain_eval) & trained)[:size.eval_retain_authors]
    retain_eval = [r for r in t.retain_eval if t.author[_key(r)] in set(eval_authors)][:size.eval_rows]
    opts = slice(0, size.eval_rows)
    s = Sets(test, dev, retain_train, finetune, models, of, retain_eval, t.real_authors[opts], t.world_facts[opts],
             {})
    check_sets(t, s)
    return s


def check_sets(t: Tofu, s: Sets) -> None:
    """Authors and rows: retain vs each forget split, each retain model vs its split's forget set."""
    def overlap(a, b, what):
        sa, sb = t.authors_of(a), t.authors_of(b)
        ka, kb = {_key(r) for r in a}, {_key(r) for r in b}
        if sa & sb or ka & kb:
            raise TofuDataError(f"{what}: {len(sa & sb)} shared author(s) {sorted(sa & sb)[:5]}, {len(ka & kb)} "
                                "shared row(s)")
    for split, forget in (("test", s.test_forget), ("dev", s.dev_forget)):
        overlap(s.retain_train, forget, f"retain set vs {split} forget split")
        overlap(s.retain_models[s.retain_model_of[split]], forget, f"retain model vs {split} forget split")
        overlap(s.retain_eval, forget, f"utility split vs {split} forget split")
    if not s.retain_eval:
        raise TofuDataError("no utility row left among the trained retain authors")
    s.report = {"test_forget": {"rows": len(s.test_forget), "authors": sorted(t.authors_of(s.test_forget))},
                "dev_forget": {"rows": len(s.dev_forget), "authors": sorted(t.authors_of(s.dev_forget))},
                "retain_train": {"rows": len(s.retain_train), "authors": len(t.authors_of(s.retain_train))},
                "finetune_rows": len(s.finetune),
                "retain_models": {k: len(v) for k, v in s.retain_models.items()},
                "utility": {"retain": len(s.retain_eval), "real_authors": len(s.real_authors),
                            "world_facts": len(s.world_facts)},
                "checked": "TEST/DEV forget authors and rows disjoint from the retain set, each retain model "
                           "and the utility split"}
