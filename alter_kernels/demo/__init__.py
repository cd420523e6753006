"""End-to-end demo: ALTER and every baseline on the embedded fictitious-author benchmark.

    python -m alter_kernels.demo [--quick] [--out DIR]

Builds (first run) or loads (cached) the tokenizer and the two tiny Llama models
(:mod:`alter_kernels.synthetic`), unlearns the forget10 split from the "finetuned" model with
ALTER and each baseline (same data, same epochs), evaluates every model TOFU-style against the
"retain" model, prints the table and a few generations, and writes ``results.json`` and a plot of
model utility against forget quality into ``--out`` (default ``./alter_demo``). See
docs/benchmark.md.

Modules: :mod:`.methods` (the methods, their hyper-parameters, the call into ``ak.unlearn``),
:mod:`.protocol` (DEV / TEST seeds, the retain evaluation subset, the DEV-selected
hyper-parameters in ``selected_hparams.json``), :mod:`.run` (the steps of a run),
:mod:`.report` (table, generations, results), :mod:`.docs_table` (the demo table of docs/benchmark.md).
"""
from .methods import BASE_LR, LAST_RUN, LR_SCALE, METHODS, method_hparams, run_method
from .protocol import retain_eval_subset
from .report import format_table
from .run import EVAL_MAX_NEW_TOKENS, build_parser, main

__all__ = ["BASE_LR", "EVAL_MAX_NEW_TOKENS", "LAST_RUN", "LR_SCALE", "METHODS", "build_parser", "format_table",
           "main", "method_hparams", "retain_eval_subset", "run_method"]
