#!/usr/bin/env python
"""Compile every CUDA source of alter_kernels with nvcc, without a GPU or a CUDA build of torch.

A CPU build of torch ships the ATen/c10 CUDA headers but not the generated
``c10/cuda/impl/cuda_cmake_macros.h``, and torch's CUDA headers include cuBLAS/cuSPARSE/
cuSOLVER headers that a bare nvcc lacks. This script puts a one-line shim for the first, and
header-only copies of the ``nvidia-*`` pip wheels for the second, in a cache directory
(~/.cache/alter_kernels/cuda-headers, or $ALTER_CUDA_HEADERS), then runs
``nvcc -c`` on csrc/cuda/*.cu for each requested architecture. Objects are thrown away:
this checks that the sources compile; running them needs a GPU.

    python tools/cuda_compile_check.py [--archs 80,90a] [files...]
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = ["nvidia-cublas", "nvidia-cusparse", "nvidia-cusolver", "nvidia-curand"]


def header_dir() -> str:
    root = os.environ.get("ALTER_CUDA_HEADERS") or os.path.expanduser("~/.cache/alter_kernels/cuda-headers")
    inc = os.path.join(root, "include")
    if not os.path.exists(os.path.join(inc, "cublas_v2.h")):
        tmp = tempfile.mkdtemp(prefix="alter-cuda-wheels-")
        try:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", tmp] + WHEELS,
                           check=True)
            found = glob.glob(os.path.join(tmp, "nvidia", "*", "include")) + \
                glob.glob(os.path.join(tmp, "nvidia", "*", "*", "include"))
            staging = inc + ".tmp"
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(staging)
            for d in found:                      # headers only; the wheels' libraries are dropped
                shutil.copytree(d, staging, dirs_exist_ok=True)
            shim = os.path.join(staging, "c10", "cuda", "impl")
            os.makedirs(shim, exist_ok=True)
            with open(os.path.join(shim, "cuda_cmake_macros.h"), "w") as f:
                f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
            os.makedirs(root, exist_ok=True)
            shutil.rmtree(inc, ignore_errors=True)
            os.replace(staging, inc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return inc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="80,90a", help="comma-separated SM architectures (default 80,90a)")
    ap.add_argument("files", nargs="*", help="CUDA sources (default: csrc/cuda/*.cu)")
    args = ap.parse_args(argv)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("cuda_compile_check: nvcc not found on PATH", file=sys.stderr)
        return 2
    import torch
    tinc = os.path.join(os.path.dirname(torch.__file__), "include")
    files = args.files or sorted(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
    if not files:
        print("cuda_compile_check: no CUDA sources")
        return 0
    gencode = []
    for a in args.archs.split(","):
        gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    incs = [header_dir(), os.path.join(HERE, "csrc", "include"), tinc,
            os.path.join(tinc, "torch", "csrc", "api", "include"), sysconfig.get_paths()["include"]]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    sys.path.insert(0, HERE)
    from alter_kernels.common.constants import SHANNON_TOL   # the build's define (alter_constants.h)
    failed = 0
    with tempfile.TemporaryDirectory() as out:
        for src in files:
            cmd = [nvcc, "-c", src, "-o", os.path.join(out, os.path.basename(src) + ".o"), "-std=c++17", "-O3",
                   "--expt-relaxed-constexpr", "-DALTER_WITH_CUDA", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
                   f"-DALTER_SHANNON_TOL={SHANNON_TOL!r}",
                   "-diag-suppress", "3306"] + gencode + [f"-I{i}" for i in incs]
            t = time.time()
            res = subprocess.run(cmd, capture_output=True, text=True)
            status = "ok" if res.returncode == 0 else "FAILED"
            print(f"{status:6s} {os.path.relpath(src, HERE)} [{args.archs}] {time.time() - t:.0f}s")
            if res.returncode:
                failed += 1
                print(res.stdout[-4000:], res.stderr[-8000:], sep="\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
