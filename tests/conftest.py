import os

import pytest
import torch

os.environ.setdefault("ALTER_KERNELS_QUIET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
