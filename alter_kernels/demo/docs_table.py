"""The demo table of docs/benchmark.md, made from the committed demo run (issue 27: docs that are
regenerated, not retyped):

    python -m alter_kernels.demo.docs_table [--results bench/results/demo/results.json]
                                            [--docs docs/benchmark.md] [--check]

rewrites the block between BEGIN and END in the docs page with :func:`.report.markdown_table`
(``--check``: exit 1 when it differs, writing nothing); tests/project/test_docs_demo_table.py
runs the same comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .report import markdown_table

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS_PATH = os.path.join(_ROOT, "bench", "results", "demo", "results.json")    # the committed demo run
DOCS_PATH = os.path.join(_ROOT, "docs", "benchmark.md")
BEGIN = ("<!-- demo-table: generated from bench/results/demo/results.json by `python -m alter_kernels.demo.docs_table`; "
         "do not edit by hand -->")
END = "<!-- /demo-table -->"


def render_docs(text: str, results: dict) -> str:
    """``text`` with the block between BEGIN and END replaced by :func:`markdown_table`."""
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"the docs page has no demo-table block ({BEGIN!r} ... {END!r})")
    return text[:i + len(BEGIN)] + "\n" + markdown_table(results) + "\n" + text[j:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alter_kernels.demo.docs_table",
                                 description="Rewrite the docs' demo table from a results.json.")
    ap.add_argument("--results", default=RESULTS_PATH, help="results.json of a demo run")
    ap.add_argument("--docs", default=DOCS_PATH, help="the docs page holding the demo-table block")
    ap.add_argument("--check", action="store_true", help="exit 1 if the page differs, write nothing")
    args = ap.parse_args(argv)
    from ..common.fsio import atomic_write
    with open(args.results) as f:
        results = json.load(f)
    with open(args.docs) as f:
        text = f.read()
    try:
        new = render_docs(text, results)
    except ValueError as exc:
        print(f"{ap.prog}: error: {args.docs}: {exc}", file=sys.stderr)
        return 2
    if new == text:
        print(f"{args.docs}: demo table up to date")
        return 0
    if args.check:
        print(f"{args.docs}: the demo table differs from {args.results}; run {ap.prog}", file=sys.stderr)
        return 1
    atomic_write(args.docs, new)
    print(f"{args.docs}: demo table rewritten from {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
