"""GPU tests (issue 15): every CUDA and Triton backend against a float64 ground truth, forward and
backward, fp32 and bf16, at real sizes (V = 128256, d = 4096) and on a grid of small edge shapes.

Criterion (ALTER_SPEC section 10, as in test_entropy_kernels.py and test_asym_lora_kernels.py,
whose helpers are reused): |kernel - truth| <= |reference_same_dtype - truth| + tol, elementwise,
truth in float64; the reference runs on the same device in the same dtype.

Which sizes and which device:
    ALTER_GPU_CHECK=full   real sizes; on CUDA (the default when a GPU is visible)
    ALTER_GPU_CHECK=tiny   the same tests at tiny shapes on the CPU: the C++ and the interpreted
                           Triton backends (TRITON_INTERPRET=1). scripts/gpu_check.sh --dry-run
                           runs this, and tests/project/test_gpu_check_dry_run.py runs that in CI.
    unset, no GPU          skipped (the dry run covers it)
    ALTER_GPU_REQUIRE=cuda,triton   backends that must be available for every op here (the GPU
                           script sets it, so a CUDA build that silently fell back fails loudly).

All tests carry the ``gpu`` marker (``pytest -m gpu``); the large ones are marked
``xdist_group("large")`` so that, under pytest-xdist with --dist loadgroup, they run one at a
time in one worker (their float64 truths need tens of GB).
"""
from __future__ import annotations

import math
import os

import pytest
import torch

import alter_kernels as ak
from alter_kernels import kernels
from alter_kernels.kernels.reference.asym_lora import asym_lora_ref
from alter_kernels.kernels.reference.entropy import tsallis_entropy_ref
from test_asym_lora_kernels import check as check_on_device  # y and gradients on the case's device
from test_asym_lora_kernels import make_case
from test_entropy_kernels import assert_criterion, cancellation_floor
from test_lm_head_entropy_kernels import run as lm_run

MODE = os.environ.get("ALTER_GPU_CHECK") or ("full" if torch.cuda.is_available() else "")
if MODE not in ("", "full", "tiny"):
    raise ValueError(f"ALTER_GPU_CHECK must be 'full' or 'tiny', got {MODE!r}")
if MODE == "":
    pytest.skip("no GPU; the CPU dry run (ALTER_GPU_CHECK=tiny) runs these through scripts/gpu_check.sh --dry-run",
                allow_module_level=True)
if MODE == "full" and not torch.cuda.is_available():
    pytest.skip("ALTER_GPU_CHECK=full needs a GPU", allow_module_level=True)
DEV = torch.device("cuda" if MODE == "full" else "cpu")
FULL = MODE == "full"

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")]
LARGE = pytest.mark.xdist_group("large")

BF16, FP32, FP16 = torch.bfloat16, torch.float32, torch.float16
DT = {FP32: "fp32", BF16: "bf16", FP16: "fp16"}


def fast_backends(op: str) -> list[str]:
    """Every non-reference backend of ``op`` on the test device (CUDA: cuda, triton (, torch);
    CPU dry run: cpp, triton interpreted (, torch))."""
    return [b for b in kernels.available(op, DEV) if b != "reference"]


def params(op, cases, ids):
    """(backend, case) pairs with readable ids."""
    return [pytest.param(b, c, id=f"{b}-{i}") for b in fast_backends(op) for c, i in zip(cases, ids)]


def gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


def test_required_backends_present():
    need = [b for b in os.environ.get("ALTER_GPU_REQUIRE", "").split(",") if b]
    have = {op: kernels.available(op, DEV) for op in ("tsallis_entropy", "lm_head_entropy", "asym_lora")}
    missing = {op: [b for b in need if b not in bs] for op, bs in have.items()}
    assert not any(missing.values()), (f"backends missing on {DEV}: {missing}; available: {have}; "
                                       f"extension error: {kernels.extension_error()}")
    for op, bs in have.items():
        assert [b for b in bs if b != "reference"], f"{op}: no fast backend on {DEV}"


# --------------------------------------------------------------------------- tsallis_entropy
def make_logits(n, v, dtype, scale=3.0, seed=0):
    """Flat, peaked and ordinary rows (like test_entropy_kernels.make_logits), drawn on DEV."""
    x = torch.randn(n, v, dtype=torch.float64, device=DEV, generator=gen(seed)) * scale
    if n > 1:
        x[1] *= 0.05
    if n > 2:
        x[2, v // 2] += 20.0
    return x.to(dtype)


def tsallis_run(backend, x, q, g):
    xx = x.detach().clone().requires_grad_()
    if backend is None:
        e = tsallis_entropy_ref(xx, q)
    else:
        with ak.use_backend(backend):
            e = ak.tsallis_entropy(xx, q)
    e.backward(g.to(e.dtype))
    return e.detach(), xx.grad


def check_tsallis(backend, x, q, rtol=3e-5, grad_rtol=3e-5):
    g = torch.randn(x.shape[:-1], device=DEV, generator=gen(1))
    e, gx = tsallis_run(backend, x, q, g)
    assert e.dtype == torch.float32 and e.shape == x.shape[:-1] and e.device == x.device
    assert gx.dtype == x.dtype and gx.shape == x.shape
    e_same, gx_same = tsallis_run("reference", x, q, g)
    e_true, gx_true = tsallis_run(None, x.double(), q, g)
    assert_criterion(e, e_same, e_true, rtol, f"{backend} forward q={q}")
    assert_criterion(gx, gx_same, gx_true, grad_rtol, f"{backend} backward q={q}",
                     extra=cancellation_floor(x, q, g))


def grad_rtol(dtype):
    return 3e-5 if dtype == FP32 else 1e-2  # low-precision gradients are rounded to the input dtype


# (N, V, dtype, q): V = 128256 (Llama 3) in fp32 and bf16 for each kernel mode (Shannon, q = 2,
# general q), and many rows (more than a 65535-wide grid dimension) of a short vocabulary.
TS_LARGE = ([(64, 128256, FP32, q) for q in (1.0, 2.0, 1.5)] + [(1024, 128256, BF16, q) for q in (1.0, 2.0, 1.5)]
            + [(70000, 33, BF16, 1.5), (8, 128256, FP16, 0.5)]) if FULL else \
    [(4, 3000, FP32, 1.5), (4, 3000, BF16, 1.0), (70, 33, BF16, 2.0)]
TS_SMALL_V = [1, 7, 1000, 50257] if FULL else [1, 7, 300]
TS_SMALL = [(5, v, dt, q) for v in TS_SMALL_V for dt in (FP32, BF16) for q in (1.0, 1.5, 2.0)] + \
    [(5, 1000 if FULL else 300, dt, q) for dt in (FP32, FP16) for q in (0.5, 3.0)]


def _ts_id(c):
    return f"N{c[0]}-V{c[1]}-{DT[c[2]]}-q{c[3]}"


@LARGE
@pytest.mark.parametrize("backend,case", params("tsallis_entropy", TS_LARGE, [_ts_id(c) for c in TS_LARGE]))
def test_tsallis_large(backend, case):
    n, v, dt, q = case
    check_tsallis(backend, make_logits(n, v, dt, seed=v + n), q, grad_rtol=grad_rtol(dt))


@pytest.mark.parametrize("backend,case", params("tsallis_entropy", TS_SMALL, [_ts_id(c) for c in TS_SMALL]))
def test_tsallis_small(backend, case):
    n, v, dt, q = case
    check_tsallis(backend, make_logits(n, v, dt, seed=v), q, grad_rtol=grad_rtol(dt))


@pytest.mark.parametrize("backend", fast_backends("tsallis_entropy"))
@pytest.mark.parametrize("dtype", [FP32, BF16], ids=["fp32", "bf16"])
def test_tsallis_edges(backend, dtype):
    """-inf / NaN / one-entry rows, zero rows, leading dims, strided input, V = 1."""
    q = 1.5
    x = make_logits(6, 333, dtype)
    x[0, ::3] = -math.inf
    x[1, :] = -math.inf
    x[2, 17] = math.nan
    x[3, :-1] = -math.inf
    x[4, 5] = 40.0
    e, gx = tsallis_run(backend, x, q, torch.randn(6, device=DEV, generator=gen(2)))
    assert e[1].isnan() and e[2].isnan() and not e[[0, 3, 4, 5]].isnan().any()
    assert abs(e[3].item()) < 1e-6
    assert gx[1].isnan().all() and gx[2].isnan().all() and (gx[0, ::3] == 0).all()
    check_tsallis(backend, x, q, grad_rtol=grad_rtol(dtype))
    for shape in [(0, 7), (2, 0, 5)]:
        z = torch.randn(shape, device=DEV).to(dtype).requires_grad_()
        with ak.use_backend(backend):
            ez = ak.tsallis_entropy(z, q)
        assert ez.shape == shape[:-1]
        ez.sum().backward()
        assert z.grad.shape == z.shape
    base = make_logits(9, 2 * 301, dtype)
    check_tsallis(backend, base[:, ::2], 1.0, grad_rtol=grad_rtol(dtype))         # strided last dim
    check_tsallis(backend, base[::2, :301], 2.0, grad_rtol=grad_rtol(dtype))      # row stride only
    check_tsallis(backend, make_logits(6, 13, dtype).reshape(2, 3, 13), q, grad_rtol=grad_rtol(dtype))
    e1, g1 = tsallis_run(backend, make_logits(4, 1, dtype), 2.0, torch.ones(4, device=DEV))
    assert (e1 == 0).all() and (g1 == 0).all()


# --------------------------------------------------------------------------- lm_head_entropy
def make_lm(n, v, d, dtype, bias, scale=1.0, seed=0):
    g = gen(seed)
    h = torch.randn(n, d, dtype=torch.float64, device=DEV, generator=g)
    w = torch.randn(v, d, dtype=torch.float64, device=DEV, generator=g) * (scale * 2.0 / math.sqrt(d))
    b = torch.randn(v, dtype=torch.float64, device=DEV, generator=g) if bias else None
    return h.to(dtype), w.to(dtype), (b.to(dtype) if bias else None)


def check_lm(backend, h, w, b, q, rtol=5e-5, grad_rtol_=5e-5):
    lead = h.shape[:-1]
    g_ent = torch.randn(lead, device=DEV, generator=gen(3))
    g_lse = torch.randn(lead, device=DEV, generator=gen(4))
    out = lm_run(backend, h, w, b, q, g_ent, g_lse)
    same = lm_run("reference", h, w, b, q, g_ent, g_lse)
    tru = lm_run(None, h, w, b, q, g_ent, g_lse, dtype=torch.float64)
    for i, name in enumerate(["entropy", "lse", "d hidden", "d weight", "d bias"]):
        if tru[i] is None:
            assert out[i] is None
            continue
        if i >= 2:
            assert out[i].dtype == [h, w, b][i - 2].dtype and out[i].shape == tru[i].shape
        assert out[i].device == h.device
        assert_criterion(out[i], same[i], tru[i], rtol if i < 2 else grad_rtol_, f"{backend} {name} q={q}")
    del out, same, tru


# (N, d, V, dtype, q, bias): N = 1100 crosses the 256 MiB chunk of the GPU backends at V = 128256
# (523 rows per chunk); d = 4096 (Llama-3-8B's width), d = 2048 (Llama-3.2-1B's).
LM_LARGE = [(1100, 4096, 128256, BF16, 1.5, False), (300, 4096, 128256, FP32, 1.0, False),
            (600, 2048, 128256, BF16, 2.0, True)] if FULL else \
    [(9, 32, 3000, BF16, 1.5, False), (5, 32, 3000, FP32, 1.0, True)]
LM_SMALL_V = [1, 7, 1000, 50257] if FULL else [1, 7, 300]
LM_SMALL = [(5, 24, v, dt, q, v % 2 == 1) for v in LM_SMALL_V for dt in (FP32, BF16) for q in (1.0, 1.5, 2.0)] + \
    [(5, 24, 1000 if FULL else 300, FP32, q, True) for q in (0.5, 3.0)]


def _lm_id(c):
    return f"N{c[0]}-d{c[1]}-V{c[2]}-{DT[c[3]]}-q{c[4]}" + ("-bias" if c[5] else "")


@LARGE
@pytest.mark.parametrize("backend,case", params("lm_head_entropy", LM_LARGE, [_lm_id(c) for c in LM_LARGE]))
def test_lm_head_large(backend, case):
    n, d, v, dt, q, bias = case
    check_lm(backend, *make_lm(n, v, d, dt, bias, seed=n), q, grad_rtol_=grad_rtol(dt) if dt != FP32 else 5e-5)
    if DEV.type == "cuda":
        torch.cuda.empty_cache()


@pytest.mark.parametrize("backend,case", params("lm_head_entropy", LM_SMALL, [_lm_id(c) for c in LM_SMALL]))
def test_lm_head_small(backend, case):
    n, d, v, dt, q, bias = case
    check_lm(backend, *make_lm(n, v, d, dt, bias, scale=3.0 if q == 3.0 else 1.0, seed=v), q,
             grad_rtol_=grad_rtol(dt) if dt != FP32 else 5e-5)


@pytest.mark.parametrize("backend", fast_backends("lm_head_entropy"))
def test_lm_head_edges(backend):
    """Leading dims, no lse, one token, -inf bias entries, NaN hidden, zero rows."""
    h, w, b = make_lm(6, 97, 12, FP32, False)
    check_lm(backend, h.reshape(2, 3, 12), w, None, 1.5)
    check_lm(backend, h[:1], w, None, 1.0)
    h, w, b = make_lm(4, 40, 8, FP32, True)
    b[::4] = -math.inf
    check_lm(backend, h, w, b, 2.0)
    h[2, 3] = math.nan
    with ak.use_backend(backend):
        e, l = ak.lm_head_entropy(h, w, 1.5, bias=b, return_lse=True)
    assert e[2].isnan() and l[2].isnan() and not e[[0, 1, 3]].isnan().any()
    h0, w0, b0 = make_lm(0, 11, 4, FP32, True)
    h0.requires_grad_()
    w0.requires_grad_()
    with ak.use_backend(backend):
        e0, l0 = ak.lm_head_entropy(h0, w0, 1.5, bias=b0, return_lse=True)
    assert e0.shape == (0,) and l0.shape == (0,)
    (e0.sum() + l0.sum()).backward()
    assert torch.equal(w0.grad, torch.zeros_like(w0))


# --------------------------------------------------------------------------- asym_lora
def to_dev(case):
    return {k: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for k, v in case.items()}


def check_lora(backend, case):
    """test_asym_lora_kernels.check (float64 truth, same-dtype reference bound) on DEV."""
    return check_on_device(backend, to_dev(case))


# (n, d_in, d_out, r, E, routing, dtype, adapter dtype): the benchmark's layer (d = 4096, E = 5,
# r = 8) in a bf16 model with fp32 adapters (the default) and all-bf16; an MLP-shaped one in fp32.
LORA_LARGE = [(4096, 4096, 4096, 8, 5, "mixed", BF16, FP32), (2048, 4096, 4096, 8, 5, "high", BF16, BF16),
              (1024, 2048, 8192, 16, 9, "mixed", FP32, FP32)] if FULL else \
    [(40, 64, 48, 8, 5, "mixed", BF16, FP32), (24, 32, 64, 16, 9, "high", FP32, FP32)]
LORA_SMALL = ([(23, 37, 19, r, E, rt, FP32, FP32) for E in (1, 2, 5, 9) for r in (1, 8, 16)
               for rt in ("low", "high", "mixed")] if FULL else
              [(9, 21, 11, r, E, rt, FP32, FP32) for E, r, rt in ((1, 1, "mixed"), (5, 8, "mixed"), (9, 16, "high"))])
LORA_SMALL += [(n, 37, 19, 8, 5, "mixed", BF16, adt) for n in (0, 1, 5, 13) for adt in (FP32, BF16)]


def _lora_id(c):
    return f"n{c[0]}-{c[1]}x{c[2]}-r{c[3]}-E{c[4]}-{c[5]}-{DT[c[6]]}-A{DT[c[7]]}"


@LARGE
@pytest.mark.parametrize("backend,case", params("asym_lora", LORA_LARGE, [_lora_id(c) for c in LORA_LARGE]))
def test_asym_lora_large(backend, case):
    n, d_in, d_out, r, E, routing, dt, adt = case
    check_lora(backend, make_case(n, d_in, d_out, r, E, routing=routing, dtype=dt, adapter_dtype=adt, seed=n))


@pytest.mark.parametrize("backend,case", params("asym_lora", LORA_SMALL, [_lora_id(c) for c in LORA_SMALL]))
def test_asym_lora_small(backend, case):
    n, d_in, d_out, r, E, routing, dt, adt = case
    check_lora(backend, make_case(n, d_in, d_out, r, E, routing=routing, dtype=dt, adapter_dtype=adt,
                                  seed=E * 100 + r + n))


@pytest.mark.parametrize("backend", fast_backends("asym_lora"))
def test_asym_lora_no_masks_frozen_and_no_grad(backend):
    check_lora(backend, make_case(11, 13, 7, 8, 5, masks=False, bias=False, w_grad=False))
    for n in (1, 5, 13):                  # the small-N gather path and the GEMM path, forward only
        c = to_dev(make_case(n, 33, 21, 8, 5, seed=n))
        with ak.use_backend(backend), torch.no_grad():
            y = ak.asym_lora(c["x"], c["weight"], c["A"], c["B"], c["expert_weights"], 2.0, bias=c["bias"])
        truth = asym_lora_ref(*(c[k].double() for k in ("x", "weight", "A", "B", "expert_weights")), 2.0,
                              bias=c["bias"].double())
        torch.testing.assert_close(y.double(), truth, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- CUDA-graph decoding
def test_generate_cuda_graph_matches_eager():
    """ak.generate replays the decode step as a CUDA graph and gives the eager loop's tokens
    (patched and unpatched model, batch 3, fp32)."""
    if DEV.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    base = transformers.LlamaForCausalLM(cfg).eval().to(DEV)
    with torch.no_grad():
        base.lm_head.weight.mul_(8.0)        # peaky distributions: greedy tokens are not near-ties
    patched = transformers.LlamaForCausalLM(cfg).eval().to(DEV)
    patched.load_state_dict(base.state_dict())
    ak.patch(patched, ak.AlterConfig(rank=4, num_forget_experts=2, init_seed=0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                    # non-zero experts and router: the adapters really act
        for name, p in ak.adapter_state_dict(patched).items():
            if name.endswith("lora_B") or name.endswith("alter_router.weight"):
                p.copy_(torch.randn(p.shape, generator=g).to(DEV) * 0.3)
    ids = torch.randint(3, 97, (3, 9), generator=torch.Generator().manual_seed(2)).to(DEV)
    for m in (base, patched):
        graph = ak.generate(m, ids, 12, return_dict=True)
        eager = ak.generate(m, ids, 12, cuda_graph=False, return_dict=True)
        assert graph.cuda_graph and not eager.cuda_graph
        assert torch.equal(graph.sequences, eager.sequences)
        torch.testing.assert_close(graph.entropy, eager.entropy, rtol=1e-4, atol=1e-5)
