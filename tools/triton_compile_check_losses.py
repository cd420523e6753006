#!/usr/bin/env python
"""Lower the fused LM-head loss Triton kernels (issue 16) to cubin for sm_80 / sm_90, without a GPU.

The interpreter the tests use does not run the GPU compiler's type and shape rules; this does
(ttir -> ttgir -> llir -> ptx -> cubin) for every kernel and mode.

    TRITON_INTERPRET=0 python tools/triton_compile_check_losses.py [--archs 80,90]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


def kernels():
    from alter_kernels.kernels.triton import lm_head_losses as K
    f32, i64 = "*fp32", "*i64"
    for mode in range(4):
        yield K._losses_fwd_kernel, {"X": f32, "LAB": i64, "NLL": f32, "IHL": f32, "ENT": f32, "LSE": f32, "ST": f32,
                                     "stride_row": "i64", "V": "i32", "q": "fp32", "ignore": "i64",
                                     "MODE": "constexpr", "BLOCK": "constexpr"}, {"MODE": mode, "BLOCK": 4096}
        yield K._losses_bwd_kernel, {"X": f32, "OUT": f32, "LAB": i64, "ST": f32, "GN": f32, "GI": f32, "GE": f32,
                                     "GL": f32, "stride_row": "i64", "stride_out": "i64", "V": "i32", "q": "fp32",
                                     "ignore": "i64", "HAS_GN": "constexpr", "HAS_GI": "constexpr",
                                     "HAS_GL": "constexpr", "MODE": "constexpr", "BLOCK": "constexpr"}, \
            {"HAS_GN": True, "HAS_GI": True, "HAS_GL": mode == 0, "MODE": mode, "BLOCK": 4096}
    for has_mask in (False, True):
        yield K._kl_fwd_kernel, {"XB": f32, "X": f32, "MASK": "*i1", "KL": f32, "ST": f32, "stride_b": "i64",
                                 "stride_m": "i64", "V": "i32", "HAS_MASK": "constexpr", "BLOCK": "constexpr"}, \
            {"HAS_MASK": has_mask, "BLOCK": 4096}
        yield K._kl_bwd_kernel, {"XB": f32, "X": f32, "G": f32, "MASK": "*i1", "ST": f32, "stride_b": "i64",
                                 "stride_m": "i64", "V": "i32", "HAS_MASK": "constexpr", "NEED_BASE": "constexpr",
                                 "BLOCK": "constexpr"}, {"HAS_MASK": has_mask, "NEED_BASE": has_mask, "BLOCK": 4096}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="80,90")
    args = ap.parse_args(argv)
    failed = 0
    for arch in (int(a) for a in args.archs.split(",")):
        for fn, sig, consts in kernels():
            try:
                k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                                   target=GPUTarget("cuda", arch, 32))
                status = "ok" if "cubin" in k.asm else "no cubin"
            except Exception as exc:  # report and go on
                status = f"FAILED: {type(exc).__name__}: {str(exc)[:600]}"
                failed += 1
            print(f"sm_{arch} {fn.__name__:20s} {consts} {status}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
