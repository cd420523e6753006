"""LM-head entropy with the Triton row kernels: tokens in chunks, one GEMM per chunk.

For each chunk of tokens the fp32 logits [chunk, V] are made by one library GEMM (cuBLAS on a
GPU: bf16 inputs with fp32 output where torch offers it), reduced by the Triton forward kernel;
the backward recomputes the chunk, turns it in place into dL/dlogits with the Triton backward
kernel and forms d hidden / d weight with two more GEMMs. At most one [chunk, V] fp32 tile
exists at a time, never the [N, V] logits. The chunk keeps that tile under ~256 MiB on a GPU
(and small on the CPU, where this runs only under TRITON_INTERPRET=1 for tests).
"""
from __future__ import annotations

import torch

from ..entropy_autograd import chunked_lm_head_kernels
from .tsallis_entropy import tsallis_bwd, tsallis_fwd

TILE_BYTES_CUDA = 256 << 20
TILE_BYTES_CPU = 16 << 20


def chunk_rows(n: int, v: int, device: torch.device) -> int:
    budget = TILE_BYTES_CUDA if torch.device(device).type == "cuda" else TILE_BYTES_CPU
    return max(1, min(max(n, 1), budget // (4 * v)))


def _grad_inplace(z, stats, g_ent, g_lse, q):
    tsallis_bwd(g_ent, z, stats, q, out=z, grad_lse=g_lse)


KERNELS = chunked_lm_head_kernels(tsallis_fwd, _grad_inplace, chunk_rows)
