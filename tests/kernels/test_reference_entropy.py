"""The reference entropy ops against independent float64 formulas (spec 2)."""
import math

import pytest
import torch

import alter_kernels as ak
from alter_kernels.kernels.reference import lm_head_entropy_ref, tsallis_entropy_ref

QS = [0.5, 1.0, 1.5, 2.0, 3.0]


def naive_tsallis(z: torch.Tensor, q: float) -> torch.Tensor:
    """Textbook formula on explicit probabilities, float64."""
    p = torch.softmax(z.double(), -1)
    if q == 1.0:
        return -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)
    return (1 - (p ** q).sum(-1)) / (q - 1)


def spec_grad(z: torch.Tensor, q: float) -> torch.Tensor:
    """dS/dz from the closed forms of spec 2."""
    p = torch.softmax(z.double(), -1)
    if q == 1.0:
        s = naive_tsallis(z, 1.0)
        return -p * (p.log() + s[..., None])
    spq = (p ** q).sum(-1, keepdim=True)
    return -q / (q - 1) * (p ** q - p * spq)


@pytest.mark.parametrize("q", QS)
@pytest.mark.parametrize("v", [1, 7, 1000])
def test_forward_matches_textbook(q, v):
    z = torch.randn(5, v, dtype=torch.float64) * 3
    torch.testing.assert_close(tsallis_entropy_ref(z, q), naive_tsallis(z, q), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("q", QS)
def test_gradient_matches_spec_closed_form(q):
    z = (torch.randn(4, 33, dtype=torch.float64) * 2).requires_grad_()
    tsallis_entropy_ref(z, q).sum().backward()
    torch.testing.assert_close(z.grad, spec_grad(z.detach(), q), rtol=1e-10, atol=1e-12)


def test_q_to_one_limit_is_shannon():
    z = torch.randn(3, 50, dtype=torch.float64)
    s1 = tsallis_entropy_ref(z, 1.0)
    for eps in (1e-4, -1e-4):
        torch.testing.assert_close(tsallis_entropy_ref(z, 1.0 + eps), s1, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("q", QS)
def test_uniform_reaches_the_maximum(q):
    v = 64
    z = torch.zeros(1, v, dtype=torch.float64)
    top = math.log(v) if q == 1 else (1 - v ** (1 - q)) / (q - 1)
    assert tsallis_entropy_ref(z, q).item() == pytest.approx(top, rel=1e-12)
    assert (tsallis_entropy_ref(torch.randn(20, v, dtype=torch.float64), q) <= top + 1e-12).all()


@pytest.mark.parametrize("q", QS)
def test_minus_inf_is_probability_zero_and_grad_is_finite(q):
    z = torch.randn(2, 10, dtype=torch.float64)
    zi = z.clone()
    zi[:, 7:] = -math.inf
    zi.requires_grad_()
    s = tsallis_entropy_ref(zi, q)
    torch.testing.assert_close(s, naive_tsallis(z[:, :7], q))
    s.sum().backward()
    assert torch.isfinite(zi.grad).all()
    assert (zi.grad[:, 7:] == 0).all()


def test_all_minus_inf_and_nan_rows_give_nan_without_crashing():
    z = torch.randn(3, 5)
    z[0] = -math.inf
    z[2, 1] = math.nan
    for q in QS:
        s = tsallis_entropy_ref(z, q)
        assert torch.isnan(s[0]) and torch.isnan(s[2]) and torch.isfinite(s[1])


@pytest.mark.parametrize("q", [0.5, 1.0, 2.0])
def test_gradcheck(q):
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: tsallis_entropy_ref(t, q), (z,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_input_returns_fp32(dtype):
    z = torch.randn(4, 100).to(dtype)
    s = ak.tsallis_entropy(z, 1.5)
    assert s.dtype == torch.float32
    torch.testing.assert_close(s.double(), naive_tsallis(z.double(), 1.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("q", [0.5, 1.0, 1.5])
def test_lm_head_entropy_ref_matches_materialised_logits(q):
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(53, 16, dtype=torch.float64, requires_grad=True)
    b = torch.randn(53, dtype=torch.float64, requires_grad=True)
    ent, lse = lm_head_entropy_ref(h, w, q, bias=b, return_lse=True, chunk_size=8)   # 5 chunks, ragged end
    z = h @ w.t() + b
    torch.testing.assert_close(ent, naive_tsallis(z, q))
    torch.testing.assert_close(lse, torch.logsumexp(z, -1))
    g = torch.autograd.grad((ent * torch.arange(37.0, dtype=torch.float64)).sum(), (h, w, b))
    g_ref = torch.autograd.grad((naive_tsallis(h @ w.t() + b, q) * torch.arange(37.0, dtype=torch.float64)).sum(),
                                (h, w, b))
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r)


def test_lm_head_entropy_gradcheck_and_zero_rows():
    h = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: lm_head_entropy_ref(a, b, 1.5, chunk_size=2), (h, w))
    assert ak.lm_head_entropy(torch.randn(0, 4), torch.randn(9, 4)).shape == (0,)
    assert ak.lm_head_entropy(torch.randn(2, 3, 4), torch.randn(9, 4)).shape == (2, 3)


@pytest.mark.parametrize("bad,msg", [
    (dict(q=0), "q must be"), (dict(q=-1.0), "q must be"), (dict(q=float("nan")), "q must be"),
])
def test_bad_q(bad, msg):
    with pytest.raises(ValueError, match=msg):
        ak.tsallis_entropy(torch.randn(2, 3), **bad)


def test_bad_inputs():
    with pytest.raises(TypeError, match="logits must be float"):
        ak.tsallis_entropy(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="V >= 1"):
        ak.tsallis_entropy(torch.randn(2, 0))
    with pytest.raises(ValueError, match=r"weight must be \[V, d\]"):
        ak.lm_head_entropy(torch.randn(2, 4), torch.randn(9, 5))
