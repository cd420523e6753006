"""Losses against values computed by hand on tiny tensors."""
import math

import pytest
import torch

import alter_kernels as ak


def test_ihl_hand_values():
    # one sequence, 3 positions, V = 3; no shift so each row is scored against its own label
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]]))
    labels = torch.tensor([[0, 2, -100]])
    # row 0: 1 + 0.7 - 0.2 = 1.5 ; row 1: 1 + 0.3 - 0.5 = 0.8 ; row 2 ignored
    per = ak.inverted_hinge_loss(logits, labels, shift=False, reduction="none")
    torch.testing.assert_close(per, torch.tensor([[1.5, 0.8, 0.0]]))
    assert ak.inverted_hinge_loss(logits, labels, shift=False).item() == pytest.approx(1.15)


def test_ihl_shift_and_range():
    logits = torch.randn(2, 6, 11) * 4
    labels = torch.randint(0, 11, (2, 6))
    labels[0, :3] = -100
    per = ak.inverted_hinge_loss(logits, labels, reduction="none")        # [2, 5]
    assert per.shape == (2, 5) and (per >= 0).all() and (per <= 2).all()
    p = torch.softmax(logits[1, 2], -1)
    y = labels[1, 3]
    other = torch.cat([p[:y], p[y + 1:]]).max()
    assert per[1, 2].item() == pytest.approx((1 + p[y] - other).item(), abs=1e-6)
    assert ak.inverted_hinge_loss(logits, torch.full_like(labels, -100)).item() == 0.0


def test_token_nll_and_sequence_logprob():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[1, 1] = -100
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert ak.token_nll(logits, labels).item() == pytest.approx(ref.item(), rel=1e-6)
    lp = torch.log_softmax(logits, -1)
    want0 = sum(lp[0, t, labels[0, t + 1]] for t in range(4))
    want1 = sum(lp[1, t, labels[1, t + 1]] for t in range(4) if labels[1, t + 1] != -100)
    torch.testing.assert_close(ak.sequence_logprob(logits, labels), torch.stack([want0, want1]))


def test_npo_hand_values():
    logp = torch.tensor([-3.0, -1.0])
    ref = torch.tensor([-2.0, -1.0])
    beta = 0.1
    want = [-(2 / beta) * math.log(1 / (1 + math.exp(beta * d))) for d in (-1.0, 0.0)]
    torch.testing.assert_close(ak.npo_loss(logp, ref, beta, reduction="none"), torch.tensor(want))
    # the (2/beta) log(1 + (pi/pi_ref)^beta) form of the spec
    alt = [(2 / beta) * math.log(1 + math.exp(beta * d)) for d in (-1.0, 0.0)]
    assert ak.npo_loss(logp, ref, beta).item() == pytest.approx(sum(alt) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="beta must be > 0"):
        ak.npo_loss(logp, ref, 0.0)
