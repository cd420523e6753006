"""Build of alter_kernels and its C++ (and, where possible, CUDA) extension ``alter_kernels.kernels._C``
(beside its loader, alter_kernels/kernels/native.py).

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
EXT_NAME = "alter_kernels.kernels._C"      # the compiled extension, beside its loader kernels/native.py (tools/extension_check.py: EXT_MODULE)


def _version():
    """``__version__`` of alter_kernels/version.py (the one place the version is written)."""
    with open(os.path.join(HERE, "alter_kernels", "version.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _shannon_tol():
    """``SHANNON_TOL`` of alter_kernels/common/constants.py (its one home), for the C++/CUDA
    kernels: passed as the compile definition ALTER_SHANNON_TOL (csrc/include/alter_constants.h)."""
    with open(os.path.join(HERE, "alter_kernels", "common", "constants.py")) as f:
        return re.search(r"^SHANNON_TOL = ([0-9.eE+-]+)$", f.read(), re.M).group(1)


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
    constants = [f"-DALTER_SHANNON_TOL={_shannon_tol()}"]
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-DALTER_WITH_PYTHON"] + constants
    if not _env("ALTER_PORTABLE"):
        cxx.append("-march=native")
    include_dirs = [os.path.join(HERE, "csrc", "include")]
    if with_cuda:
        archs = os.environ.get("ALTER_CUDA_ARCHS")
        if archs and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        ext = CUDAExtension(
            EXT_NAME, cpu_sources + cuda_sources, include_dirs=include_dirs,
            define_macros=[("ALTER_WITH_CUDA", None)], extra_link_args=["-fopenmp"],
            extra_compile_args={"cxx": cxx,
                                "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo",
                                         "-DALTER_WITH_PYTHON"] + constants})
    else:
        ext = CppExtension(EXT_NAME, cpu_sources, include_dirs=include_dirs,
                           extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    print(f"alter_kernels: building the {'CPU+CUDA' if with_cuda else 'CPU'} extension "
          f"({len(cpu_sources)} C++ and {len(cuda_sources) if with_cuda else 0} CUDA sources)")
    return [ext], {"build_ext": _stamped(BuildExtension.with_options(use_ninja=True))}


def _stamped(build_ext_cls):
    """build_ext that records, beside each built extension, the torch it was built against
    (tools/extension_check.py: scripts/test.sh rebuilds only when the stamp no longer matches)."""
    import importlib.util
    check = os.path.join(HERE, "tools", "extension_check.py")

    class StampedBuildExt(build_ext_cls):
        def run(self):
            super().run()
            if not os.path.isfile(check):        # an sdist without tools/: no stamp, test.sh rebuilds
                return
            spec = importlib.util.spec_from_file_location("_alter_extension_check", check)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            for ext in self.extensions:
                mod.write_stamp(self.get_ext_fullpath(ext.name))

    return StampedBuildExt


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
