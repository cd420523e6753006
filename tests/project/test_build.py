"""The build: the extension, the dispatch table, the warning without it, the CMake library and
the C++ program that calls an op through it."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import alter_kernels as ak
from alter_kernels import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUIRE_EXT = os.environ.get("ALTER_REQUIRE_EXTENSION", "") not in ("", "0")
# the ops csrc/cpu registers a CPU kernel for, and those csrc/cuda registers a CUDA kernel for
CPU_OPS = ("tsallis_entropy_fwd", "tsallis_entropy_bwd", "lm_head_entropy_fwd", "lm_head_entropy_bwd",
           "asym_lora_fwd", "asym_lora_bwd", "route_plan", "decode_route", "decode_group_linear",
           "decode_linear")
CUDA_OPS = ("tsallis_entropy_fwd", "tsallis_entropy_bwd", "lm_head_entropy_fwd", "lm_head_entropy_bwd",
            "asym_lora_fwd", "asym_lora_bwd")


def test_extension_loads_and_registers_its_namespace():
    if kernels.load_extension() is None:
        if REQUIRE_EXT:
            pytest.fail(f"the extension must be built here but did not load: {kernels.extension_error()}")
        pytest.skip(f"extension not built: {kernels.extension_error()}")
    flags = torch.ops.alter_kernels.build_info()      # bit 0: CUDA kernels built in, bit 1: OpenMP
    assert isinstance(flags, int) and flags & ~3 == 0, f"unknown build_info bits: {flags:#b}"
    assert flags & 2, "setup.py compiles the extension with -fopenmp: build_info must report OpenMP (bit 1)"
    cuda_built = bool(flags & 1)
    if torch.version.cuda is None:
        assert not cuda_built, "a CPU-only torch cannot have CUDA kernels, but build_info reports them"
    # every native op has its CPU kernel; the CUDA ones exist exactly when build_info says so
    for op in CPU_OPS:
        assert kernels.native_op(op) is not None, f"torch.ops.alter_kernels.{op} is not defined"
        assert kernels.native_has_kernel(op, "CPU"), f"alter_kernels::{op} has no CPU kernel"
    for op in CUDA_OPS:
        assert kernels.native_has_kernel(op, "CUDA") == cuda_built, (op, flags)


def test_backends_names_every_public_op():
    table = ak.backends("cpu")
    assert {"tsallis_entropy", "lm_head_entropy", "asym_lora", "route"} <= set(table)
    assert all(v in ("reference", "torch", "cpp", "triton", "cuda") for v in table.values())
    for op in table:
        assert "reference" in kernels.available(op, "cpu")
    # ALTER_SPEC section 9: on CPU every op runs on the C++ extension when it is built
    if kernels.load_extension() is not None:
        assert table == {op: "cpp" for op in table}, table
    elif REQUIRE_EXT:
        pytest.fail(f"the extension must be built here but did not load: {kernels.extension_error()}")
    else:
        assert "cpp" not in table.values(), table


def test_use_backend_forces_and_refuses_clearly():
    with ak.use_backend("reference"):
        assert kernels.pick("asym_lora", "cpu").backend == "reference"
    with ak.use_backend("no-such-backend"):
        with pytest.raises(RuntimeError, match="backend 'no-such-backend' forced by use_backend"):
            ak.tsallis_entropy(torch.randn(2, 3))


def test_import_without_the_extension_warns_once_and_falls_back():
    code = (
        "import sys, warnings\n"
        "sys.modules['alter_kernels.kernels._C'] = None\n"   # makes `import alter_kernels.kernels._C` fail
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import alter_kernels as ak, torch\n"
        "    import importlib; importlib.reload(ak)\n"
        "    y = ak.tsallis_entropy(torch.zeros(2, 4), 2.0)\n"
        "msgs = [str(x.message) for x in w if 'could not be loaded' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert 'tsallis_entropy' in msgs[0] and 'reference' in msgs[0], msgs[0]\n"
        "assert abs(y[0].item() - 0.75) < 1e-6\n"
        "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "ALTER_KERNELS_QUIET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.heavy
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_builds_the_ops_library_against_libtorch(tmp_path):
    build = tmp_path / "build"
    prefix = torch.utils.cmake_prefix_path
    jobs = os.environ.get("MAX_JOBS", "2")
    subprocess.run(["cmake", "-S", ROOT, "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}",
                    "-DALTER_WITH_CUDA=OFF", "-DALTER_BUILD_EXAMPLES=ON"], check=True, capture_output=True)
    res = subprocess.run(["cmake", "--build", str(build), f"-j{jobs}"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lib = build / "libalter_ops.so"
    assert lib.exists()
    # a fresh process (the Python extension must not be loaded too: same op names)
    code = ("import torch; torch.ops.load_library(%r); "
            "print(torch.ops.alter_kernels.build_info())" % str(lib))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().isdigit()
    # the C++ program: calls an op through the dispatcher and checks it against libtorch
    res = subprocess.run([str(build / "alter_embed_check")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert res.stdout.count(" ok") == 4, res.stdout
