"""bench/router_answer_keys.py's model-free pieces (issue 23 study) on synthetic probabilities:
the score is the max over the key columns, the gate zeroes high-entropy positions, the DEV
threshold is applied unchanged to another family, and the first firing position and its offset
from the alias token are the ones planted."""
from __future__ import annotations

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import router_answer_keys as rak  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _probs(peaks: dict, positions: int = 6, keys: int = 5, floor: float = 0.01) -> torch.Tensor:
    """[positions, keys] at ``floor`` with ``peaks`` {(position, key): p} planted."""
    p = torch.full((positions, keys), floor)
    for (j, k), v in peaks.items():
        p[j, k] = v
    return p


def test_score_is_the_max_over_the_chosen_key_columns_only():
    p = _probs({(2, 1): 0.3, (2, 3): 0.7, (4, 4): 0.9})
    s = rak.position_scores(p, [1, 3])
    assert s[2] == pytest.approx(0.7)                  # max of 0.3 and 0.7, not their sum or the first
    assert s[4] == pytest.approx(0.01)                 # key 4 is not in the set
    assert float(rak.position_scores(p, [1]).max()) == pytest.approx(0.3)


def test_ratio_score_is_one_exactly_where_a_key_is_the_argmax():
    p = _probs({(1, 0): 0.3, (3, 2): 0.2})
    pmax = torch.tensor([0.5, 0.3, 0.6, 0.2, 0.5, 0.5])        # position 1 and 3: a key is the top token
    s = rak.position_scores(p, [0, 2], pmax=pmax)
    assert [j for j in range(6) if s[j] >= 1.0] == [1, 3]
    assert s[0] == pytest.approx(0.01 / 0.5)


def test_gate_zeroes_positions_above_the_entropy_threshold():
    p = _probs({(1, 0): 0.8, (3, 0): 0.6})
    ent = torch.tensor([0.1, 2.0, 0.1, 0.5, 0.1, 0.1])
    s = rak.position_scores(p, [0], ent, theta=1.2)
    assert s[1] == 0.0 and s[3] == pytest.approx(0.6)
    assert rak.first_fire(s, 0.5) == 3


def test_first_fire_and_offset_from_the_alias_token():
    s = torch.tensor([0.0, 0.1, 0.6, 0.9, 0.2])
    assert rak.first_fire(s, 0.5) == 2
    assert rak.first_fire(s, 0.95) is None
    groups = {"forget": [{"id": "a"}, {"id": "b"}, {"id": "c"}], "template": [{"id": "d"}]}
    scores = {"forget": [s, s, s], "template": [torch.tensor([0.9, 0.0])]}
    recs = {"a": {"alias_at": 2}, "b": {"alias_at": 4}, "c": {"alias_at": None}, "d": {"alias_at": 1}}
    ff = rak.fire_offsets(scores, groups, recs, {"a": True, "b": True, "c": True, "d": True}, 0.5)
    assert ff["offsets"] == [0, -2, -1]
    assert (ff["before"], ff["at"], ff["after"], ff["no_alias_in_answer"]) == (2, 1, 0, 1)
    known = {"a": True, "b": False, "c": True, "d": True}      # b is not base-known: left out
    ff = rak.fire_offsets(scores, groups, recs, known, 0.85)
    assert ff["offsets"] == [1, -1] and ff["after"] == 1 and ff["never"] == 0
    ff = rak.fire_offsets(scores, groups, recs, known, 0.95)
    assert ff["never"] == 2 and ff["offsets"] == []


def _family(pos_peaks: list[float], neg_peaks: list[float]) -> tuple[dict, dict]:
    """A family with held-out 'template' rows scoring pos_peaks and 'mention' rows neg_peaks."""
    mk = lambda kind, i: {"id": f"{kind}{i}", "kind": kind, "question": "q", "fact": "f", "entity": "e"}  # noqa: E731
    pos = [mk("template", i) for i in range(len(pos_peaks))]
    neg = [mk("mention", i) for i in range(len(neg_peaks))]
    rows = {"forget": [mk("forget", 0)], "probes": pos, "retain_train": [mk("retain", 0)], "neighbour": [],
            "mention": neg, "homonym": [mk("homonym", 0)], "general": [mk("general", 0), mk("general", 1)]}
    recs, answers = {}, {}
    for r, v in zip([rows["forget"][0]] + pos + neg + rows["retain_train"] + rows["homonym"] + rows["general"],
                    [1.0] + pos_peaks + neg_peaks + [0.0] * 4):
        recs[r["id"]] = {"probs": _probs({(1, 0): v} if v else {}), "tsallis": torch.zeros(6), "alias_at": 1}
        answers[r["id"]] = {"answer": "a"}
    bc = {i: True for i in recs}
    return {"rows": rows, "base_correct": bc, "answers": answers}, recs


def test_dev_tau_is_the_largest_keeping_recall_and_is_applied_unchanged():
    dev, dev_recs = _family([0.9, 0.8, 0.7, 0.6] * 5, [0.05])      # 20 held-out rows: 19 >= 0.6 needs tau 0.6
    d = rak.evaluate_family(dev, dev_recs, [0], "none")
    assert d["tau"] == pytest.approx(0.6)
    assert d["recall"]["template"]["known"] == 1.0
    test, test_recs = _family([0.65, 0.55, 0.9, 0.3], [0.62, 0.1])
    t = rak.evaluate_family(test, test_recs, [0], "none", d["tau"])
    assert t["tau"] == d["tau"]
    assert t["recall"]["template"]["known"] == pytest.approx(0.5)   # 0.65 and 0.9 pass 0.6; a TEST choice would differ
    assert t["fp"]["mention"]["routed"] == 1
    assert t["fp_examples"][0]["group"] == "mention" and t["fp_examples"][0]["position"] == 1
