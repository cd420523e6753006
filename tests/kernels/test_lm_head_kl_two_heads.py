"""ak.lm_head_kl with a base head of its own (weight_base / bias_base): the KL baseline's
reference model keeps the head the trained model moves away from.

Ground truth: float64 over the materialised logits (tests/kernels/truth.py, not the reference),
differentiated by autograd; criterion of ALTER_SPEC section 10 (|kernel - truth| <=
|reference_same_dtype - truth| + tol; the reference itself: <= tol), forward and backward w.r.t. every
input that requires grad, on every backend this machine runs (Triton interpreted: tiny shapes).
"""
import pytest
import torch

import alter_kernels as ak
from alter_kernels import kernels
import truth as T
from test_entropy_kernels import REF_LOW_PRECISION_KL, assert_criterion
from test_lm_head_losses import HAS_CPP, make, small

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

KL_BACKENDS = kernels.available("lm_head_kl", "cpu")
NAMES = ["kl", "d hidden_base", "d hidden", "d weight", "d bias", "d weight_base", "d bias_base"]


def two_heads(n, v, d, dtype=torch.float32, bias=True, bias_base=True, seed=0):
    """Model and base inputs: the base head is the model's moved a little (as after training)."""
    h, w, b, _ = make(n, v, d, dtype=torch.float64, bias=bias, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    hb = h + 0.3 * torch.randn(h.shape, generator=g, dtype=torch.float64)
    wb = w + 0.1 * torch.randn(w.shape, generator=g, dtype=torch.float64) * w.std()
    bb = torch.randn(v, generator=g, dtype=torch.float64) if bias_base else None
    return [t.to(dtype) if t is not None else None for t in (hb, h, w, b, wb, bb)]


def run_kl2(backend, inputs, mask, g, grad_of, dtype=None):
    """Forward + backward; grad_of: which of (hb, h, w, b, wb, bb) require grad. Returns [kl, grads...]."""
    ts = []
    for t, need in zip(inputs, grad_of):
        t = None if t is None else t.detach().to(dtype or t.dtype).clone()
        ts.append(t.requires_grad_() if (need and t is not None) else t)
    hb, h, w, b, wb, bb = ts
    if backend is None:
        kl = T.kl(hb, h, w, b, mask, wb=wb, bb=bb)
    else:
        with ak.use_backend(backend):
            kl = ak.lm_head_kl(hb, h, w, bias=b, mask=mask, weight_base=wb, bias_base=bb)
        assert kl.dtype == torch.float32
    if any(t is not None and t.requires_grad for t in ts):
        (kl * g.to(kl.dtype)).sum().backward()
    return [kl.detach()] + [t.grad if t is not None and t.requires_grad else None for t in ts]


def check(backend, inputs, grad_of, mask=None, grad_rtol=None):
    n = inputs[1].shape[0]
    dtype = inputs[1].dtype
    if backend == "reference" and dtype != torch.float32:
        pytest.skip(REF_LOW_PRECISION_KL)
    g = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = run_kl2(backend, inputs, mask, g, grad_of)
    tru = run_kl2(None, inputs, mask, g, grad_of, dtype=torch.float64)
    same = None if backend == "reference" else run_kl2("reference", inputs, mask, g, grad_of)   # None: no bound from its own output
    grad_rtol = grad_rtol or (2e-4 if dtype == torch.float32 else 1e-2)
    for i, name in enumerate(NAMES):
        if tru[i] is None:
            assert out[i] is None, f"{backend} {name}"
            continue
        if i > 0:
            assert out[i].dtype == inputs[i - 1].dtype and out[i].shape == tru[i].shape, name
        assert_criterion(out[i], None if same is None else same[i], tru[i], 5e-5 if i == 0 else grad_rtol, f"{backend} {name}")
    return out


MODEL_SIDE = (False, True, True, True, False, False)    # the engine's case: a constant base
EVERYTHING = (True,) * 6


@pytest.mark.parametrize("backend", KL_BACKENDS)
@pytest.mark.parametrize("grad_of", [MODEL_SIDE, EVERYTHING, (False, True, False, False, False, False),
                                     (False, False, False, False, True, True)], ids=["model", "all", "h", "base-head"])
@pytest.mark.parametrize("dtype,v", [(torch.float32, 7), (torch.float32, 300), (torch.float32, 5000),
                                     (torch.bfloat16, 300)])
def test_two_heads_forward_backward(backend, grad_of, dtype, v):
    if small(backend) and v > 300:
        pytest.skip("Triton runs interpreted on the CPU: small shapes only")
    mask = torch.tensor([True, False, True, True, True])
    out = check(backend, two_heads(5, v, 16, dtype=dtype), grad_of, mask=mask)
    assert out[0][1] == 0
    for t in out[1:]:
        assert t is None or t.dim() != 2 or t.shape[0] != 5 or (t[1] == 0).all()


@pytest.mark.parametrize("backend", KL_BACKENDS)
@pytest.mark.parametrize("bias,bias_base", [(True, False), (False, True), (False, False)])
def test_two_heads_bias_combinations(backend, bias, bias_base):
    check(backend, two_heads(4, 37, 8, bias=bias, bias_base=bias_base), EVERYTHING)


@pytest.mark.parametrize("backend", KL_BACKENDS)
def test_two_heads_model_side_with_a_moved_head_only(backend):
    """Same hidden states, different heads: the KL comes from the heads alone (engine, step > 1)."""
    hb, h, w, b, wb, bb = two_heads(6, 50, 8)
    check(backend, [h, h, w, b, wb, b], MODEL_SIDE)


@pytest.mark.parametrize("backend", KL_BACKENDS)
def test_base_head_equal_to_the_shared_head(backend):
    """weight_base = a copy of weight (bias_base = bias): the shared-head KL, and the model side's
    gradient equals the shared head's minus the base share (the base side is constant here)."""
    hb, h, w, b, _, _ = two_heads(5, 60, 8)
    hh = h.clone().requires_grad_()
    with ak.use_backend(backend):
        shared = ak.lm_head_kl(hb, hh, w, bias=b)
        shared.sum().backward()
        gh = hh.grad.clone()
        hh.grad = None
        sep = ak.lm_head_kl(hb, hh, w, bias=b, weight_base=w.clone(), bias_base=b.clone())
        sep.sum().backward()
    torch.testing.assert_close(sep, shared, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(hh.grad, gh, rtol=1e-6, atol=1e-7)
    with ak.use_backend(backend):
        kl = ak.lm_head_kl(h, h, w, bias=b, weight_base=w.clone(), bias_base=b.clone())
    assert kl.abs().max() < 1e-5


@pytest.mark.parametrize("backend", KL_BACKENDS)
def test_two_heads_no_tokens_and_all_masked(backend):
    hb, h, w, b, wb, bb = two_heads(3, 20, 8)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    with ak.use_backend(backend):
        kl = ak.lm_head_kl(hb, hh, ww, bias=b, weight_base=wb, bias_base=bb, mask=torch.zeros(3, dtype=torch.bool))
    assert torch.equal(kl, torch.zeros(3))
    kl.sum().backward()
    assert torch.equal(hh.grad, torch.zeros_like(h)) and torch.equal(ww.grad, torch.zeros_like(w))
    e = torch.empty(0, 8).requires_grad_()
    with ak.use_backend(backend):
        kl = ak.lm_head_kl(e.detach(), e, w, weight_base=wb)
    assert kl.shape == (0,)


def test_two_heads_bad_input():
    hb, h, w, b, wb, bb = two_heads(4, 30, 8)
    with pytest.raises(ValueError, match="weight_base must have shape"):
        ak.lm_head_kl(hb, h, w, weight_base=wb[:5])
    with pytest.raises(TypeError, match="weight_base and weight must have the same dtype"):
        ak.lm_head_kl(hb, h, w, weight_base=wb.double())
    with pytest.raises(TypeError, match="bias_base and weight must have the same dtype"):
        ak.lm_head_kl(hb, h, w, weight_base=wb, bias_base=bb.bfloat16())
    with pytest.raises(ValueError, match="bias_base must have shape"):
        ak.lm_head_kl(hb, h, w, weight_base=wb, bias_base=bb[:3])
    with pytest.raises(ValueError, match="bias_base needs weight_base"):
        ak.lm_head_kl(hb, h, w, bias=b, bias_base=bb)
    with pytest.raises(ValueError, match="one device"):
        ak.lm_head_kl(hb, h, w, weight_base=wb.to("meta"))
    with pytest.raises(TypeError, match="weight_base must be a torch.Tensor"):
        ak.lm_head_kl(hb, h, w, weight_base=wb.numpy())


def test_two_heads_float64_goes_to_the_reference():
    hb, h, w, b, wb, bb = two_heads(4, 30, 8, dtype=torch.float64)
    kl = ak.lm_head_kl(hb, h, w, bias=b, weight_base=wb, bias_base=bb)
    lpb = torch.log_softmax(hb @ wb.t() + bb, -1)
    lp = torch.log_softmax(h @ w.t() + b, -1)
    assert kl.dtype == torch.float64
    torch.testing.assert_close(kl, (lpb.exp() * (lpb - lp)).sum(-1))


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_cpp_two_heads_tiles_cross_borders():
    hb, h, w, b, wb, bb = two_heads(10, 53, 8)
    op = torch.ops.alter_kernels
    ref = op.lm_head_kl_fwd(hb, h, w, b, None, 0, 0, wb, bb)
    g = torch.randn(10)
    flags = (True, True, True, True)
    d0 = op.lm_head_kl_bwd(g, hb, h, w, b, None, ref[1], *flags, 0, 0, wb, bb, True, True)
    for vt, rb in [(7, 3), (1, 1), (16, 4)]:
        out = op.lm_head_kl_fwd(hb, h, w, b, None, vt, rb, wb, bb)
        for x, r in zip(out, ref):
            torch.testing.assert_close(x, r, rtol=1e-5, atol=1e-6)
        for x, r in zip(op.lm_head_kl_bwd(g, hb, h, w, b, None, out[1], *flags, vt, rb, wb, bb, True, True), d0):
            torch.testing.assert_close(x, r, rtol=1e-4, atol=1e-5)


def test_compile_fullgraph_two_heads():
    torch._dynamo.reset()
    hb, h, w, b, wb, bb = two_heads(6, 50, 8)
    h.requires_grad_()
    w.requires_grad_()

    def f(h, w):
        return ak.lm_head_kl(hb, h, w, bias=b, weight_base=wb, bias_base=bb).sum()
    want = f(h, w)
    want_g = torch.autograd.grad(want, (h, w))
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(h, w)
    got_g = torch.autograd.grad(got, (h, w))
    torch.testing.assert_close(got, want)
    for a, c in zip(got_g, want_g):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


# ---- only hidden needs a gradient (the engine's case): the C++ kernel's flash-style forward ----

@pytest.mark.parametrize("backend", KL_BACKENDS)
@pytest.mark.parametrize("two", [False, True], ids=["shared", "two"])
@pytest.mark.parametrize("dtype,v", [(torch.float32, 7), (torch.float32, 300), (torch.float32, 5000),
                                     (torch.bfloat16, 300), (torch.bfloat16, 5000)])
def test_only_hidden_needs_grad(backend, two, dtype, v):
    if small(backend) and v > 300:
        pytest.skip("Triton runs interpreted on the CPU: small shapes only")
    hb, h, w, b, wb, bb = two_heads(5, v, 16, dtype=dtype)
    inputs = [hb, h, w, b, wb, bb] if two else [hb, h, w, b, None, None]
    check(backend, inputs, (False, True, False, False, False, False), mask=torch.tensor([1, 0, 1, 1, 1]).bool())


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_cpp_flash_forward_saves_one_row_gradient_and_crosses_tiles():
    from test_lm_head_losses import saved_numel
    hb, h, w, b, wb, bb = two_heads(10, 53, 8)
    hh = h.clone().requires_grad_()
    with ak.use_backend("cpp"):
        sizes = saved_numel(lambda: ak.lm_head_kl(hb, hh, w, bias=b, weight_base=wb, bias_base=bb))
    assert sizes == [h.numel()], sizes            # dKL/dh per unit gradient, not the inputs
    op = torch.ops.alter_kernels
    mask = torch.ones(10, dtype=torch.bool)
    mask[4] = False
    for base in [(None, None), (wb, bb)]:
        g = torch.randn(10)
        kl0, st0 = op.lm_head_kl_fwd(hb, h, w, b, mask, 0, 0, *base)
        dh0 = op.lm_head_kl_bwd(g, hb, h, w, b, mask, st0, False, True, False, False, 0, 0, *base, False, False)[1]
        for vt, rb in [(0, 0), (7, 3), (1, 1), (16, 4), (53, 10)]:
            kl, st, dh1 = op.lm_head_kl_fwd_grad(hb, h, w, b, mask, vt, rb, *base)
            torch.testing.assert_close(kl, kl0, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(st, st0, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(g.unsqueeze(-1) * dh1, dh0, rtol=1e-4, atol=1e-5)
            assert (dh1[4] == 0).all()


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_cpp_flash_forward_nan_and_masked_vocabulary():
    hb, h, w, b, _, _ = two_heads(4, 40, 8)
    b[::4] = float("-inf")                        # masked vocabulary entries: probability 0
    check("cpp", [hb, h, w, b, None, None], (False, True, False, False, False, False))
    h[2, 3] = float("nan")
    hh = h.clone().requires_grad_()
    with ak.use_backend("cpp"):
        kl = ak.lm_head_kl(hb, hh, w, bias=b)
    kl.sum().backward()
    assert kl[2].isnan() and not kl[[0, 1, 3]].isnan().any()
    assert hh.grad[2].isnan().all() and not hh.grad[[0, 1, 3]].isnan().any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("grad_of", [MODEL_SIDE, EVERYTHING], ids=["model", "all"])
def test_gpu_two_heads_against_the_cpu_reference(backend, grad_of):
    if backend not in kernels.available("lm_head_kl", "cuda"):
        pytest.skip(f"{backend} not built / installed")
    inputs = two_heads(64, 32003, 64)
    g = torch.randn(64, dtype=torch.float64)
    tru = run_kl2(None, inputs, None, g, grad_of, dtype=torch.float64)
    same = run_kl2("reference", inputs, None, g, grad_of)
    dev = [t.cuda() if t is not None else None for t in inputs]
    out = [t.cpu() if t is not None else None for t in run_kl2(backend, dev, None, g.cuda(), grad_of)]
    for i, name in enumerate(NAMES):
        if tru[i] is not None:
            assert_criterion(out[i], None if same is None else same[i], tru[i], 5e-5 if i == 0 else 2e-4, f"{backend} {name}")
