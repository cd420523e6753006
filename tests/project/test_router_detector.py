"""bench/router_scorers.py and bench/router_detector.py's model-free pieces (issue 23 study) on
synthetic features: separable clusters are routed, scores are scale-free, the DEV threshold is
the largest that keeps the target recall and is applied unchanged elsewhere."""
from __future__ import annotations

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import router_scorers as rs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
PARAM = {"cosine": None, "mahalanobis": 0.3, "logistic": 1e-2}


def _clusters(n, d=24, sep=2.0, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.zeros(d, dtype=torch.float64)
    mu[:8] = sep                       # class means 2 * sep * sqrt(8) = 11 apart, noise norm ~5
    noise = lambda: torch.randn(n, d, generator=g, dtype=torch.float64)  # noqa: E731
    return noise() + mu + shift, noise() - mu + shift


@pytest.mark.parametrize("scorer", rs.SCORERS)
def test_separable_clusters_are_routed_at_the_midpoint(scorer):
    p, n = _clusters(30)
    score = rs.fit_scorer(scorer, p, n, PARAM[scorer])
    hp, hn = _clusters(200, seed=1)
    assert float((score(hp) >= 0).double().mean()) >= 0.95
    assert float((score(hn) < 0).double().mean()) >= 0.95


@pytest.mark.parametrize("scorer", ["mahalanobis", "logistic"])
def test_scores_are_scale_free(scorer):
    p, n = _clusters(40)
    a = rs.fit_scorer(scorer, p, n, PARAM[scorer])
    b = rs.fit_scorer(scorer, 7.0 * p, 7.0 * n, PARAM[scorer])          # same data in other units
    x = torch.cat(_clusters(10, seed=2))
    assert torch.allclose(a(x), b(7.0 * x), atol=1e-3)
    if scorer == "mahalanobis":                                           # the class means sit at +-0.5
        m = torch.stack([p.mean(0), n.mean(0)])
        assert torch.allclose(a(m), torch.tensor([0.5, -0.5], dtype=torch.float64), atol=1e-9)


def test_dev_threshold_is_the_largest_that_keeps_the_target_recall():
    s = [float(v) for v in range(1, 21)]
    tau = rs.dev_threshold(s, 0.95)
    assert sum(v >= tau for v in s) / len(s) >= 0.95
    bigger = min(v for v in s if v > tau)
    assert sum(v >= bigger for v in s) / len(s) < 0.95
    with pytest.raises(ValueError):
        rs.dev_threshold([])


def _groups(p_scores, n_scores):
    pos = [{"id": f"p{i}"} for i in range(len(p_scores))]
    neg = [{"id": f"n{i}"} for i in range(len(n_scores))]
    return {"template": p_scores, "neighbour": n_scores}, {"template": pos, "neighbour": neg}


def test_dev_threshold_is_applied_unchanged_to_another_family():
    dev_scores, dev_groups = _groups([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], [-0.5, 0.2])
    dev = rs.evaluate(dev_scores, dev_groups, {}, ("template",), ("neighbour",))
    assert dev["tau"] == pytest.approx(0.0) and dev["pooled_recall"] == 1.0
    test_scores, test_groups = _groups([0.3, -0.1, -0.2, 0.5], [0.05, -0.3, -0.4])
    known = {"p0": True, "p1": True}
    test = rs.evaluate(test_scores, test_groups, known, ("template",), ("neighbour",), dev["tau"])
    assert test["tau"] == dev["tau"]                                   # not re-chosen on the test scores
    assert test["recall"]["template"]["all"] == pytest.approx(0.5)
    assert test["recall"]["template"]["known"] == pytest.approx(0.5) and test["recall"]["template"]["n_known"] == 2
    assert test["fp"]["neighbour"]["routed"] == 1 and test["pooled_fp"] == pytest.approx(1 / 3)


def test_choose_dev_prefers_the_lowest_pooled_false_positive_rate():
    grid = [{"name": "a", "dev": {"pooled_fp": 0.2, "worst_fp": 0.2, "min_recall": 1.0}},
            {"name": "b", "dev": {"pooled_fp": 0.1, "worst_fp": 0.5, "min_recall": 0.5}},
            {"name": "c", "dev": {"pooled_fp": 0.1, "worst_fp": 0.3, "min_recall": 0.2}}]
    assert rs.choose_dev(grid)["name"] == "c"


def test_bad_input_is_refused():
    p, n = _clusters(5)
    with pytest.raises(ValueError, match="unknown scorer"):
        rs.fit_scorer("knn", p, n, None)
    with pytest.raises(ValueError, match="at least 2"):
        rs.fit_scorer("cosine", p[:1], n, None)
    with pytest.raises(ValueError, match="shrinkage"):
        rs.fit_scorer("mahalanobis", p, n, 0.0)


def test_detector_prompt_helpers():
    import router_detector as rd
    assert rd.user_start([1, 5, 2, 1, 7, 8, 2, 1, 9], im_start=1) == 3
    with pytest.raises(ValueError):
        rd.user_start([1, 5, 6], im_start=1)
    row = {"id": "x", "question": "Who wrote Romeo and Juliet?", "entity": "Romeo and Juliet"}
    assert rd.augment(row, "swap")["question"] == "Who wrote Rmoeo and Juliet?"
    assert rd.augment(row, "upper")["question"] == "WHO WROTE ROMEO AND JULIET?"
    assert rd.augment(row, "lower")["id"] == "x~lower"
