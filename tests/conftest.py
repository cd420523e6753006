import os

import torch

os.environ.setdefault("ALTER_KERNELS_QUIET", "1")
# Without a GPU, Triton kernels run in the interpreter (on CPU tensors). The switch must be set
# before any Triton kernel is defined, so it is set here, before the tests import the package.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_configure(config):
    # registered here rather than in a pytest.ini / pyproject.toml section (issue 15)
    config.addinivalue_line("markers", "gpu: GPU kernel tests (tests/kernels/test_gpu_kernels.py); real sizes on CUDA, "
                                       "tiny shapes on the CPU with ALTER_GPU_CHECK=tiny (scripts/gpu_check.sh)")
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist --dist loadgroup runs a group in one worker")
    config.addinivalue_line("markers", "network: needs PyPI (skipped with ALTER_OFFLINE=1)")
    config.addinivalue_line("markers", "heavy: a check of a minute or more: the build checks (nvcc, CMake/libtorch, Triton "
                                       "to cubin, fresh-venv install, gpu_check --dry-run) and the real-model TOFU pipeline; "
                                       "`bash scripts/test.sh` skips them, "
                                       "`bash scripts/test.sh --full` and CI (.ci/run) run them")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _default_sigint():
    """Every test starts and ends with Python's default Ctrl-C handler (a library or test that
    swaps it must not change how a later test's run handles SIGINT)."""
    import signal
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny-model matmuls on a loaded 2-core machine run far
    faster single-threaded (measured ~25x on the unlearning tests)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

