import os

import torch

os.environ.setdefault("ALTER_KERNELS_QUIET", "1")
# Without a GPU, Triton kernels run in the interpreter (on CPU tensors). The switch must be set
# before any Triton kernel is defined, so it is set here, before the tests import the package.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny-model matmuls on a loaded 2-core machine run far
    faster single-threaded (measured ~25x on the unlearning tests)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_configure(config):
    config.addinivalue_line("markers", "network: needs PyPI (skipped with ALTER_OFFLINE=1)")
