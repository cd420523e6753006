"""scripts/gpu_check.sh --dry-run (issue 15): the GPU script runs end to end on the CPU (tiny shapes,
C++ and Triton-interpreter backends, no build), so it cannot rot while no GPU is at hand.

The full dry run takes about a minute on an idle 2-core machine (most of it python + torch +
transformers start-up, once per step).
"""
from __future__ import annotations

import json
import os
import subprocess
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
STEPS = ["env", "build", "tests", "tsallis", "lm_head", "asym_lora", "train_step", "decode", "losses"]


def _run(args, timeout):
    env = dict(os.environ)
    env.pop("OUT", None)                      # the device tool's output variable: not here
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(["bash", SCRIPT] + args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


@pytest.mark.heavy
def test_dry_run_every_step_passes(tmp_path):
    out = str(tmp_path / "out")
    # a generous budget: a loaded CI machine must not turn slowness into skipped steps
    res = _run(["--dry-run", "--out", out, "--pack", "--budget", "1200"], timeout=1500)
    log = res.stdout[-6000:] + res.stderr[-3000:]
    assert res.returncode == 0, log
    s = _summary(out)
    assert s["dry_run"] and s["all_steps_passed"], log
    assert [st["step"] for st in s["steps"]] == STEPS
    assert all(st["status"] == "pass" for st in s["steps"]), s["steps"]
    assert "every step passed" in res.stdout
    # every target has a figure (not judged in a dry run) and names the machine's versions
    assert s["targets"] and all(t["measured"] is not None and t["status"] == "dry run" for t in s["targets"]), \
        s["targets"]
    checks = " ".join(t["check"] for t in s["targets"])
    for what in ("tsallis_entropy", "lm_head_entropy", "asym_lora", "training step", "decoding"):
        assert what in checks
    assert s["torch"] and s["device"]
    # what the device tool brings back: at most 8 plain files, no deeper than 2 folders
    assert sorted(os.listdir(out)) == ["gpu_check.log", "gpu_check_results.tar.gz", "summary.json", "summary.md"]
    with tarfile.open(os.path.join(out, "gpu_check_results.tar.gz")) as tar:
        names = set(tar.getnames())
    for f in ("detail/steps.tsv", "detail/tests_junit.xml", "detail/tsallis/entropy.json", "detail/tsallis/entropy.md",
              "detail/lm_head/entropy.json", "detail/asym_lora/asym_lora_cpu.json", "detail/decode/decode.json",
              "detail/train_step/train_step_tiny.json", "detail/tests.log"):
        assert f in names, sorted(names)
    with open(os.path.join(out, "summary.md")) as f:
        md = f.read()
    assert "DRY RUN" in md and "| tests | pass |" in md


def test_budget_guard_and_step_selection(tmp_path):
    """Steps without time left are skipped (and fail the run); --steps picks steps; the summary
    still runs and says so."""
    out = str(tmp_path / "out")
    res = _run(["--dry-run", "--out", out, "--budget", "0", "--steps", "env,decode,summary"], timeout=300)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    s = _summary(out)
    assert [(st["step"], st["status"]) for st in s["steps"]] == [("env", "skipped"), ("decode", "skipped")]
    assert not s["all_steps_passed"]
    assert all(t["status"] == "no data" for t in s["targets"])
    assert "SOME STEPS FAILED" in res.stdout
    assert os.path.isdir(os.path.join(out, "detail"))        # not packed: --out is not $OUT
