"""The reference routing plan (spec 3) against the rules written out by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

import alter_kernels as ak


def make(n=12, d=8, e=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(d, e, generator=g)


def test_high_and_low_rows_follow_the_rules():
    h, wg = make(e=5)
    ent = torch.tensor([0.1, 2.0, 1.2, 1.21, math.inf, 0.0, 3.0, 0.5, 1.5, 1.0, 2.5, 0.9])
    plan = ak.route(h, wg, ent, threshold=1.2, tau_high=0.8, tau_low=0.01, top_k=3)
    logits = h @ wg
    for t in range(len(ent)):
        w = plan.expert_weights[t]
        if ent[t] > 1.2:
            assert plan.high[t]
            g = torch.softmax(logits[t] / 0.8, -1)
            top = g[1:].topk(3).indices + 1
            want = torch.zeros(5)
            want[0] = 1
            want[top] = g[top]
            torch.testing.assert_close(w, want)
        else:
            assert not plan.high[t]
            torch.testing.assert_close(w, F.one_hot(logits[t].argmax(), 5).float())
    assert plan.a_grad_mask is None and plan.b_grad_mask is None and plan.router_loss is None
    assert plan.high_fraction() == pytest.approx(6 / 12)


def test_top_k_larger_than_forget_experts_and_single_expert():
    h, wg = make(e=3)
    plan = ak.route(h, wg, torch.full((12,), 5.0), top_k=3)
    assert (plan.expert_weights > 0).all()          # retain + both forget experts
    h, wg = make(e=1)
    plan = ak.route(h, wg, torch.cat([torch.zeros(6), torch.full((6,), 9.0)]), top_k=3)
    torch.testing.assert_close(plan.expert_weights, torch.ones(12, 1))


def test_nan_entropy_counts_as_high():
    h, wg = make()
    plan = ak.route(h, wg, torch.full((12,), math.nan))
    assert plan.high.all()


def test_labels_route_low_tokens_and_build_masks():
    h, wg = make(e=3)
    ent = torch.tensor([0.0, 5.0] * 6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, -1, -1, 2, 2, 1, 1])
    plan = ak.route(h, wg, ent, labels=labels, top_k=3)
    low = ent <= 1.2
    for t in range(12):
        if low[t] and labels[t] >= 0:
            torch.testing.assert_close(plan.expert_weights[t], F.one_hot(labels[t], 3).float())
    torch.testing.assert_close(plan.a_grad_mask, ~low)
    want_b = torch.zeros(12, 3, dtype=torch.bool)
    for t in range(12):
        if low[t] and labels[t] >= 0:
            want_b[t, labels[t]] = True
    assert torch.equal(plan.b_grad_mask, want_b)
    lab = labels >= 0
    ref = F.cross_entropy((h @ wg)[lab], labels[lab])
    assert plan.router_loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_router_loss_reaches_only_the_router():
    h, wg = make(e=3)
    h.requires_grad_()
    wg.requires_grad_()
    plan = ak.route(h, wg, torch.zeros(12), labels=torch.zeros(12, dtype=torch.long))
    plan.router_loss.backward()
    assert wg.grad is not None and wg.grad.abs().sum() > 0


def test_bad_inputs():
    h, wg = make()
    with pytest.raises(ValueError, match=r"router_weight must be \[d, E\]"):
        ak.route(h, torch.randn(7, 4), torch.zeros(12))
    with pytest.raises(ValueError, match=r"entropy must have shape \(12,\)"):
        ak.route(h, wg, torch.zeros(11))
    with pytest.raises(TypeError, match="labels must be an integer"):
        ak.route(h, wg, torch.zeros(12), labels=torch.zeros(12))
    with pytest.raises(ValueError, match="out of range"):
        ak.route(h, wg, torch.zeros(12), labels=torch.full((12,), 4))
