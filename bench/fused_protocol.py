"""The benchmark protocol's TEST cells, fused LM-head losses against materialised logits (issue 16).

bench/sweep.py's TEST cells (corpus seeds 0, 1, 2; each method at its DEV-selected learning
rates; 3 epochs) were computed with materialised logits (``fused_loss`` did not exist yet; with
``fused_loss="off"`` the engine reproduces them exactly). This runs the same cells with the
engine's default ``fused_loss="auto"`` and tabulates both side by side, so a change in the
methods' results from the fused path would show on the protocol rather than on one demo run.

    python bench/fused_protocol.py [--methods alter,asymlora,lora] [--seeds 0,1,2] [--check-off]

--check-off also re-runs each cell with fused_loss="off" (it must equal the cached cell). Times are
not compared: the cached cells ran on a machine shared with other jobs. Cells are cached in bench/results/sweep/full_fused_cells.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import md_table, write_results  # noqa: E402
from bench.sweep import OUT_DIR, Seed, load_cells, run_cell  # noqa: E402
from alter_kernels.common.fsio import write_json  # noqa: E402
from alter_kernels.demo import method_hparams  # noqa: E402

CACHE = os.path.join(OUT_DIR, "full_fused_cells.json")


def selected_k(cells: dict, seed: int, method: str):
    keys = [k for k in cells if k.startswith(f"{seed}|{method}|")]
    if len(keys) != 1:
        raise SystemExit(f"expected one TEST cell of {method} on seed {seed} in the sweep cache, found {keys}")
    return keys[0].split("|")[2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="alter,asymlora,lora")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--check-off", action="store_true")
    args = ap.parse_args(argv)
    cells = load_cells("full")
    fused = {}
    if os.path.exists(CACHE):
        import json
        with open(CACHE) as f:
            fused = json.load(f)
    rows = []
    for seed in (int(x) for x in args.seeds.split(",")):
        s = Seed("full", seed, cells)
        for m in args.methods.split(","):
            k = selected_k(cells, seed, m)
            base = cells[f"{seed}|{m}|{k}"]
            for mode in ("auto",) + (("off",) if args.check_off else ()):
                key = f"{seed}|{m}|{k}|{mode}"
                if key not in fused:
                    hp = dict(method_hparams(m, float(k)), fused_loss=mode)
                    fused[key] = run_cell(s, m, hp)
                    write_json(CACHE, fused)
                c = fused[key]
                print(f"seed {seed} {m} x{k} fused_loss={mode}: HM {c['hm']:.3f} (materialised cache "
                      f"{base['hm']:.3f})", flush=True)
                rows.append({"seed": seed, "method": m, "k": k, "fused_loss": mode, "fq": c["fq"], "mu": c["mu"],
                             "hm": c["hm"], "hm_materialised": base["hm"], "fq_materialised": base["fq"],
                             "mu_materialised": base["mu"]})
    summary = []
    for m in args.methods.split(","):
        r = [x for x in rows if x["method"] == m and x["fused_loss"] == "auto"]
        summary.append({"method": m, "hm_fused_mean": statistics.mean(x["hm"] for x in r),
                        "hm_materialised_mean": statistics.mean(x["hm_materialised"] for x in r),
                        "mu_fused_mean": statistics.mean(x["mu"] for x in r),
                        "mu_materialised_mean": statistics.mean(x["mu_materialised"] for x in r)})
    table = md_table(rows, ["seed", "method", "k", "fused_loss", "fq", "fq_materialised", "mu", "mu_materialised",
                            "hm", "hm_materialised"])
    table += "\n\n" + md_table(summary, list(summary[0]))
    desc = ("TEST cells of bench/sweep.py (full preset, DEV-selected learning rates, 3 epochs): fused LM-head "
            "losses (fused_loss='auto') against the cached materialised cells")
    print(table)
    print("wrote", *write_results(os.path.join(OUT_DIR, "fused_vs_materialised"),
                                  {"config": desc, "rows": rows, "summary": summary}, desc + "\n\n" + table))


if __name__ == "__main__":
    main()
