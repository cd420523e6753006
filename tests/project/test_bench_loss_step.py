"""bench/loss_step.py at tiny shapes, in the default suite: it calls the engine's method losses
directly (``METHODS[m].loss``), so an engine API change breaks it first. Session 4's CI went red
on exactly that (a dict where ``UnlearnOptions`` is expected), which only the heavy
gpu_check dry run noticed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_loss_step_runs_every_method_variant_at_tiny_shapes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "loss_step.py"), "--vocab", "300",
                          "--hidden", "32", "--batch", "2", "--seq", "16", "--iters", "1", "--threads", "1",
                          "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    with open(tmp_path / "loss_step.json", encoding="utf-8") as fh:
        rows = json.load(fh)["rows"]
    seen = {(r["method"], r["variant"]) for r in rows}
    for m in ("alter", "npo"):
        assert {(m, "backbone"), (m, "materialised"), (m, "fused")} <= seen, sorted(seen)
    assert all(r["step_s"] > 0 for r in rows if "/" not in r["variant"])
