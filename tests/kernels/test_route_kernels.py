"""ak.route backends (the C++ plan kernel) against the reference plan (spec 3, 4)."""
from __future__ import annotations

import itertools

import pytest
import torch

import alter_kernels as ak
from alter_kernels import kernels
from alter_kernels.kernels.reference.routing import route_ref

FAST = [b for b in kernels.available("route", "cpu") if b != "reference"]
pytestmark = pytest.mark.skipif(not FAST, reason="no fast route backend built")


def case(n, E, seed, with_labels, d=24):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    Wg = torch.randn(d, E, generator=g)
    ent = torch.rand(n, generator=g) * 2.4
    if n > 3:
        ent[0], ent[1], ent[2] = float("inf"), float("nan"), 1.2     # +inf and NaN are high; == theta is low
    labels = torch.randint(-1, E, (n,), generator=g) if with_labels else None
    return hidden, Wg, ent, labels


def compare(p, q):
    torch.testing.assert_close(p.expert_weights, q.expert_weights, rtol=1e-5, atol=1e-6)
    assert torch.equal(p.high, q.high)
    assert torch.equal(p.expert_weights != 0, q.expert_weights != 0)
    for name in ("a_grad_mask", "b_grad_mask"):
        a, b = getattr(p, name), getattr(q, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name
    torch.testing.assert_close(p.router_logits, q.router_logits)
    assert (p.router_loss is None) == (q.router_loss is None)
    if p.router_loss is not None:
        torch.testing.assert_close(p.router_loss, q.router_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("E,top_k", list(itertools.product([1, 2, 5, 9], [0, 1, 3, 10])))
@pytest.mark.parametrize("with_labels", [False, True])
def test_plan_matches_reference(backend, E, top_k, with_labels):
    for n in (0, 1, 37):
        hidden, Wg, ent, labels = case(n, E, seed=E * 10 + top_k + n, with_labels=with_labels)
        ref = route_ref(hidden, Wg, ent, 1.2, 0.8, 0.01, top_k, labels)
        with ak.use_backend(backend), torch.no_grad():
            got = ak.route(hidden, Wg, ent, 1.2, 0.8, 0.01, top_k, labels)
        compare(got, ref)


@pytest.mark.parametrize("backend", FAST)
def test_all_low_all_high(backend):
    hidden, Wg, _, labels = case(20, 5, 0, True)
    for ent in (torch.zeros(20), torch.full((20,), float("inf"))):
        with ak.use_backend(backend), torch.no_grad():
            got = ak.route(hidden, Wg, ent, labels=labels)
        compare(got, route_ref(hidden, Wg, ent, labels=labels))


@pytest.mark.parametrize("backend", FAST)
def test_training_path_keeps_router_gradients(backend):
    hidden, Wg, ent, labels = case(16, 5, 1, True)
    Wg = Wg.clone().requires_grad_(True)
    with ak.use_backend(backend):
        plan = ak.route(hidden, Wg, ent, labels=labels)
    plan.router_loss.backward()
    assert Wg.grad is not None and Wg.grad.abs().sum() > 0
    assert plan.expert_weights.requires_grad         # the router_grad_from_task path stays open


@pytest.mark.parametrize("backend", FAST)
def test_bad_label(backend):
    hidden, Wg, ent, _ = case(4, 3, 2, False)
    with ak.use_backend(backend), torch.no_grad(), pytest.raises((ValueError, RuntimeError), match="out of range"):
        ak.route(hidden, Wg, ent, labels=torch.tensor([0, 1, 3, -1]))


@pytest.mark.parametrize("backend", FAST)
def test_ties_pick_lowest_expert_ids(backend):
    """A zero router (a fresh patch) ties every expert: the kernel takes the lowest forget ids
    (torch.topk's choice among ties is unspecified, so the reference may differ here)."""
    hidden = torch.randn(3, 8)
    with ak.use_backend(backend), torch.no_grad():
        plan = ak.route(hidden, torch.zeros(8, 6), torch.tensor([float("inf"), 0.0, 5.0]), top_k=3)
    w = plan.expert_weights
    torch.testing.assert_close(w[0], torch.tensor([1.0, 1 / 6, 1 / 6, 1 / 6, 0.0, 0.0]))
    torch.testing.assert_close(w[1], torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
