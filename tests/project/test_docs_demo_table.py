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
