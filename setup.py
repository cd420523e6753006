"""Build of alter_kernels and its C++ (and, where possible, CUDA) extension ``alter_kernels._C``.

    pip install -e . --no-build-isolation --no-deps   # against the torch that is installed
                                                      # (pyproject.toml: the build requirements)

Environment switches:
    ALTER_SKIP_CUDA=1         never build the CUDA kernels (CPU extension only)
    ALTER_FORCE_CUDA=1        build them even when torch.cuda cannot see a GPU (needs CUDA torch + nvcc)
    ALTER_CUDA_ARCHS="8.0;9.0a"   GPU architectures (sets TORCH_CUDA_ARCH_LIST unless that is set)
    ALTER_SKIP_EXTENSION=1    pure-Python install (reference and Triton backends only)
    ALTER_PORTABLE=1          no -march=native in the C++ flags (for binaries that travel)
    MAX_JOBS=N                parallel compile jobs (honoured by torch's ninja build)
"""
import glob
import os
import re
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
    """``__version__`` of alter_kernels/version.py (the one place the version is written)."""
    with open(os.path.join(HERE, "alter_kernels", "version.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _env(name):
    return os.environ.get(name, "") not in ("", "0", "false", "False")


def _extensions():
    if _env("ALTER_SKIP_EXTENSION"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))
    cpu_sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cuda_sources = rel("csrc/cuda/*.cu") + rel("csrc/cuda/*.cpp")
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))
    with_cuda = (not _env("ALTER_SKIP_CUDA") and bool(cuda_sources) and torch.version.cuda is not None
                 and bool(nvcc) and (torch.cuda.is_available() or _env("ALTER_FORCE_CUDA")))
    # -fopenmp: at::parallel_for is an inline OpenMP loop in torch's headers; without the flag
    # the extension's own row loops would run on one thread.
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-DALTER_WITH_PYTHON"]
    if not _env("ALTER_PORTABLE"):
        cxx.append("-march=native")
    include_dirs = [os.path.join(HERE, "csrc", "include")]
    if with_cuda:
        archs = os.environ.get("ALTER_CUDA_ARCHS")
        if archs and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        ext = CUDAExtension(
            "alter_kernels._C", cpu_sources + cuda_sources, include_dirs=include_dirs,
            define_macros=[("ALTER_WITH_CUDA", None)], extra_link_args=["-fopenmp"],
            extra_compile_args={"cxx": cxx,
                                "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo",
                                         "-DALTER_WITH_PYTHON"]})
    else:
        ext = CppExtension("alter_kernels._C", cpu_sources, include_dirs=include_dirs,
                           extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    print(f"alter_kernels: building the {'CPU+CUDA' if with_cuda else 'CPU'} extension "
          f"({len(cpu_sources)} C++ and {len(cuda_sources) if with_cuda else 0} CUDA sources)")
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="alter_kernels",
    version=_version(),
    description="ALTER: asymmetric-LoRA, token-entropy-guided unlearning for LLMs, with custom kernels",
    packages=find_packages(include=["alter_kernels", "alter_kernels.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "transformers>=4.56", "safetensors", "numpy", "scipy", "tqdm",
                      "rouge-score>=0.1.2"],
    extras_require={"triton": ["triton"], "test": ["pytest", "peft"], "datasets": ["datasets"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["alter-unlearn=alter_kernels.cli.unlearn:main",
                                      "alter-eval=alter_kernels.cli.eval:main",
                                      "alter-finetune=alter_kernels.cli.finetune:main"]},
    zip_safe=False,
)
