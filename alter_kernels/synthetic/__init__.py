"""The synthetic benchmark: a seeded fictitious-author corpus in TOFU format (:mod:`.corpus`), its
tokenizer (:mod:`.tokenizer`), two tiny Llama models trained from scratch on it, "finetuned" and
"retain" (:mod:`.inject`, cached), and the utility-vs-forget-quality plot (:mod:`.plot`).
The demo and its protocol (DEV / TEST seeds, selected hyper-parameters) are
in :mod:`alter_kernels.demo`. docs/benchmark.md.
"""
