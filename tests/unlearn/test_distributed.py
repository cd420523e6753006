"""Under torchrun with 2 gloo processes, DDP and FSDP2 give the single-process adapter (issue 8)."""
import os
import sys

import pytest
import torch

import _launch  # noqa: E402  (tests/_launch.py)

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/: the workers and _launch.py
ROOT = os.path.dirname(HERE)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "adapter.pt"
    _launch.run(lambda: [sys.executable, os.path.join(HERE, "dist_worker.py"), "single", str(out)])
    return torch.load(out)


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_process_training_equals_single_process(mode, single, tmp_path):
    out = tmp_path / "adapter.pt"
    _launch.run(lambda: _launch.torchrun() + [os.path.join(HERE, "dist_worker.py"), mode, str(out)])
    got = torch.load(out)
    assert set(got) == set(single)
    moved = 0
    for name, want in single.items():
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-6, msg=name)
        moved += 1
    assert moved == len(single) > 0
