"""ak.lm_head_entropy on every backend this machine can run, against a float64 ground truth.

Same criterion as test_entropy_kernels.py: |kernel - truth| <= |reference_same_dtype - truth| + tol,
for the entropy, the log-sum-exp and the gradients w.r.t. hidden, weight and bias (through both
outputs).
"""
import math

import pytest
import torch

import alter_kernels as ak
from alter_kernels import kernels
import truth as T
from test_entropy_kernels import assert_criterion

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

QS = [0.5, 1.0, 1.5, 2.0, 3.0]
VS = [1, 7, 1000, 32000, 50257]
BACKENDS = kernels.available("lm_head_entropy", "cpu")
HAS_CPP = kernels.native_has_kernel("lm_head_entropy_fwd", "CPU")


def make(n, v, d, dtype=torch.float32, bias=True, scale=1.0):
    h = torch.randn(n, d, dtype=torch.float64)
    w = torch.randn(v, d, dtype=torch.float64) * (scale * 2.0 / math.sqrt(d))
    b = torch.randn(v, dtype=torch.float64) if bias else None
    return h.to(dtype), w.to(dtype), (b.to(dtype) if bias else None)


def run(backend, h, w, b, q, g_ent, g_lse, dtype=None):
    """Forward + backward through entropy and lse; returns (ent, lse, dh, dw, db)."""
    cast = (lambda t: t.detach().to(dtype).requires_grad_()) if dtype else (lambda t: t.detach().clone().requires_grad_())
    hh, ww = cast(h), cast(w)
    bb = cast(b) if b is not None else None
    if backend is None:  # float64 truth (tests/kernels/truth.py, not the reference)
        e, l = T.lm_head_entropy(hh, ww, bb, q)
    else:
        with ak.use_backend(backend):
            e, l = ak.lm_head_entropy(hh, ww, q, bias=bb, return_lse=True)
        assert e.dtype == torch.float32 and l.dtype == torch.float32
    loss = (e * g_ent.to(e.dtype)).sum()
    if g_lse is not None:
        loss = loss + (l * g_lse.to(l.dtype)).sum()
    loss.backward()
    return e.detach(), l.detach(), hh.grad, ww.grad, (bb.grad if bb is not None else None)


def check(backend, h, w, b, q, rtol=5e-5, grad_rtol=5e-5, with_lse=True):
    lead = h.shape[:-1]
    g_ent = torch.randn(lead)
    g_lse = torch.randn(lead) if with_lse else None
    out = run(backend, h, w, b, q, g_ent, g_lse)
    tru = run(None, h, w, b, q, g_ent, g_lse, dtype=torch.float64)
    same = None if backend == "reference" else run("reference", h, w, b, q, g_ent, g_lse)   # None: no bound from its own output
    names = ["entropy", "lse", "d hidden", "d weight", "d bias"]
    for i, name in enumerate(names):
        if tru[i] is None:
            assert out[i] is None
            continue
        if i >= 2:
            assert out[i].dtype == [h, w, b][i - 2].dtype and out[i].shape == tru[i].shape
        assert_criterion(out[i], None if same is None else same[i], tru[i], rtol if i < 2 else grad_rtol, f"{backend} {name} q={q}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v", VS)
@pytest.mark.parametrize("q", QS)
def test_forward_backward(backend, q, v):
    if backend == "triton" and v > 1000:
        pytest.skip("Triton runs interpreted on the CPU: small shapes only")
    n, d = (5, 24) if v <= 1000 else (2, 8)
    check(backend, *make(n, v, d, scale=3.0 if q == 3.0 else 1.0), q)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("q", [1.0, 1.5, 0.7])
def test_cpp_tiles(q):
    # tile sizes that do not divide N or V: the online statistics must cross tile borders
    h, w, b = make(10, 53, 8)
    fwd = torch.ops.alter_kernels.lm_head_entropy_fwd
    bwd = torch.ops.alter_kernels.lm_head_entropy_bwd
    e0, l0, a0 = fwd(h, w, b, q)
    g, gl = torch.randn(10), torch.randn(10)
    d0 = bwd(g, gl, h, w, b, a0, q, True, True, True)
    for vt, rb in [(7, 3), (1, 1), (53, 10), (16, 4)]:
        e, l, a = fwd(h, w, b, q, vt, rb)
        torch.testing.assert_close(e, e0, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(l, l0, rtol=1e-5, atol=1e-6)
        for x, y in zip(bwd(g, gl, h, w, b, a, q, True, True, True, vt, rb), d0):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_bias_no_lse_leading_dims(backend):
    h, w, _ = make(6, 97, 12)
    check(backend, h.reshape(2, 3, 12), w, None, 1.5, with_lse=False)
    check(backend, h[:1], w, None, 1.0)  # 1 token
    hh = h.clone().requires_grad_()
    with ak.use_backend(backend):
        e = ak.lm_head_entropy(hh, w, 2.0)  # weight without grad: only d hidden
    e.sum().backward()
    assert hh.grad is not None and e.shape == (6,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_rows_and_v1(backend):
    h, w, b = make(0, 11, 4)
    hh, ww = h.requires_grad_(), w.requires_grad_()
    with ak.use_backend(backend):
        e, l = ak.lm_head_entropy(hh, ww, 1.5, bias=b, return_lse=True)
    assert e.shape == (0,) and l.shape == (0,)
    if backend != "reference":  # the reference's 0-row output is not attached to the graph
        (e.sum() + l.sum()).backward()
        assert torch.equal(ww.grad, torch.zeros_like(w))
    h, w, b = make(3, 1, 4)
    with ak.use_backend(backend):
        e = ak.lm_head_entropy(h, w, 1.5, bias=b)
    assert torch.equal(e, torch.zeros(3))
    check(backend, h, w, b, 1.5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q", [0.5, 1.0, 2.0])
def test_inf_bias_and_nan(backend, q):
    h, w, b = make(4, 40, 8)
    b[::4] = -math.inf  # masked vocabulary entries: probability 0
    check(backend, h, w, b, q)
    h[2, 3] = math.nan
    with ak.use_backend(backend):
        e, l = ak.lm_head_entropy(h, w, q, bias=b, return_lse=True)
    assert e[2].isnan() and l[2].isnan() and not e[[0, 1, 3]].isnan().any()
    b[:] = -math.inf  # no distribution at all: NaN everywhere, no crash
    with ak.use_backend(backend):
        e = ak.lm_head_entropy(h, w, q, bias=b)
    assert e.isnan().all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(backend, dtype):
    v = 1000 if backend == "triton" else 32000
    h, w, b = make(3, v, 16, dtype=dtype)
    check(backend, h, w, b, 1.5, grad_rtol=1e-2)  # grads are rounded to the input dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q", QS)
def test_gradcheck(backend, q):
    if backend == "triton" and q not in (0.5, 1.0):
        pytest.skip("interpreted Triton: two q values are enough for gradcheck")
    h, w, b = make(2, 9, 4)

    def f(hh, ww, bb):
        with ak.use_backend(backend):
            e, l = ak.lm_head_entropy(hh, ww, q, bias=bb, return_lse=True)
        return e, l

    args = tuple(t.requires_grad_() for t in (h, w, b))
    assert torch.autograd.gradcheck(f, args, eps=1e-3, atol=3e-3, rtol=2e-2, nondet_tol=1e-5)


def test_fp64_dispatch_and_errors():
    h, w, b = make(3, 20, 4, dtype=torch.float64)
    assert ak.lm_head_entropy(h, w, 1.5, bias=b).dtype == torch.float64  # the reference
    if HAS_CPP:
        assert kernels.pick("lm_head_entropy", "cpu").backend == "cpp"
    with pytest.raises(ValueError, match="weight must be"):
        ak.lm_head_entropy(torch.randn(2, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="bias must have shape"):
        ak.lm_head_entropy(torch.randn(2, 4), torch.randn(5, 4), bias=torch.randn(4))
