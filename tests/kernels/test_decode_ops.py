"""The decode-shaped ops and route_plan as public ops: every backend (the reference included)
against the routing rule written out in float64 (tests/kernels/truth.py), bad input, and the
registry's dtype rule (float64 goes to the reference of fp32 kernels)."""
import pytest
import torch

import alter_kernels as ak
from alter_kernels import kernels, ops
from alter_kernels.kernels.reference import decode_group_linear_ref
import truth as T  # noqa: E402

ENT = torch.tensor([0.1, 5.0, float("nan"), 0.3, float("inf"), 1.2, 1.2000001, -1.0])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("backend", kernels.available("decode_route", "cpu"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("top_k", [0, 1, 3, 5])
def test_decode_route_matches_reference(backend, dtype, top_k):
    g = gen(top_k)
    h = torch.randn(8, 16, generator=g).to(dtype)
    wg = torch.randn(16, 5, generator=g) * 3
    with ak.use_backend(backend):
        w = ops.decode_route(h, wg, ENT, 1.2, 0.8, 0.01, top_k)
    ref, _ = T.route_plan(h.double() @ wg.double(), ENT, 1.2, 0.8, 0.01, top_k)
    assert w.dtype == torch.float32 and w.shape == (8, 5)
    torch.testing.assert_close(w.double(), ref, rtol=1e-5, atol=1e-6)
    high = ~(ENT <= 1.2)
    assert torch.all(w[high, 0] == 1)                                   # the retain expert on
    assert torch.all((w[high] > 0).sum(1) == 1 + min(top_k, 4))        # plus top-k forget experts
    assert torch.all((w[~high] == 1).sum(1) == 1) and torch.all((w[~high] > 0).sum(1) == 1)   # one-hot


@pytest.mark.parametrize("backend", kernels.available("route_plan", "cpu"))
@pytest.mark.parametrize("with_labels", [False, True])
def test_route_plan_matches_reference(backend, with_labels):
    g = gen(1)
    logits = torch.randn(8, 4, generator=g) * 4
    labels = torch.tensor([0, 1, -1, 3, 2, -1, 1, 0]) if with_labels else None
    with ak.use_backend(backend):
        w, high, am, bm = ops.route_plan(logits, ENT, 1.2, 0.8, 0.01, 2, labels)
    rw, rh = T.route_plan(logits, ENT, 1.2, 0.8, 0.01, 2, labels)
    torch.testing.assert_close(w.double(), rw, rtol=1e-5, atol=1e-6)
    assert torch.equal(high, rh)
    if with_labels:    # spec 4: A learns from high rows; B_e from the low rows labelled e
        assert torch.equal(am, rh)
        want_b = torch.zeros(8, 4, dtype=torch.bool)
        for t in range(8):
            if not rh[t] and labels[t] >= 0:
                want_b[t, labels[t]] = True
        assert torch.equal(bm, want_b)
    else:
        assert am is None and bm is None


def group_case(dtype, seed=0, n=3, e=4, r=2):
    g = gen(seed)
    d_in, outs = 12, (10, 6, 6)
    x = torch.randn(n, d_in, generator=g).to(dtype)
    weights = [torch.randn(d, d_in, generator=g).to(dtype) for d in outs]
    biases = [torch.randn(outs[0], generator=g).to(dtype), None, torch.randn(outs[2], generator=g).to(dtype)]
    a_cat = torch.randn(len(outs) * r, d_in, generator=g).to(dtype)
    b_t = [torch.randn(e, r, d, generator=g).to(dtype) for d in outs]
    w = torch.rand(n, e, generator=g)
    w[0, 2:] = 0
    return x, weights, biases, a_cat, b_t, w


@pytest.mark.parametrize("backend", kernels.available("decode_group_linear", "cpu"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_decode_group_linear_matches_reference(backend, dtype, n):
    case = group_case(dtype, n=n)
    with ak.use_backend(backend):
        ys = ops.decode_group_linear(*case)
    truth = decode_group_linear_ref(*[[t.double() if t is not None else None for t in c] if isinstance(c, list)
                                      else c.double() for c in case])
    # each member: the adapter delta by hand, from the definition
    x, weights, biases, a_cat, b_t, w = case
    r = a_cat.shape[0] // len(weights)
    for k, (y, t) in enumerate(zip(ys, truth)):
        delta = sum(w[:, e:e + 1].double() * (x.double() @ a_cat[k * r:(k + 1) * r].double().t() @ b_t[k][e].double())
                    for e in range(w.shape[1]))
        base = x.double() @ weights[k].double().t() + (biases[k].double() if biases[k] is not None else 0)
        torch.testing.assert_close(t, base + delta)
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        assert y.dtype == dtype and y.shape == t.shape
        torch.testing.assert_close(y.double(), t, rtol=tol, atol=tol)


def few_rows_case(n, d_in, d_out, seed, bias):
    g = gen(seed)
    x = torch.randn(n, d_in, generator=g)
    w = torch.randn(d_out, d_in, generator=g)
    return x, w, (torch.randn(d_out, generator=g) if bias else None)


def truth_linear(x, w, b):
    y = x.double() @ w.double().t()
    return y + b.double() if b is not None else y


@pytest.mark.parametrize("backend", kernels.available("decode_linear", "cpu"))
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("d_in,d_out", [(37, 11), (576, 13), (15, 4), (1537, 3)])
def test_decode_linear_matches_float64(backend, n, d_in, d_out):
    """2-4 rows go through the few-rows kernel (SIMD blocks of 4 outputs, the d_in tail masked)."""
    x, w, b = few_rows_case(n, d_in, d_out, seed=n * 7 + d_in, bias=d_out % 2 == 1)
    with ak.use_backend(backend):
        y = ops.decode_linear(x, w, b)
    assert y.dtype == torch.float32 and y.shape == (n, d_out)
    torch.testing.assert_close(y.double(), truth_linear(x, w, b), rtol=1e-4, atol=1e-4 * d_in ** 0.5)


@pytest.mark.skipif(kernels.native_op("decode_linear") is None, reason="extension not built")
@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_few_rows_kernel_both_paths(portable, n):
    """The SIMD path and the plain C++ fallback (ALTER_PORTABLE builds) against float64."""
    for d_in, d_out in ((37, 11), (17, 70), (16, 5), (3, 9)):
        x, w, b = few_rows_case(n, d_in, d_out, seed=d_in + d_out, bias=d_in == 37)
        y = torch.ops.alter_kernels.decode_linear(x, w, b, portable)
        torch.testing.assert_close(y.double(), truth_linear(x, w, b), rtol=1e-4, atol=1e-4 * d_in ** 0.5)


@pytest.mark.parametrize("backend", kernels.available("decode_group_linear", "cpu"))
@pytest.mark.parametrize("n", [2, 3, 4])
def test_decode_group_linear_few_rows_odd_d_in(backend, n):
    """The group op at the two-stream shapes (2-4 rows, the base rows' expert weights 0) with an odd
    d_in (SIMD tail) and a d_out that is not a multiple of 4, against the definition in float64."""
    g = gen(n)
    d_in, outs, e, r = 37, (11, 6, 13), 3, 2
    x = torch.randn(n, d_in, generator=g)
    weights = [torch.randn(d, d_in, generator=g) for d in outs]
    biases = [None, torch.randn(outs[1], generator=g), None]
    a_cat = torch.randn(len(outs) * r, d_in, generator=g)
    b_t = [torch.randn(e, r, d, generator=g) for d in outs]
    w = torch.rand(n, e, generator=g)
    w[n // 2:] = 0                                        # base rows: no adapter
    with ak.use_backend(backend):
        ys = ops.decode_group_linear(x, weights, biases, a_cat, b_t, w)
    for k, y in enumerate(ys):
        u = x.double() @ a_cat[k * r:(k + 1) * r].double().t()
        delta = sum(w[:, i:i + 1].double() * (u @ b_t[k][i].double()) for i in range(e))
        torch.testing.assert_close(y.double(), truth_linear(x, weights[k], biases[k]) + delta, rtol=1e-4, atol=1e-3)


def test_decode_ops_bad_input():
    h, wg = torch.randn(2, 4), torch.randn(4, 3)
    with pytest.raises(ValueError, match="decode_route: router_weight must be"):
        ops.decode_route(h, torch.randn(5, 3), torch.zeros(2), 1.0, 0.8, 0.01, 1)
    with pytest.raises(ValueError, match=r"decode_route: entropy must have shape \(2,\)"):
        ops.decode_route(h, wg, torch.zeros(3), 1.0, 0.8, 0.01, 1)
    with pytest.raises(ValueError, match="decode_route: tau_low must be a finite number > 0"):
        ops.decode_route(h, wg, torch.zeros(2), 1.0, 0.8, 0.0, 1)
    x, weights, biases, a_cat, b_t, w = group_case(torch.float32)
    with pytest.raises(ValueError, match="one equal length"):
        ops.decode_group_linear(x, weights, biases[:2], a_cat, b_t, w)
    with pytest.raises(ValueError, match=r"b_t\[1\] must have shape"):
        ops.decode_group_linear(x, weights, biases, a_cat, [b_t[0], b_t[0], b_t[2]], w)
    with pytest.raises(ValueError, match=r"decode_linear: weight must be \[d_out, 4\]"):
        ops.decode_linear(h, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"decode_linear: bias must have shape"):
        ops.decode_linear(h, torch.randn(3, 4), torch.randn(4))
    with pytest.raises(ValueError, match=r"route_plan: label 7 out of range"):
        ops.route_plan(torch.randn(2, 3), torch.zeros(2), labels=torch.tensor([7, 0]))


def test_registry_dtype_rule():
    """fp32 kernels do not list float64: it goes to the reference, also when a kernel is forced
    (the forced backend runs wherever it can; a device it cannot run on still raises)."""
    assert kernels.pick("lm_head_entropy", "cpu", torch.float64).backend == "reference"
    assert kernels.pick("tsallis_entropy", "cpu", torch.float64).backend == "reference"
    assert kernels.pick("asym_lora", "cpu", torch.float64).backend in ("cpp", "torch")
    if "cpp" in kernels.available("tsallis_entropy", "cpu"):
        assert kernels.pick("tsallis_entropy", "cpu", torch.float32).backend == "cpp"
        with ak.use_backend("cpp"):
            assert kernels.pick("tsallis_entropy", "cpu", torch.float64).backend == "reference"
            assert kernels.pick("tsallis_entropy", "cpu", torch.bfloat16).backend == "cpp"
            with pytest.raises(RuntimeError, match="cannot run 'tsallis_entropy' on device meta"):
                kernels.pick("tsallis_entropy", "meta", torch.float32)
