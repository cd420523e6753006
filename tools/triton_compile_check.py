#!/usr/bin/env python
"""Compile the Triton kernels to PTX/cubin for real GPU targets, without a GPU.

The interpreter (TRITON_INTERPRET=1) that CI uses is lenient: it does not lower the kernels,
so shape and type rules of the GPU compiler (tl.dot sizes, pointer types) are not checked.
This script runs the full Triton pipeline (ttir -> ttgir -> llir -> ptx -> cubin) for
sm_80 and sm_90: the asym_lora kernels for fp32 and bf16 activations, the fused LM-head loss
kernels (their row kernels take fp32 logit tiles) in every mode, and the Tsallis entropy
kernels (fp32 and bf16 rows) in every q mode.

    TRITON_INTERPRET=0 python tools/triton_compile_check.py [--archs 80,90] [--ops asym_lora,lm_head_losses,tsallis_entropy]
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


def asym_lora_kernels(xdt: str):
    from alter_kernels.kernels.triton import asym_lora as K
    blk = {"BM": K.BM, "BN": K.BN, "BR": 16}
    c = lambda **kw: {k: "constexpr" for k in kw}
    yield K._shrink, {"x_ptr": "*" + xdt, "a_ptr": "*fp32", "u_ptr": "*fp32", "N": "i32", "K": "i32", "R": "i32",
                      **c(BM=1, BK=1, BR=1)}, {"BM": K.BM, "BK": K.BK, "BR": 16}
    yield K._expand_add, {"y_ptr": "*" + xdt, "u_ptr": "*fp32", "w_ptr": "*fp32", "b_ptr": "*fp32", "N": "i32",
                          "D": "i32", "R": "i32", "E": "i32", "s": "fp32", **c(**blk)}, blk
    yield K._bwd_rows, {"g_ptr": "*" + xdt, "u_ptr": "*fp32", "w_ptr": "*fp32", "b_ptr": "*fp32", "am_ptr": "*u8",
                        "du_ptr": "*fp32", "dua_ptr": "*fp32", "dw_ptr": "*fp32", "N": "i32", "D": "i32", "R": "i32",
                        "E": "i32", "s": "fp32", **c(HAS_AM=1, NEED_DW=1, **blk)}, {"HAS_AM": True, "NEED_DW": True, **blk}
    yield K._bwd_b, {"g_ptr": "*" + xdt, "u_ptr": "*fp32", "w_ptr": "*fp32", "bm_ptr": "*u8", "db_ptr": "*fp32",
                     "N": "i32", "D": "i32", "R": "i32", "E": "i32", "s": "fp32", **c(HAS_BM=1, **blk)}, \
        {"HAS_BM": True, **blk}


def loss_kernels(xdt: str):
    """The fused LM-head loss kernels (issue 16): the row kernels read fp32 logit tiles."""
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


def entropy_kernels(xdt: str):
    """The Tsallis entropy row kernels (lm_head_entropy runs them on fp32 logit tiles), every q mode."""
    from alter_kernels.kernels.triton import streaming
    from alter_kernels.kernels.triton import tsallis_entropy as K
    x, f32 = "*" + xdt, "*fp32"
    for mode in (streaming.SHANNON, streaming.Q2, streaming.GENERAL):
        yield K._tsallis_fwd_kernel, {"X": x, "ENT": f32, "LSE": f32, "ST": f32, "stride_row": "i64", "V": "i32",
                                      "q": "fp32", "MODE": "constexpr", "BLOCK": "constexpr"}, \
            {"MODE": mode, "BLOCK": 4096}
        yield K._tsallis_bwd_kernel, {"X": x, "OUT": x, "G": f32, "GL": f32, "ST": f32, "stride_row": "i64",
                                      "stride_out": "i64", "V": "i32", "q": "fp32", "HAS_GL": "constexpr",
                                      "MODE": "constexpr", "BLOCK": "constexpr"}, \
            {"HAS_GL": mode == streaming.SHANNON, "MODE": mode, "BLOCK": 4096}


OPS = {"asym_lora": (asym_lora_kernels, ("fp32", "bf16")), "lm_head_losses": (loss_kernels, ("fp32",)),
       "tsallis_entropy": (entropy_kernels, ("fp32", "bf16"))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="80,90")
    ap.add_argument("--ops", default=",".join(OPS))
    args = ap.parse_args(argv)
    failed = 0
    for arch in (int(a) for a in args.archs.split(",")):
        for op in args.ops.split(","):
            make, dtypes = OPS[op]
            for xdt, (fn, sig, consts) in ((x, k) for x in dtypes for k in make(x)):
                try:
                    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                                       target=GPUTarget("cuda", arch, 32))
                    status = "ok" if "cubin" in k.asm else "no cubin"
                except Exception as exc:  # report and go on
                    status = f"FAILED: {type(exc).__name__}: {str(exc)[:400]}"
                    failed += 1
                print(f"sm_{arch} {xdt:4s} {fn.__name__:20s} {status}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
