"""TOFU's own protocol on a real model (issue 22): finetune on the fictitious authors, train the
retain model, unlearn with all 8 methods at hyper-parameters selected on a DEV forget split,
report on the TEST split (task_id "1"), score everything with alter-eval's machinery.

    python bench/tofu_real.py --size cpu                      # forget01 + whole retain authors, 2-core CPU
    python bench/tofu_real.py --size gpu --device cuda        # forget10 task 1, retain90, 5 epochs
    options: --data DIR (default ../shared/tofu), --model NAME_OR_FOLDER (default smollm2-135m-instruct),
             --work DIR (the cache; default bench/out/tofu_real/<size>), --methods a,b, --stage
             models|dev|test|table|all, --device, --threads N

Steps, each cached under --work and skipped when done, so the same command continues a stopped run:
1. ``models/full``: ``ak.finetune`` of the base model on the finetuning set (retain authors + TEST
   forget + DEV forget split), checkpointed every ``--checkpoint-every`` steps and resumed;
   ``models/retain*``: the same on the finetuning set minus the forget authors (the ``cpu`` size
   trains one retain model without both splits' authors; ``gpu`` one per split). Each is an HF
   folder (``models/<name>/model``) that ``alter-unlearn --model`` / ``alter-eval --model`` take.
2. ``refs/<split>.json``: the retain model's truth ratios on the split's forget rows.
3. ``cells/<split>/<method>/k<k>_s<seed>.json``: unlearn the full model with one method at one
   learning-rate multiplier k (all of its learning rates times k; the same grid for every
   method), evaluate with ``evaluate_tofu`` (forget quality vs the retain model, model utility,
   forget / retain ROUGE-L, fluency of the generations); ``cells/<split>/{finetuned,retain}.json``.
4. DEV -> ``selected.json``: per method the k of the best harmonic mean of (forget quality,
   utility / finetuned utility), ties to the larger forget quality. TEST runs each method at its k.
5. ``bench/results/tofu_real_<size>.{json,md}``: the table (finetuned and retain models as rows).

Data: the TOFU files (JSON lines, task_id groups) read in place and checked (bench/tofu_data.py);
skipped with a reason (exit 3) when absent. With the hub dataset ``locuslab/TOFU`` instead (online):
``python bench/tofu_hub_export.py --out tofu_hub/`` writes it under the same names, then
``--data tofu_hub/`` (docs/benchmark.md, "TOFU on a real model").
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tofu_data import HUB_DATASET, TofuDataError, build_sets, load_tofu, missing_files  # noqa: E402

METHODS = ("alter", "asymlora", "lora", "ga", "graddiff", "kl", "npo", "npo_retain")
BASE_LR = {"lr": 1e-5, "lr_A": 1e-5, "lr_B": 1e-3, "lr_router": 1e-3}   # the engine's defaults, times k
DEFAULT_MODEL = "smollm2-135m-instruct"
# ../shared/tofu beside the repository (ALTER_TOFU_DATA overrides: a worktree elsewhere)
DEFAULT_DATA = os.environ.get("ALTER_TOFU_DATA") or os.path.join(os.path.dirname(ROOT), "shared", "tofu")
SKIPPED = 3                           # exit status when the TOFU files are absent (a reason is printed)


@dataclasses.dataclass(frozen=True)
class Size:
    forget: str                       # forget01 / forget10
    retain_authors: int | None        # whole retain authors trained on (None: every one not forgotten)
    ft_epochs: int
    ft_lr: float
    un_epochs: int
    grid: tuple                       # learning-rate multipliers k tried on DEV
    max_new_tokens: int
    eval_rows: int | None             # rows of each utility split scored (None: all)
    eval_retain_authors: int          # retain-utility authors (of those trained on)
    shared_retain: bool               # one retain model without both splits' authors
    batch_size: int = 4
    ft_batch: int = 8
    forget_rows: int | None = None    # cap of each forget split (smoke runs)
    dev_rows: int | None = None       # cap of the DEV forget split (default: forget_rows)
    retain_rows: int | None = None
    test_task: str = "1"
    dev_task: str = "2"
    eval_batch: int = 16


SIZES = {
    # sized from one measured step on the shared 2-core CPU (docs/benchmark.md, "TOFU on SmolLM2"): ~45 min
    # on a quiet machine; DEV uses one author (20 rows) of task 2, TEST the whole task 1 (40 rows)
    "cpu": Size("forget01", retain_authors=2, ft_epochs=3, ft_lr=1e-4, un_epochs=1, grid=(5, 50), max_new_tokens=16,
                eval_rows=10, eval_retain_authors=1, shared_retain=True, dev_rows=20),
    # TOFU's protocol: forget10 task 1, retain90, 5 epochs of finetuning; DEV = forget10 task 2
    "gpu": Size("forget10", retain_authors=None, ft_epochs=5, ft_lr=2e-5, un_epochs=5, grid=(1, 3, 10, 30),
                max_new_tokens=200, eval_rows=None, eval_retain_authors=20, shared_retain=False, batch_size=16,
                ft_batch=32, eval_batch=64),
    # a few rows of everything: the pipeline's test (tests/project/test_tofu_real.py)
    "smoke": Size("forget01", retain_authors=1, ft_epochs=1, ft_lr=1e-4, un_epochs=1, grid=(3,), max_new_tokens=4,
                  eval_rows=3, eval_retain_authors=1, shared_retain=True, batch_size=2, ft_batch=4, forget_rows=4,
                  retain_rows=4),
}


def _json(path):
    with open(path) as f:
        return json.load(f)


def _write(path, obj):
    from alter_kernels.common.fsio import ensure_dir, json_safe, write_json
    ensure_dir(os.path.dirname(path))
    write_json(path, json_safe(obj), indent=1)


class Runner:
    def __init__(self, args, size: Size, sets):
        self.args, self.size, self.sets, self.work = args, size, sets, args.work
        self.tok = None
        self.chat = None

    # ------------------------------------------------------------------ models
    def base_path(self) -> str:
        import alter_kernels as ak
        name = self.args.model
        if os.path.isdir(name):
            return name
        resolve = getattr(ak, "resolve_model", None)     # issue 18's loader (alter_kernels/model/load.py)
        if resolve is None:
            raise SystemExit(f"tofu_real: --model {name!r} is not a folder and this alter_kernels has no "
                             "resolve_model (issue 18); pass an HF folder")
        return resolve(name)

    def load(self, path):
        import torch
        from transformers import AutoModelForCausalLM
        self.ensure_tokenizer()
        m = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.args.dtype))
        return m.to(self.args.device).eval()

    def ensure_tokenizer(self):
        if self.tok is None:
            from transformers import AutoTokenizer
            full = self.model_dir("full")
            self.tok = AutoTokenizer.from_pretrained(full if os.path.isdir(full) else self.base_path())
            self.chat = bool(getattr(self.tok, "chat_template", None))

    def model_dir(self, name: str) -> str:
        return os.path.join(self.work, "models", name, "model")

    def train_model(self, name: str, rows: list) -> str:
        """ak.finetune of the base model on ``rows`` into models/<name> (resumed from its checkpoint)."""
        import alter_kernels as ak
        from alter_kernels.unlearn.checkpoint import CHECKPOINT_NAME
        final, out = self.model_dir(name), os.path.join(self.work, "models", name)
        if os.path.isfile(os.path.join(final, "config.json")):
            return final
        s = self.size
        base = self.load(self.base_path())
        resume = os.path.isfile(os.path.join(out, CHECKPOINT_NAME))
        print(f"tofu_real: finetuning {name} on {len(rows)} rows, {s.ft_epochs} epochs"
              f"{' (resumed)' if resume else ''}", flush=True)
        res = ak.finetune(base, rows, self.tok, epochs=s.ft_epochs, batch_size=s.ft_batch, lr=s.ft_lr,
                          warmup_steps=0, checkpoint_every=self.args.checkpoint_every, resume=resume,
                          chat_template=self.chat, eval_each_epoch=False, out_dir=out, progress=True, seed=0)
        _write(os.path.join(out, "summary.json"), {"rows": len(rows), "steps": res.steps, "seconds": res.seconds,
                                                   "last_loss": res.history[-1]["loss"] if res.history else None})
        if not self.args.keep_checkpoints:           # the run is complete; its checkpoint is 3x the weights
            for f in (CHECKPOINT_NAME, "checkpoint.json"):
                if os.path.exists(os.path.join(out, f)):
                    os.remove(os.path.join(out, f))
        return final

    def models(self):
        self.train_model("full", self.sets.finetune)
        for name, rows in self.sets.retain_models.items():
            self.train_model(name, rows)

    # ------------------------------------------------------------------ evaluation
    def fmt(self):
        from alter_kernels.eval import QAFormat
        return QAFormat(chat=self.chat)

    def forget_rows(self, split):
        return self.sets.test_forget if split == "test" else self.sets.dev_forget

    def reference(self, split) -> list:
        path = os.path.join(self.work, "refs", f"{split}.json")
        if os.path.isfile(path):
            return _json(path)["truth_ratios"]
        from alter_kernels.eval import truth_ratios
        name = self.sets.retain_model_of[split]
        m = self.load(self.model_dir(name))
        tr = truth_ratios(m, self.tok, self.forget_rows(split), self.fmt(), self.size.eval_batch)["ratio"].tolist()
        _write(path, {"retain_model": name, "split": split, "truth_ratios": tr})
        return tr

    def evaluate(self, model, split) -> dict:
        from alter_kernels.eval import evaluate_tofu
        s, t0 = self.sets, time.perf_counter()
        res = evaluate_tofu(model, self.tok, self.forget_rows(split), s.retain_eval, s.real_authors, s.world_facts,
                            reference_truth_ratios=self.reference(split), fmt=self.fmt(),
                            batch_size=self.size.eval_batch, max_new_tokens=self.size.max_new_tokens)
        keep = ("forget_quality", "model_utility", "forget_rouge", "retain_rouge", "forget_probability",
                "forget_truth_ratio", "utility_parts")
        out = {k: res.get(k) for k in keep}
        out["fluency"] = fluency(res)
        out["samples"] = {"forget": res["forget"]["generations"][:3], "retain": res["retain"]["generations"][:3]}
        out["eval_seconds"] = time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ cells
    def cell_path(self, split, method, k=None):
        name = f"{method}.json" if k is None else os.path.join(method, f"k{k:g}_s{self.args.seed}.json")
        return os.path.join(self.work, "cells", split, name)

    def model_cell(self, split, which: str) -> dict:
        """The finetuned ('finetuned') or retain ('retain') model's row."""
        path = self.cell_path(split, which)
        if not os.path.isfile(path):
            name = "full" if which == "finetuned" else self.sets.retain_model_of[split]
            _write(path, {"model": name, "split": split, **self.evaluate(self.load(self.model_dir(name)), split)})
        return _json(path)

    def method_cell(self, split, method, k) -> dict:
        import alter_kernels as ak
        path = self.cell_path(split, method, k)
        if os.path.isfile(path):
            return _json(path)
        hp = {n: v * k for n, v in BASE_LR.items()}
        model = self.load(self.model_dir("full"))
        print(f"tofu_real: {split} {method} k={k:g}", flush=True)
        from alter_kernels.unlearn import METHODS as SPECS
        retain = self.sets.retain_train if SPECS[method].needs_retain else None     # ga, npo: no retain term
        res = ak.unlearn(model, [dict(question=r["question"], answer=r["answer"]) for r in self.forget_rows(split)],
                         retain, method=method, tokenizer=self.tok, epochs=self.size.un_epochs,
                         batch_size=self.size.batch_size, seed=self.args.seed, progress=not self.args.quiet,
                         chat_template=self.chat, eval_each_epoch=False, **hp)
        cell = {"method": method, "split": split, "k": k, "hparams": hp, "seed": self.args.seed, "steps": res.steps,
                "train_seconds": res.seconds, "step_seconds": _median([h["seconds"] for h in res.history]),
                "last_loss": res.history[-1]["loss"] if res.history else None, **self.evaluate(model, split)}
        _write(path, cell)
        return cell

    def dev(self):
        ft = self.model_cell("dev", "finetuned")
        selected = {}
        for m in self.args.methods:
            cells = [self.method_cell("dev", m, k) for k in self.size.grid]
            best = max(cells, key=lambda c: (hm(c, ft), c["forget_quality"] or 0.0))
            selected[m] = {"k": best["k"], "hm": hm(best, ft), "grid": {f"{c['k']:g}": hm(c, ft) for c in cells}}
        path = os.path.join(self.work, "selected.json")
        prev = _json(path) if os.path.isfile(path) else {}
        _write(path, {**prev, **selected})

    def test(self):
        self.model_cell("test", "finetuned")
        self.model_cell("test", "retain")
        sel = _json(os.path.join(self.work, "selected.json"))
        for m in self.args.methods:
            if m not in sel:
                raise SystemExit(f"tofu_real: no DEV selection for {m} yet (run --stage dev first)")
            self.method_cell("test", m, sel[m]["k"])


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def fluency(res: dict) -> dict:
    """Fluency (:func:`alter_kernels.eval.fluency.fluency_stats`: repetition, distinct-1/2, mean
    words) of the forget and retain answers pooled; evaluate_tofu's per-split ``fluency_forget`` /
    ``fluency_retain`` are kept beside it when present."""
    from alter_kernels.eval.fluency import fluency_stats
    out = dict(fluency_stats(res["forget"]["generations"] + res["retain"]["generations"]), source="eval.fluency")
    out.update({k: res[k] for k in ("fluency_forget", "fluency_retain") if k in res})
    return out


def hm(cell: dict, ft: dict) -> float:
    from alter_kernels.demo.protocol import hm_score
    fq = cell.get("forget_quality")
    return hm_score(fq if fq is not None else 0.0, cell["model_utility"], ft["model_utility"])


# ---------------------------------------------------------------------------------------- table
COLUMNS = ["model", "k", "FQ", "MU", "MU/MU_ft", "HM", "forget ROUGE", "retain ROUGE", "distinct-2", "repetition",
           "train s"]


def table(runner: Runner) -> tuple[dict, str]:
    """Rows of the TEST table (finetuned, retain, then each method at its DEV-selected k)."""
    ft = runner.model_cell("test", "finetuned")
    cells = [("finetuned", ft), ("retain", runner.model_cell("test", "retain"))]
    sel = _json(os.path.join(runner.work, "selected.json"))
    for m in runner.args.methods:
        path = runner.cell_path("test", m, sel.get(m, {}).get("k", -1))
        if os.path.isfile(path):
            cells.append((m, _json(path)))
    rows = []
    for name, c in cells:
        fl = c.get("fluency", {})
        rows.append({"model": name, "k": c.get("k", "-"), "FQ": c["forget_quality"], "MU": c["model_utility"],
                     "MU/MU_ft": c["model_utility"] / ft["model_utility"] if ft["model_utility"] else None,
                     "HM": hm(c, ft), "forget ROUGE": c["forget_rouge"], "retain ROUGE": c["retain_rouge"],
                     "distinct-2": fl.get("distinct_2"), "repetition": fl.get("repetition", fl.get("repetition_rate_2")),
                     "train s": c.get("train_seconds", "-")})
    return {"rows": rows, "verdict": verdict(rows)}, rows


def verdict(rows: list) -> str:
    """The issue's bar: ALTER FQ >= 0.1 with MU >= 0.9 x finetuned, and the best HM of the methods."""
    by = {r["model"]: r for r in rows}
    a = by.get("alter")
    methods = [r for r in rows if r["model"] in METHODS]
    if a is None or len(methods) < len(METHODS):
        return f"incomplete: {len(methods)} of {len(METHODS)} methods reported"
    best = max(methods, key=lambda r: r["HM"])
    fq, ratio = a["FQ"] or 0.0, a["MU/MU_ft"] or 0.0
    ok = fq >= 0.1 and ratio >= 0.9 and best["model"] == "alter"
    return (f"{'MET' if ok else 'NOT MET'}: ALTER FQ {fq:.3g} (bar 0.1), MU {ratio:.3f} x finetuned (bar 0.9), "
            f"HM {a['HM']:.3g}; best HM {best['model']} {best['HM']:.3g}")


def write_table(runner: Runner, size_name: str) -> str:
    from common import machine, md_table, write_results
    res, rows = table(runner)
    res.update(size=size_name, size_config=dataclasses.asdict(runner.size), sets=runner.sets.report,
               selected=_json(os.path.join(runner.work, "selected.json")), model=runner.args.model,
               machine=machine(), device=runner.args.device)
    md = (f"TOFU on {runner.args.model}, size {size_name} (TEST = {runner.size.forget} task "
          f"{runner.size.test_task}; k selected on DEV task {runner.size.dev_task}); device {runner.args.device}, "
          f"{res['machine'].get('cpu', '?')} ({os.cpu_count()} cores, shared)\n\n" + md_table(rows, COLUMNS) +
          f"\n{res['verdict']}\n")
    stem = os.path.join(runner.args.results, f"tofu_real_{size_name}")
    write_results(stem, res, md)
    print(md)
    return stem


# ----------------------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="cpu")
    p.add_argument("--data", default=DEFAULT_DATA, help="folder with the TOFU files (default: $ALTER_TOFU_DATA, else ../shared/tofu)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="base model: HF folder, hub name or alias")
    p.add_argument("--work", default=None, help="cache folder (default bench/out/tofu_real/<size>)")
    p.add_argument("--results", default=os.path.join(ROOT, "bench", "results"), help="where the table goes")
    p.add_argument("--stage", default="all", choices=["models", "dev", "test", "table", "all"])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--checkpoint-every", type=int, default=20, help="finetuning checkpoint period (steps)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep a finished finetune's checkpoint.pt")
    p.add_argument("--quiet", action="store_true", help="no unlearning progress bars")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        p.error(f"--methods: unknown {bad}; choose from {','.join(METHODS)}")
    args.work = args.work or os.path.join(ROOT, "bench", "out", "tofu_real", args.size)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    missing = missing_files(args.data)
    if missing:
        print(f"tofu_real: SKIPPED: the TOFU files are not in {args.data} (missing {', '.join(missing)}); pass --data, "
              f"or export the hub dataset {HUB_DATASET} as docs/benchmark.md shows", file=sys.stderr)
        return SKIPPED
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = SIZES[args.size]
    try:
        sets = build_sets(load_tofu(args.data), size)
    except TofuDataError as exc:
        print(f"tofu_real: error: {exc}", file=sys.stderr)
        return 1
    _write(os.path.join(args.work, "sets.json"), sets.report)
    print("tofu_real: " + json.dumps(sets.report), flush=True)
    r = Runner(args, size, sets)
    if args.stage in ("models", "dev", "test", "all"):
        r.models()
    r.ensure_tokenizer()
    if args.stage in ("dev", "all"):
        r.dev()
    if args.stage in ("test", "all"):
        r.test()
    if args.stage in ("table", "all"):
        write_table(r, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
