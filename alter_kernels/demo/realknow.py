"""``python -m alter_kernels.demo --model smollm2-135m-instruct``: the real-knowledge benchmark
(:mod:`alter_kernels.realknow`) at its small size on a pretrained chat model, with ALTER and the
strongest baselines: before/after answers, the table and a plot of neighbour accuracy against
forget accuracy on held-out wordings.

Each method runs at the lr scale the benchmark's DEV selection chose when ``<out>/selection.json``
of a benchmark run is given (``--realknow-selection``), else at the engine's default rates (x1).
Cells are cached under ``<out>/cells`` like the benchmark's, so a rerun is instant.
"""
from __future__ import annotations

import json
import os
import time

DEMO_METHODS = ("alter", "asymlora", "npo_retain", "graddiff")


def _plot(rows: dict, path_base: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from ..common.fsio import atomic_write
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, agg in rows.items():
        x, y = agg["forget_heldout"]["mean"], agg["neighbour"]["mean"]
        if x is None or y is None:
            continue
        ax.scatter([x], [y], marker="*" if name.startswith("alter") else "o", s=70, zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("forget accuracy, held-out wordings (lower is better)")
    ax.set_ylabel("held-out neighbour accuracy")
    ax.set_title("SmolLM2-135M-Instruct: real-knowledge unlearning")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = path_base + ".png"
    atomic_write(path, writer=lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
    return path


def _print_answers(bp, cells: dict, k: int = 3) -> None:
    fam = bp["rows"]
    shown = fam["forget"][:k] + [r for r in fam["probes"] if r["kind"] == "indirect"][:1] + fam["neighbour"][:1]
    for r in shown:
        print(f"\nQ ({r['kind']}): {r['question']}")
        print(f"   base      : {bp['base']['answers'][r['id']]['answer']!r}")
        for name, c in cells.items():
            print(f"   {name:<10}: {c['answers'][r['id']]['answer']!r}")
    print(f"\nopen prompt: {fam['open_forget'][0]}")
    print(f"   base      : {bp['base']['open_forget'][0]!r}")
    for name, c in cells.items():
        print(f"   {name:<10}: {c['open_forget'][0]!r}")


def run_realknow_demo(model_name: str, out: str, methods=DEMO_METHODS, family: str = "capitals", seed: int = 0,
                      selection: str | None = None) -> int:
    from ..realknow.bench import SIZES, base_pass, cell_path, load_base, run_cell
    from ..realknow.cli import write_results
    t0 = time.perf_counter()
    size = SIZES["small"]
    sel = {}
    if selection:
        with open(selection, encoding="utf-8") as fh:
            sel = json.load(fh).get("selected", {})
    print(f"== real-knowledge demo: {model_name}, family {family}, {size['forget']} forget facts")
    model, tok = load_base(model_name)
    bp = base_pass(model, tok, family, size, cell_path(out, family, "base", 1.0, 0))
    print(f"base model knows {bp['rows']['n_known']}/{bp['rows']['n_total']} facts of the family "
          f"({time.perf_counter() - t0:.0f}s)")
    cells = {}
    for m in methods:
        scale = float(sel.get(m, 1.0))
        c = run_cell(model, tok, bp, m, scale, seed, size, out, routing=False)
        cells[m] = c
        print(f"-- {m} x{scale:g}: train {c['train_seconds']:.0f}s, eval {c['eval_seconds']:.0f}s", flush=True)
    res = write_results(out, bp, {f"{m} x{c['scale']:g}": [c] for m, c in cells.items()},
                        {"role": "demo", "size": "small", "seeds": [seed], "model": model_name})
    _print_answers(bp, cells)
    with open(os.path.join(out, family, "table.md"), encoding="utf-8") as fh:
        print("\n" + fh.read())
    plot = _plot(res["rows"], os.path.join(out, family, "forget_vs_neighbour"))
    print(f"wrote {os.path.join(out, family)} (results.json, table.md{', plot' if plot else ''}) "
          f"in {time.perf_counter() - t0:.0f}s")
    return 0
