"""The runnable examples in python/ run to the end on their toy defaults (each checks its own
claims with asserts: an example that drifts from the package fails here, not in a user's hands).
python/hf_trainer_unlearn.py and python/distributed_unlearn.py run in tests/unlearn/."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name", ["quickstart", "unlearn_loop", "generate_example"])
def test_example_runs(name, tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, os.path.join(ROOT, "python", f"{name}.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
