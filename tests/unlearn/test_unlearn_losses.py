"""Each unlearning loss term against values computed by hand (plain python math) on tiny tensors."""
import math

import pytest
import torch

from alter_kernels.unlearn import objectives as obj


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


LOGITS = [[[2.0, 0.5, -1.0], [0.0, 1.0, 0.2], [1.5, 1.5, -0.5]],
          [[-0.3, 0.8, 2.2], [0.1, 0.1, 0.1], [3.0, -2.0, 0.4]]]
LABELS = [[0, 1, -100], [2, 0, 1]]


def hand_ihl(z, y):
    p = softmax(z)
    return max(0.0, 1 + p[y] - max(v for i, v in enumerate(p) if i != y))


def test_domain_ihl_hand():
    logits, labels = torch.tensor(LOGITS), torch.tensor(LABELS)
    mask = torch.tensor([[True, True, True], [True, False, True]])
    dom = torch.tensor([1, 2])
    loss, counts = obj.domain_ihl(logits, labels, mask, dom)
    d1 = (hand_ihl(LOGITS[0][0], 0) + hand_ihl(LOGITS[0][1], 1)) / 2          # label -100 skipped
    d2 = (hand_ihl(LOGITS[1][0], 2) + hand_ihl(LOGITS[1][2], 1)) / 2          # masked token skipped
    assert counts == {1: 2, 2: 2}
    assert loss.item() == pytest.approx(d1 + d2, abs=1e-6)
    # retain rows (domain 0) never count; an empty mask gives 0 with a graph
    loss0, counts0 = obj.domain_ihl(logits, labels, mask, torch.tensor([0, 0]))
    assert loss0.item() == 0.0 and counts0 == {}


def test_domain_ihl_is_sum_of_domain_means_not_global_mean():
    logits, labels = torch.tensor(LOGITS), torch.tensor(LABELS)
    mask = torch.ones(2, 3, dtype=torch.bool)
    same, _ = obj.domain_ihl(logits, labels, mask, torch.tensor([1, 1]))
    split, _ = obj.domain_ihl(logits, labels, mask, torch.tensor([1, 2]))
    vals = [hand_ihl(LOGITS[0][0], 0), hand_ihl(LOGITS[0][1], 1)]
    vals2 = [hand_ihl(LOGITS[1][t], LABELS[1][t]) for t in range(3)]
    assert same.item() == pytest.approx(sum(vals + vals2) / 5, abs=1e-6)
    assert split.item() == pytest.approx(sum(vals) / 2 + sum(vals2) / 3, abs=1e-6)


def test_masked_nll_hand():
    logits, labels = torch.tensor(LOGITS), torch.tensor(LABELS)
    got = obj.masked_nll(logits, labels, rows=torch.tensor([False, True]))
    want = sum(-math.log(softmax(LOGITS[1][t])[LABELS[1][t]]) for t in range(3)) / 3
    assert got.item() == pytest.approx(want, abs=1e-6)
    assert obj.masked_nll(logits, labels, rows=torch.tensor([False, False])).item() == 0.0


def tsallis_hand(z, q):
    p = softmax(z)
    if q == 1:
        return -sum(v * math.log(v) for v in p)
    return (1 - sum(v ** q for v in p)) / (q - 1)


def test_tsallis_max_hand():
    assert obj.tsallis_max(0.5, 4) == pytest.approx(2 * (math.sqrt(4) - 1))
    assert obj.tsallis_max(2.0, 10) == pytest.approx(1 - 1 / 10)
    assert obj.tsallis_max(1.0, 7) == pytest.approx(math.log(7))
    assert tsallis_hand([0.0] * 4, 0.5) == pytest.approx(obj.tsallis_max(0.5, 4))


def test_struct_drift_hand():
    logits = torch.tensor(LOGITS)
    base = torch.tensor([[0.3, 0.9, 1.0], [float("nan"), 0.2, 0.7]])
    mask = torch.tensor([[True, False, True], [True, True, False]])
    got = obj.struct_drift(logits, base, mask, q=0.5)
    smax = 2 * (math.sqrt(3) - 1)
    terms = [((tsallis_hand(LOGITS[0][0], .5) - 0.3) / smax) ** 2,
             ((tsallis_hand(LOGITS[0][2], .5) - 1.0) / smax) ** 2,
             ((tsallis_hand(LOGITS[1][1], .5) - 0.2) / smax) ** 2]       # NaN base (no reference) skipped
    assert got.item() == pytest.approx(sum(terms) / 3, abs=1e-6)
    assert obj.struct_drift(logits, base, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_struct_entropy_mean_and_grad_norm_hand():
    logits = torch.tensor(LOGITS)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    m = obj.struct_entropy_mean(logits, mask, q=0.5)
    want = (tsallis_hand(LOGITS[0][0], .5) + tsallis_hand(LOGITS[1][2], .5)) / 2 / (2 * (math.sqrt(3) - 1))
    assert m.item() == pytest.approx(want, abs=1e-6)
    # ||d f / dA||^2 for f = sum(A^2) + 3 sum(A) is sum((2A + 3)^2); it must stay differentiable
    A = torch.tensor([[0.5, -1.0], [2.0, 0.25]], requires_grad=True)
    f = (A ** 2).sum() + 3 * A.sum()
    r = obj.struct_grad_norm(f, [A])
    vals = [0.5, -1.0, 2.0, 0.25]
    assert r.item() == pytest.approx(sum((2 * a + 3) ** 2 for a in vals), abs=1e-5)
    r.backward()                                   # d/dA sum((2A+3)^2) = 4 (2A + 3)
    assert torch.allclose(A.grad, 4 * (2 * A.detach() + 3))


def test_retain_kl_hand():
    logits, labels = torch.tensor(LOGITS), torch.tensor(LABELS)
    ref = torch.tensor(LOGITS).flip(-1)
    got = obj.retain_kl(logits, ref, labels)
    kls = []
    for b in range(2):
        for t in range(3):
            if LABELS[b][t] == -100:
                continue
            p, q = softmax(LOGITS[b][t]), softmax(LOGITS[b][t][::-1])
            kls.append(sum(qi * (math.log(qi) - math.log(pi)) for pi, qi in zip(p, q)))   # KL(ref || model)
    assert got.item() == pytest.approx(sum(kls) / len(kls), abs=1e-6)


def test_npo_hand():
    lp, rp, b = torch.tensor([-3.0, -10.0]), torch.tensor([-4.0, -9.5]), 0.1
    got = obj.npo_forget(lp, rp, beta=b)
    want = sum((2 / b) * math.log(1 + math.exp(b * (x - y))) for x, y in zip([-3.0, -10.0], [-4.0, -9.5])) / 2
    assert got.item() == pytest.approx(want, abs=1e-5)
    # at pi = pi_ref the loss is (2/beta) log 2
    assert obj.npo_forget(rp, rp, beta=b).item() == pytest.approx(2 / b * math.log(2), abs=1e-5)


def test_shift_alignment():
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    labels = torch.tensor([[-100, 1, 2, 0], [-100, -100, 1, 2]])
    ent = torch.tensor([[9.0, 1.0, 2.0, 3.0], [9.0, 9.0, 4.0, 5.0]])
    sl, sy, se = obj.shift(logits, labels, ent)
    assert torch.equal(sl, logits[:, :3]) and torch.equal(sy, labels[:, 1:]) and torch.equal(se, ent[:, 1:])
