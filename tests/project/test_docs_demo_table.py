"""The docs' demo table is the committed results.json, regenerated (issue 27), and the demo's
report reads: an HM column, a line naming the winner and its margin, labels that do not overlap."""
import copy
import json

import pytest

from alter_kernels.demo.docs_table import BEGIN, DOCS_PATH, END, RESULTS_PATH, render_docs
from alter_kernels.demo.report import format_table, hm_scores, markdown_table, winner_line


def _results():
    with open(RESULTS_PATH) as f:
        return json.load(f)


def test_docs_demo_table_equals_the_committed_results_json():
    with open(DOCS_PATH) as f:
        text = f.read()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    block = text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip("\n")
    assert block == markdown_table(_results()), (
        "docs/benchmark.md's demo table differs from bench/results/demo/results.json: "
        "run `python -m alter_kernels.demo.docs_table`")


def test_the_block_follows_the_numbers():
    res = _results()
    page = f"intro\n{BEGIN}\nold\n{END}\nrest\n"
    out = render_docs(page, res)
    assert out.startswith(f"intro\n{BEGIN}\n") and out.endswith(f"\n{END}\nrest\n") and "old" not in out
    changed = copy.deepcopy(res)
    changed["methods"]["alter"]["model_utility"] = 0.123
    assert "| alter |" in out and render_docs(page, changed) != out and "| 0.123 |" in render_docs(page, changed)
    with pytest.raises(ValueError, match="no demo-table block"):
        render_docs("no markers here", res)


def test_hm_column_and_winner_line():
    table = {"finetuned": {"forget_quality": 1e-7, "model_utility": 0.8, "forget_rouge": 1, "retain_rouge": 1,
                           "seconds": 1},
             "a": {"forget_quality": 0.5, "model_utility": 0.4, "forget_rouge": 0.1, "retain_rouge": 0.9, "seconds": 2},
             "b": {"forget_quality": 0.9, "model_utility": 0.8, "forget_rouge": 0.1, "retain_rouge": 0.9, "seconds": 2}}
    scores = hm_scores(table)
    assert scores["a"] == pytest.approx(0.5) and scores["b"] == pytest.approx(2 * 0.9 / 1.9)
    lines = format_table(table, scores).splitlines()
    assert lines[0].split()[-2:] == ["HM", "seconds"]
    assert lines[2].split()[-1] == "1.0" and lines[4].split()[-2] == f"{scores['b']:.3f}"   # finetuned: no HM
    line = winner_line(table, scores)
    assert line.startswith(f"best HM: b {scores['b']:.3f}, ahead of a 0.500 by {round(scores['b'], 3) - 0.5:.3f}")


def test_plot_labels_do_not_overlap(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alter_kernels.synthetic.plot import place_labels
    # the committed run (asymlora sits next to retain) plus two points on top of each other
    pts = [(n, max(m["forget_quality"], 1e-300), m["model_utility"]) for n, m in _results()["methods"].items()]
    pts += [("near_a", 0.5, 0.3), ("near_b", 0.52, 0.3)]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.scatter([p[1] for p in pts], [p[2] for p in pts])
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)
    boxes = place_labels(fig, ax, pts)
    plt.close(fig)
    overlaps = [(pts[i][0], pts[j][0]) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    assert not overlaps


# ------------------------------------------------------------- fluency in the demo and in selection (issue 24)
def test_selection_score_equals_hm_when_fluent_and_drops_for_a_loop():
    from alter_kernels.demo.protocol import hm_score, selection_score
    from alter_kernels.eval.fluency import repetition_rate
    fq, mu, mu_ft = 0.6, 0.7, 0.8
    hm = hm_score(fq, mu, mu_ft)
    assert selection_score(fq, mu, mu_ft, score="hm") == hm
    assert selection_score(fq, mu, mu_ft, 0.05, 0.05) == pytest.approx(hm)          # fluency ratio 1
    assert selection_score(fq, mu, mu_ft, 0.0, 0.2) == pytest.approx(hm)            # capped at 1
    loop = repetition_rate(["his his his his his his his his his his his his his his his his his his his his"])
    assert loop > 0.9 and selection_score(fq, mu, mu_ft, loop, 0.05) < 0.1 * hm    # a loop: ~0
    assert selection_score(fq, mu, mu_ft, 0.525, 0.05) == pytest.approx(hm / 2)    # half the retain's fluency
    with pytest.raises(ValueError, match="repetition"):
        selection_score(fq, mu, mu_ft)
    with pytest.raises(ValueError, match="score must be"):
        selection_score(fq, mu, mu_ft, 0.1, 0.1, score="hm3")


def _row(fq, mu, rep=None, deg=None):
    r = {"forget_quality": fq, "model_utility": mu, "forget_rouge": 0.1, "retain_rouge": 0.9, "seconds": 1.0}
    return r if rep is None else dict(r, forget_repetition=rep, forget_degenerate=deg)


def test_demo_table_shows_forget_repetition_and_degenerate_share():
    from alter_kernels.demo.report import fluency_scores
    table = {"finetuned": _row(1e-7, 0.8, 0.0, 0.0), "retain": _row(1.0, 0.8, 0.1, 0.05),
             "loop": _row(0.9, 0.8, 0.91, 0.75), "fluent": _row(0.5, 0.4, 0.1, None)}
    scores = hm_scores(table)
    lines = format_table(table, scores).splitlines()
    assert lines[0].split()[-7:] == ["retain", "ROUGE-L", "forget", "rep.", "degenerate", "HM", "seconds"]
    assert lines[4].split()[-4:-2] == ["0.910", "0.750"] and lines[5].split()[-4:-2] == ["0.100", "n/a"]
    fs = fluency_scores(table)
    assert fs["fluent"] == pytest.approx(scores["fluent"]) and fs["loop"] == pytest.approx(scores["loop"] * 0.1)
    res = {"methods": table, "hm_fq_utility_ratio": scores, "benchmark": {}}
    md = markdown_table(res).splitlines()
    assert md[0].endswith("| retain ROUGE-L | forget repetition | degenerate | HM |")
    assert md[4] == f"| loop | 0.9 | 0.800 | 0.100 | 0.900 | 0.910 | 0.750 | {scores['loop']:.3f} |"
    assert "above the 95% quantile of the retain model's repetition" in markdown_table(res)
    old = {"methods": {n: _row(m["forget_quality"], m["model_utility"]) for n, m in table.items()},
           "hm_fq_utility_ratio": scores, "benchmark": {}}
    assert markdown_table(old).splitlines()[0].endswith("| retain ROUGE-L | HM |")   # older results: same table


def test_sweep_selects_by_hm_fluency_and_refuses_cells_without_fluency(monkeypatch):
    import os
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(DOCS_PATH)), "bench"))
    import sweep
    dev = sweep.DEV_SEED
    lo, hi = sweep.GRID[0], sweep.GRID[-1]
    cells = {f"{dev}|reference": {"mu_ft": 0.8, "forget_repetition_retain": 0.05},
             f"{dev}|alter|{lo}": {"k": lo, "fq": 0.5, "mu": 0.7, "hm": 0.0, "forget_repetition": 0.06},
             f"{dev}|alter|{hi}": {"k": hi, "fq": 0.9, "mu": 0.8, "hm": 0.0, "forget_repetition": 0.95}}
    assert sweep.select("full", cells, "hm")["alter"]["k"] == hi               # the loop wins on HM alone
    chosen = sweep.select("full", cells)["alter"]
    assert chosen["k"] == lo and chosen["score"] == "hm_fluency"              # the fluent one with fluency
    del cells[f"{dev}|alter|{lo}"]["forget_repetition"]
    with pytest.raises(SystemExit, match="--score hm"):
        sweep.select("full", cells)


def test_sweep_retrain_row(monkeypatch):
    """The gold-standard row: mean over the TEST seeds with a retrain cell, scored like a method."""
    import os
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(DOCS_PATH)), "bench"))
    import sweep
    a, b = sweep.TEST_SEEDS[:2]
    cells = {f"{a}|reference": {"mu_ft": 0.8, "forget_repetition_retain": 0.0},
             f"{b}|reference": {"mu_ft": 0.5, "forget_repetition_retain": 0.0}}
    assert sweep.retrain_line(cells, "hm") is None
    cells[f"{a}|retrain"] = {"fq": 0.8, "mu": 0.8, "hm": 0.0, "forget_repetition": 0.0}
    cells[f"{b}|retrain"] = {"fq": 0.4, "mu": 0.25, "hm": 0.0, "forget_repetition": 0.5}
    row = [x.strip() for x in sweep.retrain_line(cells, "hm_fluency").strip("|").split("|")]
    assert row[0] == sweep.RETRAIN_ROW and row[2] == "2"
    assert row[3].startswith("0.600 ±") and row[5].startswith("0.750 ±")       # FQ, MU / finetuned
    hmf_a = 2 * 0.8 * 1.0 / (0.8 + 1.0)                                        # HM(FQ, MU ratio), fluent
    hmf_b = 2 * 0.4 * 0.5 / (0.4 + 0.5) * 0.5                                  # halved by the repetition
    assert row[7].startswith(f"{(hmf_a + hmf_b) / 2:.3f} ±")
