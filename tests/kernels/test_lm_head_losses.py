"""ak.lm_head_token_losses and ak.lm_head_kl (issue 16) on every backend this machine can run.

Ground truth: float64 over the materialised logits (tests/kernels/truth.py, independent of the
reference), differentiated by autograd. Criterion (ALTER_SPEC section 10, as test_entropy_kernels.py):
|kernel - truth| <= |reference_same_dtype - truth| + tol (the reference itself: |reference - truth|
<= tol), for every output and the gradients
w.r.t. hidden, weight and bias, with random weights on every output's gradient. Triton runs
interpreted on the CPU (TRITON_INTERPRET=1, tests/conftest.py): tiny shapes only.
"""
import math

import pytest
import torch

import alter_kernels as ak
from alter_kernels import kernels
import truth as T
from test_entropy_kernels import REF_LOW_PRECISION_KL, assert_criterion

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

BACKENDS = kernels.available("lm_head_token_losses", "cpu")
KL_BACKENDS = kernels.available("lm_head_kl", "cpu")
HAS_CPP = kernels.native_has_kernel("lm_head_losses_fwd", "CPU") and kernels.native_has_kernel("lm_head_kl_fwd", "CPU")
QS = [None, 1.0, 1.5, 2.0]
OUTS = ["nll", "ihl", "entropy", "lse"]


def make(n, v, d, dtype=torch.float32, bias=True, ignore=(1,), ties=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64) * (2.0 / math.sqrt(d))
    b = torch.randn(v, generator=g, dtype=torch.float64) if bias or ties else None
    y = torch.randint(0, v, (n,), generator=g)
    if ties and v >= 8:
        # v = 3, 5, 7 share a weight row and a large bias: exactly tied top logits in every row;
        # label 3 ties with the other maximum (c = 2 others), label 0 faces a 3-way tie
        w[5] = w[7] = w[3]
        b[3] = b[5] = b[7] = 12.0
        y[0::2], y[1::2] = 3, 0
    for i in ignore:
        if i < n:
            y[i] = -100
    return h.to(dtype), w.to(dtype), (b.to(dtype) if b is not None else None), y


def run(backend, h, w, b, y, q, grads, dtype=None):
    """Forward + backward through every output; returns (outputs..., dh, dw, db)."""
    cast = (lambda t: t.detach().to(dtype).requires_grad_()) if dtype else (lambda t: t.detach().clone().requires_grad_())
    hh, ww = cast(h), cast(w)
    bb = cast(b) if b is not None else None
    if backend is None:
        out = ak.TokenLosses(*T.token_losses(hh, ww, bb, y, q))
    else:
        with ak.use_backend(backend):
            out = ak.lm_head_token_losses(hh, ww, y, bias=bb, q=q)
        assert all(o is None or o.dtype == torch.float32 for o in out)
    assert (out.entropy is None) == (q is None)
    loss = sum((o * g.to(o.dtype)).sum() for o, g in zip(out, grads) if o is not None)
    loss.backward()
    return [o.detach() if o is not None else None for o in out] + [hh.grad, ww.grad, bb.grad if bb is not None else None]


def check(backend, h, w, b, y, q, rtol=5e-5, grad_rtol=5e-5, which=(0, 1, 2, 3)):
    grads = [torch.randn(h.shape[0], dtype=torch.float64) if i in which else torch.zeros(h.shape[0], dtype=torch.float64)
             for i in range(4)]
    out = run(backend, h, w, b, y, q, grads)
    tru = run(None, h, w, b, y, q, grads, dtype=torch.float64)
    same = None if backend == "reference" else run("reference", h, w, b, y, q, grads)   # None: no bound from its own output
    for i, name in enumerate(OUTS + ["d hidden", "d weight", "d bias"]):
        if tru[i] is None:
            assert out[i] is None, name
            continue
        if i >= 4:
            assert out[i].dtype == [h, w, b][i - 4].dtype and out[i].shape == tru[i].shape
        assert_criterion(out[i], None if same is None else same[i], tru[i], rtol if i < 4 else grad_rtol, f"{backend} {name} q={q}")


def small(backend):
    return backend == "triton"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("v", [1, 7, 300, 5000])
def test_forward_backward(backend, q, v):
    if small(backend) and v > 300:
        pytest.skip("Triton runs interpreted on the CPU: small shapes only")
    n, d = (6, 16) if v <= 300 else (3, 8)
    check(backend, *make(n, v, d), q)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q", [None, 1.0])
@pytest.mark.parametrize("which", [(0,), (1,), (2,), (3,), (0, 1)])
def test_each_output_gradient_alone(backend, q, which):
    if q is None and 2 in which:
        pytest.skip("no entropy without q")
    check(backend, *make(5, 40, 8), q, which=which)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q", [None, 1.5])
def test_ties_in_the_top_two(backend, q):
    h, w, b, y = make(6, 40, 8, ties=True)
    z = h @ w.t() + b
    assert torch.equal(z[:, 3], z[:, 5]) and (z.argmax(-1) == 3).all()
    check(backend, h, w, b, y, q)
    with ak.use_backend(backend):
        out = ak.lm_head_token_losses(h, w, y, bias=b)
    assert torch.allclose(out.ihl[y == 3], torch.ones(3)), "label tied with the other maximum: ihl = 1"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("q", [None, 1.0, 2.0])
def test_low_precision(backend, dtype, q):
    v = 300 if small(backend) else 5000
    check(backend, *make(4, v, 16, dtype=dtype), q, grad_rtol=1e-2)  # grads are rounded to the input dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_bias_leading_dims_and_weight_without_grad(backend):
    h, w, _, y = make(6, 97, 12, bias=False)
    check(backend, h, w, None, y, 1.5)
    hh = h.reshape(2, 3, 12).clone().requires_grad_()
    with ak.use_backend(backend):
        out = ak.lm_head_token_losses(hh, w, y.reshape(2, 3), q=1.0)
    assert out.nll.shape == (2, 3) and out.entropy.shape == (2, 3)
    (out.nll.sum() + out.ihl.sum()).backward()
    assert hh.grad.shape == hh.shape and w.grad is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored_and_zero_rows(backend):
    h, w, b, y = make(4, 30, 8, ignore=range(4))
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    with ak.use_backend(backend):
        out = ak.lm_head_token_losses(hh, ww, y, bias=b, q=1.5)
    for o in out:
        assert torch.equal(o, torch.zeros(4))
    sum(o.sum() for o in out).backward()
    assert torch.equal(hh.grad, torch.zeros_like(h)) and torch.equal(ww.grad, torch.zeros_like(w))
    e = torch.empty(0, 8).requires_grad_()
    with ak.use_backend(backend):
        out = ak.lm_head_token_losses(e, w, torch.empty(0, dtype=torch.long), q=1.0)
    assert all(o.shape == (0,) for o in out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf(backend):
    h, w, b, y = make(4, 40, 8, ignore=())
    b[::4] = -math.inf                  # masked vocabulary entries: probability 0
    y[y % 4 == 0] += 1
    check(backend, h, w, b, y, 1.0)
    h[2, 3] = math.nan
    with ak.use_backend(backend):
        out = ak.lm_head_token_losses(h, w, y, bias=b, q=1.5)
    for o in out:
        assert o[2].isnan() and not o[[0, 1, 3]].isnan().any()


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("q", [None, 1.0, 1.5])
def test_cpp_tiles_cross_borders(q):
    h, w, b, y = make(10, 53, 8, ties=True)
    op = torch.ops.alter_kernels
    with_ent = q is not None
    qq = q or 0.0
    ref = op.lm_head_losses_fwd(h, w, b, y, qq, with_ent, -100)
    g = [torch.randn(10) for _ in range(4)]
    d0 = op.lm_head_losses_bwd(*g, h, w, b, y, ref[4], qq, -100, True, True, True)
    for vt, rb in [(7, 3), (1, 1), (4, 10), (16, 4)]:
        out = op.lm_head_losses_fwd(h, w, b, y, qq, with_ent, -100, vt, rb)
        for x, r in zip(out, ref):
            torch.testing.assert_close(x, r, rtol=1e-5, atol=1e-6)
        for x, r in zip(op.lm_head_losses_bwd(*g, h, w, b, y, out[4], qq, -100, True, True, True, vt, rb), d0):
            torch.testing.assert_close(x, r, rtol=1e-4, atol=1e-5)


# ---- KL(p_base || p_model) ----

def run_kl(backend, hb, h, w, b, mask, g, base_grad, dtype=None):
    cast = (lambda t: t.detach().to(dtype).requires_grad_()) if dtype else (lambda t: t.detach().clone().requires_grad_())
    hbb = cast(hb) if base_grad else hb.detach().to(dtype or hb.dtype)
    hh, ww = cast(h), cast(w)
    bb = cast(b) if b is not None else None
    if backend is None:
        kl = T.kl(hbb, hh, ww, bb, mask)
    else:
        with ak.use_backend(backend):
            kl = ak.lm_head_kl(hbb, hh, ww, bias=bb, mask=mask)
        assert kl.dtype == torch.float32
    (kl * g.to(kl.dtype)).sum().backward()
    return [kl.detach(), hbb.grad if base_grad else None, hh.grad, ww.grad, bb.grad if bb is not None else None]


@pytest.mark.parametrize("backend", KL_BACKENDS)
@pytest.mark.parametrize("base_grad", [False, True])
@pytest.mark.parametrize("dtype,v", [(torch.float32, 7), (torch.float32, 300), (torch.float32, 5000),
                                     (torch.bfloat16, 300)])
def test_kl(backend, base_grad, dtype, v):
    if small(backend) and v > 300:
        pytest.skip("Triton runs interpreted on the CPU: small shapes only")
    if backend == "reference" and dtype != torch.float32:
        pytest.skip(REF_LOW_PRECISION_KL)
    h, w, b, _ = make(5, v, 16, dtype=dtype)
    hb = (h.double() + 0.3 * torch.randn(h.shape, dtype=torch.float64)).to(dtype)
    mask = torch.tensor([True, False, True, True, True])
    g = torch.randn(5, dtype=torch.float64)
    out = run_kl(backend, hb, h, w, b, mask, g, base_grad)
    tru = run_kl(None, hb, h, w, b, mask, g, base_grad, dtype=torch.float64)
    same = None if backend == "reference" else run_kl("reference", hb, h, w, b, mask, g, base_grad)   # None: no bound from its own output
    # fp32: the KL's weight / hidden gradients are differences of nearly equal GEMM terms
    # ((p - p_b) H and p_b (log p_b - log p - KL) H_b: 50x cancellation seen), so the ~1e-6 relative
    # rounding of fp32 logits, different in every implementation, shows at 1e-5 of the result
    grad_rtol = 2e-4 if dtype == torch.float32 else 1e-2
    for i, name in enumerate(["kl", "d hidden_base", "d hidden", "d weight", "d bias"]):
        if tru[i] is None:
            assert out[i] is None
            continue
        assert_criterion(out[i], None if same is None else same[i], tru[i], 5e-5 if i == 0 else grad_rtol, f"{backend} {name}")
    assert out[0][1] == 0 and (out[2][1] == 0).all()


@pytest.mark.parametrize("backend", KL_BACKENDS)
def test_kl_identical_inputs_is_zero(backend):
    h, w, b, _ = make(4, 50, 8)
    hh = h.clone().requires_grad_()
    with ak.use_backend(backend):
        kl = ak.lm_head_kl(h, hh, w, bias=b)
    assert kl.abs().max() < 1e-5
    kl.sum().backward()
    assert hh.grad.abs().max() < 1e-5


# ---- native ops: schema and fakes; torch.compile; memory; bad input ----

def opcheck_cases():
    h, w, b, y = make(4, 33, 8, ties=True)
    op = torch.ops.alter_kernels
    st = op.lm_head_losses_fwd(h, w, b, y, 1.5, True, -100)[4]
    r = lambda: torch.randn(4)  # noqa: E731
    yield "lm_head_losses_fwd", (h, w, b, y, 1.5, True, -100, 0, 0)
    yield "lm_head_losses_fwd", (h.bfloat16(), w.bfloat16(), None, y, 0.0, False, -100, 0, 0)
    yield "lm_head_losses_bwd", (r(), r(), r(), r(), h, w, b, y, st, 1.5, -100, True, True, True, 0, 0)
    yield "lm_head_losses_bwd", (r(), None, None, None, h, w, None, y, st, 1.5, -100, True, False, False, 0, 0)
    hb, mask = h + 0.1, torch.tensor([True, False, True, True])
    kst = op.lm_head_kl_fwd(hb, h, w, b, mask)[1]
    yield "lm_head_kl_fwd", (hb, h, w, b, mask, 0, 0)
    yield "lm_head_kl_fwd", (hb, h, w, None, None, 0, 0)
    yield "lm_head_kl_bwd", (r(), hb, h, w, b, mask, kst, True, True, True, True, 0, 0)
    yield "lm_head_kl_bwd", (r(), hb, h, w, None, None, kst, False, True, False, False, 0, 0)
    wb, bb = w + 0.05, b - 0.1                   # a base head of its own (weight_base, bias_base)
    yield "lm_head_kl_fwd", (hb, h, w, b, mask, 0, 0, wb, bb)
    yield "lm_head_kl_fwd_grad", (hb, h, w, b, mask, 0, 0, None, None)
    yield "lm_head_kl_fwd_grad", (hb.bfloat16(), h.bfloat16(), w.bfloat16(), None, None, 0, 0, wb.bfloat16(), None)
    yield "lm_head_kl_fwd", (hb.bfloat16(), h.bfloat16(), w.bfloat16(), None, None, 0, 0, wb.bfloat16(), None)
    yield "lm_head_kl_bwd", (r(), hb, h, w, b, mask, kst, True, True, True, True, 0, 0, wb, bb, True, True)
    yield "lm_head_kl_bwd", (r(), hb, h, w, b, None, kst, False, True, False, False, 0, 0, wb, None, False, False)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_opcheck_native_ops():
    from alter_kernels.kernels.fake import FAKES
    for name, args in opcheck_cases():
        assert name in FAKES
        torch.library.opcheck(getattr(torch.ops.alter_kernels, name), args,
                              test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    h, w, b, y = make(6, 50, 8)
    hb = h + 0.2 * torch.randn(h.shape)
    h.requires_grad_()
    w.requires_grad_()

    def f(h, w, hb):
        out = ak.lm_head_token_losses(h, w, y, bias=b, q=1.5)
        return out.nll.sum() + out.ihl.mean() + out.entropy.sum() + ak.lm_head_kl(hb, h, w, bias=b).sum()
    want = f(h, w, hb)
    want_g = torch.autograd.grad(want, (h, w))
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(h, w, hb)
    got_g = torch.autograd.grad(got, (h, w))
    torch.testing.assert_close(got, want)
    for a, c in zip(got_g, want_g):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


def saved_numel(fn):
    """Total numel of the tensors autograd saves during fn() that are not its inputs' storage."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sizes


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
def test_autograd_saves_only_inputs_and_row_statistics(backend):
    n, v, d = 8, 2000 if backend == "cpp" else 300, 16
    h, w, b, y = make(n, v, d)
    h.requires_grad_()
    w.requires_grad_()
    with ak.use_backend(backend):
        sizes = saved_numel(lambda: ak.lm_head_token_losses(h, w, y, bias=b, q=1.0))
        kl_sizes = saved_numel(lambda: ak.lm_head_kl(h.detach() + 0.1, h, w, bias=b))
    inputs = {h.numel(), w.numel(), b.numel(), y.numel()}
    for s in (sizes, kl_sizes):
        extra = [x for x in s if x not in inputs]
        assert max(extra) < n * v, f"something [N, V]-sized is saved: {s}"
        assert sum(extra) <= 8 * n, f"saved beyond the inputs: {extra}"


def test_bad_input_errors():
    h, w, b, y = make(4, 30, 8)
    y[2] = 30
    with pytest.raises(ValueError, match=r"labels out of range: labels.flatten\(\)\[2\] = 30"):
        ak.lm_head_token_losses(h, w, y)
    y[2] = -5
    with pytest.raises(ValueError, match="labels out of range"):
        ak.lm_head_token_losses(h, w, y)
    y[:] = 0
    y[2] = -5
    ak.lm_head_token_losses(h, w, y, ignore_index=-5)   # the ignore_index itself is fine
    y[2] = 0
    with pytest.raises(TypeError, match="hidden and weight must have the same dtype"):
        ak.lm_head_token_losses(h.double(), w, y)
    with pytest.raises(TypeError, match="hidden_base and weight must have the same dtype"):
        ak.lm_head_kl(h.bfloat16(), h, w)
    with pytest.raises(ValueError, match="one device"):
        ak.lm_head_token_losses(h.to("meta"), w, y)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        ak.lm_head_token_losses(h, w, y.float())
    with pytest.raises(ValueError, match="labels must have shape"):
        ak.lm_head_token_losses(h, w, y[:3])
    with pytest.raises(ValueError, match="weight must be"):
        ak.lm_head_token_losses(h, w[:, :5], y)
    with pytest.raises(ValueError, match="mask must have shape"):
        ak.lm_head_kl(h, h, w, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="q must be"):
        ak.lm_head_token_losses(h, w, y, q=-1.0)


def test_fp64_goes_to_the_reference_and_matches_the_materialised_losses():
    from alter_kernels.ops.losses import inverted_hinge_loss, token_nll
    h, w, b, y = make(6, 40, 8, dtype=torch.float64)
    out = ak.lm_head_token_losses(h, w, y, bias=b, q=1.0)
    assert out.nll.dtype == torch.float64
    z = h @ w.t() + b
    torch.testing.assert_close(out.nll, token_nll(z, y, shift=False, reduction="none"))
    torch.testing.assert_close(out.ihl, inverted_hinge_loss(z, y, shift=False, reduction="none"))
    if HAS_CPP:
        assert kernels.pick("lm_head_token_losses", "cpu", torch.float32).backend == "cpp"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("q", [None, 1.0, 1.5])
def test_gpu_backends_against_the_cpu_reference(backend, q):
    if backend not in kernels.available("lm_head_token_losses", "cuda"):
        pytest.skip(f"{backend} not built / installed")
    h, w, b, y = make(64, 32003, 64, ties=True)
    grads = [torch.randn(64, dtype=torch.float64) for _ in range(4)]
    tru = run(None, h, w, b, y, q, grads, dtype=torch.float64)
    same = run("reference", h, w, b, y, q, grads)
    dev = [t.cuda() if t is not None else None for t in (h, w, b, y)]
    out = [t.cpu() if t is not None else None for t in run(backend, *dev, q, [g.cuda() for g in grads])]
    for i, name in enumerate(OUTS + ["d hidden", "d weight", "d bias"]):
        if tru[i] is not None:
            assert_criterion(out[i], None if same is None else same[i], tru[i], 5e-5 if i < 4 else 1e-4, f"{backend} {name} q={q}")
    hb = h + 0.2 * torch.randn(h.shape)
    g = torch.randn(64, dtype=torch.float64)
    tru = run_kl(None, hb, h, w, b, None, g, True, dtype=torch.float64)
    same = run_kl("reference", hb, h, w, b, None, g, True)
    out = [t.cpu() for t in run_kl(backend, hb.cuda(), h.cuda(), w.cuda(), b.cuda(), None, g.cuda(), True)]
    for i, name in enumerate(["kl", "d hidden_base", "d hidden", "d weight", "d bias"]):
        assert_criterion(out[i], None if same is None else same[i], tru[i], 5e-5 if i == 0 else 2e-4, f"{backend} {name}")
