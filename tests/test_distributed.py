"""Under torchrun with 2 gloo processes, DDP and FSDP2 give the single-process adapter (issue 8)."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(cmd, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, **kw)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "adapter.pt"
    run([sys.executable, os.path.join(HERE, "dist_worker.py"), "single", str(out)])
    return torch.load(out)


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_process_training_equals_single_process(mode, single, tmp_path):
    out = tmp_path / "adapter.pt"
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         os.path.join(HERE, "dist_worker.py"), mode, str(out)])
    got = torch.load(out)
    assert set(got) == set(single)
    moved = 0
    for name, want in single.items():
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-6, msg=name)
        moved += 1
    assert moved == len(single) > 0
