"""``python -m alter_kernels.realknow``: the real-knowledge benchmark, resumable.

Stages: the base pass of both families, the DEV grid (every method at every lr scale, seed 0),
the DEV selection, then the TEST seeds at each method's selected scale. Every cell is cached;
a rerun with the same ``--out`` skips what is done, and results are rewritten after each cell.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from .bench import GRID, METHODS, SEEDS, SIZES, base_pass, cell_path, load_base, metrics, run_cell, write_json
from .report import SELECTION, aggregate, flat, markdown_table, routing_table, selection_score

DEFAULT_OUT = os.path.join("bench", "results", "realknow")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m alter_kernels.realknow", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="results folder (cells are cached under OUT/cells)")
    ap.add_argument("--size", choices=sorted(SIZES), default="full", help="forget facts / open prompts per family")
    ap.add_argument("--dev", default="books", help="the family that selects the lr scale")
    ap.add_argument("--test", default="capitals", help="the family that is reported")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--grid", default=",".join(f"{g:g}" for g in GRID), help="lr scales tried on DEV")
    ap.add_argument("--grid-for", action="append", default=[], metavar="METHOD=S1,S2",
                    help="another DEV grid for one method (repeatable), e.g. alter_answer_keys_frozen=1,3")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="TEST training seeds")
    ap.add_argument("--stage", choices=("base", "dev", "test", "all"), default="all",
                    help="base: only the base passes, then rewrite the results from the cached cells")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--max-cells", type=int, default=None, help="stop after this many new cells")
    return ap


def _row_label(method, scale):
    return f"{method} x{scale:g}"


def write_results(out, bp, cells: dict, info: dict) -> dict:
    """cells: {label: [cell, ...]}; writes OUT/<family>/results.json and table.md."""
    base_m = metrics(bp, bp["base"])
    rows = {"base": aggregate([{**flat(base_m), "train_seconds": 0.0}])}
    detail = {}
    for label, cs in cells.items():
        ms = [metrics(bp, c) for c in cs]
        rows[label] = aggregate([{**flat(m), "train_seconds": c["train_seconds"]} for m, c in zip(ms, cs)])
        detail[label] = {"seeds": [c["seed"] for c in cs], "scale": cs[0]["scale"],
                         "selection_score": [selection_score(m, base_m) for m in ms],
                         "eval_seconds": [c["eval_seconds"] for c in cs],
                         "examples": _examples(bp, cs[0])}
    fam = bp["family"]
    res = {"family": fam, "machine": "2-core shared CPU (other jobs running)", **info,
           "known_facts": {"known": bp["rows"]["n_known"], "total": bp["rows"]["n_total"]},
           "n_items": base_m["n"], "n_items_total": base_m["n_total"], "selection_score": SELECTION,
           "rows": rows, "detail": detail, "base_examples": _examples(bp, bp["base"])}
    d = os.path.join(out, fam)
    os.makedirs(d, exist_ok=True)
    write_json(os.path.join(d, "results.json"), res)
    md = (f"# Real-knowledge benchmark, family `{fam}` ({info.get('role', '')})\n\nSmolLM2-135M-Instruct, "
          f"2-core shared CPU. Known facts {bp['rows']['n_known']}/{bp['rows']['n_total']}; accuracies over "
          f"items the base model answers (n per column in results.json). Mean±std over seeds.\n\n"
          + markdown_table(rows) + "\n")
    rt = routing_table(rows)
    if rt:
        md += ("\nRouting: share of base-known rows (prompt and the base model's answer, teacher-forced) on "
               "which some position goes to a forget expert (first patched layer, weight > 0.5).\n\n" + rt + "\n")
    from ..common.fsio import atomic_write
    atomic_write(os.path.join(d, "table.md"), md)
    return res


def _examples(bp, ev, k: int = 4) -> dict:
    fam = bp["rows"]
    ids = [r["id"] for r in fam["forget"][:k]] + [r["id"] for r in fam["probes"] if r["kind"] == "indirect"][:2]
    return {"qa": {i: ev["answers"][i]["answer"] for i in ids}, "open_forget": ev["open_forget"][:3],
            "open_retain": ev["open_retain"][:2]}


def _select(out, bp_dev, methods, grids: dict) -> dict:
    """Each method's scale with the best DEV score over its grid (needs every grid cell); {method: scale}."""
    from .bench import _load_cell
    base_m = metrics(bp_dev, bp_dev["base"])
    sel, scores = {}, {}
    for m in methods:
        cs = [_load_cell(cell_path(out, bp_dev["family"], m, g, 0)) for g in grids[m]]
        if any(c is None for c in cs):
            continue
        sc = {g: selection_score(metrics(bp_dev, c), base_m) for g, c in zip(grids[m], cs)}
        scores[m] = sc
        sel[m] = max(sorted(grids[m]), key=lambda g: (sc[g], -g))
    write_json(os.path.join(out, "selection.json"),
               {"rule": SELECTION, "grid": sorted({g for m in methods for g in grids[m]}),
                "grids": {m: list(grids[m]) for m in methods}, "selected": sel,
                "scores": {m: {f"{g:g}": v for g, v in s.items()} for m, s in scores.items()}})
    return sel


def _grids(methods, grid, grid_for) -> dict:
    """{method: its DEV grid}: ``grid``, or the one ``--grid-for METHOD=S1,S2`` gives."""
    out = {m: list(grid) for m in methods}
    for spec in grid_for:
        m, sep, vals = spec.partition("=")
        if not sep or m not in out:
            raise SystemExit(f"--grid-for: expected METHOD=S1,S2 with METHOD in --methods, got {spec!r}")
        try:
            out[m] = [float(g) for g in vals.split(",") if g]
        except ValueError:
            raise SystemExit(f"--grid-for: scales must be numbers, got {vals!r}") from None
        if not out[m] or any(not g > 0 for g in out[m]):
            raise SystemExit(f"--grid-for: expected positive scales, got {vals!r}")
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    grid = [float(g) for g in args.grid.split(",") if g]
    grids = _grids(methods, grid, args.grid_for)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    size = SIZES[args.size]
    out = os.path.join(args.out, args.size) if args.size != "full" else args.out
    t0 = time.perf_counter()
    model, tok = load_base()
    print(f"loaded the base model in {time.perf_counter() - t0:.0f}s", flush=True)
    bps = {}
    for fam in (args.dev, args.test):
        t = time.perf_counter()
        bps[fam] = base_pass(model, tok, fam, size, cell_path(out, fam, "base", 1.0, 0))
        print(f"base pass {fam}: {bps[fam]['rows']['n_known']}/{bps[fam]['rows']['n_total']} facts known "
              f"({time.perf_counter() - t:.0f}s)", flush=True)
    budget = [args.max_cells]

    def cell(fam, m, g, s):
        fresh = not os.path.exists(cell_path(out, fam, m, g, s))
        if fresh and budget[0] is not None:
            if budget[0] <= 0:
                return None
            budget[0] -= 1
        t = time.perf_counter()
        c = run_cell(model, tok, bps[fam], m, g, s, size, out)
        if fresh:
            print(f"cell {fam} {m} x{g:g} seed {s}: train {c['train_seconds']:.0f}s eval {c['eval_seconds']:.0f}s "
                  f"(total {time.perf_counter() - t:.0f}s)", flush=True)
        return c

    info = {"size": args.size, "epochs": size["epochs"], "methods": methods, "grid": grid, "seeds": seeds,
            "grids": grids}
    if args.stage in ("dev", "all"):
        for g in sorted({x for m in methods for x in grids[m]}, key=lambda x: (x != 1.0, x)):
            for m in methods:
                if g in grids[m]:
                    cell(args.dev, m, g, 0)
                    _write_dev(out, bps[args.dev], methods, grids, {**info, "role": "DEV"})
    sel = _select(out, bps[args.dev], methods, grids)
    missing = [m for m in methods if m not in sel]
    if args.stage in ("test", "all"):
        if missing:
            print(f"no DEV selection yet for {missing} (DEV grid incomplete); their TEST cells wait", file=sys.stderr)
        for s in seeds:
            for m in methods:
                if m in sel and cell(args.test, m, sel[m], s) is not None:
                    _write_test(out, bps[args.test], sel, seeds, {**info, "role": "TEST", "selected": sel})
    _write_dev(out, bps[args.dev], methods, grids, {**info, "role": "DEV"})
    _write_test(out, bps[args.test], sel, seeds, {**info, "role": "TEST", "selected": sel})
    print(f"done in {time.perf_counter() - t0:.0f}s; results under {out}", flush=True)
    return 0


def _write_dev(out, bp, methods, grids, info):
    from .bench import _load_cell
    cells = {_row_label(m, g): [c] for m in methods for g in grids[m]
             if (c := _load_cell(cell_path(out, bp["family"], m, g, 0))) is not None}
    write_results(out, bp, cells, info)


def _write_test(out, bp, sel, seeds, info):
    from .bench import _load_cell
    cells = {}
    for m, g in sel.items():
        cs = [c for s in seeds if (c := _load_cell(cell_path(out, bp["family"], m, g, s))) is not None]
        if cs:
            cells[_row_label(m, g)] = cs
    write_results(out, bp, cells, info)
