"""Write the hub dataset ``locuslab/TOFU`` (online, needs ``pip install datasets``) as the files
bench/tofu_real.py reads: JSON lines under the names of ``../shared/tofu``, with ``task_id`` groups.

    python bench/tofu_hub_export.py --out tofu_hub/ && python bench/tofu_real.py --size cpu --data tofu_hub/

The hub keeps one split per config (no task_id groups): its ``forget01`` is authors 198-199,
``forget05`` 190-199, ``forget10`` 180-199 (the last authors of TOFU's order). Here task "1" of
each forget file is the hub's split; task "2" of ``forget01_perturbed.json`` (the DEV split) is
the first two authors of ``forget05`` that are not in ``forget01`` (authors 190-191). The hub has
no second forget10-sized split with perturbed answers, so ``--size gpu`` needs the task-grouped
files (TOFU's own repository layout, as in ``../shared/tofu``). Written offline-untested: the
development machine has no network; the layout checks of bench/tofu_data.py run on what it writes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tofu_data import HUB_DATASET  # noqa: E402

COPIES = ("retain90", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")


def _hub(config: str) -> list[dict]:
    from datasets import load_dataset
    return [dict(r) for r in load_dataset(HUB_DATASET, config, split="train")]


def _write(path: str, rows: list[dict]) -> None:
    from alter_kernels.common.fsio import atomic_write
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to write the files into (created)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    key = lambda r: (r["question"], r["answer"])          # noqa: E731
    f01 = _hub("forget01_perturbed")
    f01_keys = {key(r) for r in f01}
    dev = [r for r in _hub("forget05_perturbed") if key(r) not in f01_keys][:len(f01)]
    _write(os.path.join(args.out, "forget01_perturbed.json"),
           [{**r, "task_id": "1"} for r in f01] + [{**r, "task_id": "2"} for r in dev])
    for name in ("forget10", "forget10_perturbed"):
        _write(os.path.join(args.out, f"{name}.json"), [{**r, "task_id": "1"} for r in _hub(name)])
    for name in COPIES:
        _write(os.path.join(args.out, f"{name}.json"), _hub(name))
    print(f"tofu_hub_export: wrote {HUB_DATASET} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
