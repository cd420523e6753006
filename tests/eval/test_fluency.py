"""alter_kernels.eval.fluency on hand-made strings (no model) and on the tiny test Llama."""
import math

import pytest

from alter_kernels.eval import fluency as fl

FLUENT = ["The capital of the region is a small harbour town with old stone houses.",
          "Bees collect nectar from flowers and turn it into honey inside the hive."]
LOOP = ["his his his his his his his his his his his his",
        "schoolteacher. schoolteacher, schoolteacher, schoolteacher, schoolteacher, schoolteacher"]


def test_loop_scores_high_repetition_and_fluent_text_none():
    loop, ok = fl.fluency_stats(LOOP), fl.fluency_stats(FLUENT)
    assert loop["repetition"] > 0.85
    assert ok["repetition"] == 0.0
    assert loop["distinct_2"] < 0.2 < ok["distinct_2"]
    assert loop["distinct_1"] < ok["distinct_1"]


def test_repetition_exact_value():
    # words a b a b a b: bigrams ab ba ab ba ab -> 2 unique of 5 -> repetition 3/5
    assert fl.repetition_per_text(["a b a b a b"]) == [pytest.approx(0.6)]
    # distinct-1 over two texts: tokens x y x | z -> 3 unique of 4
    assert fl.fluency_stats(["x y x", "z"])["distinct_1"] == pytest.approx(0.75)


def test_degenerate_share_against_reference_threshold():
    ref = ["one two three four", "a b a b a b", "five six seven"]     # repetitions 0, 0.6, 0
    thr = fl.repetition_threshold(ref, q=0.5)
    assert thr == 0.0
    assert fl.repetition_threshold(ref, q=1.0) == pytest.approx(0.6)
    assert fl.degenerate_share(FLUENT + LOOP, thr) == 0.5
    st = fl.fluency_stats(LOOP, threshold=0.6)
    assert st["degenerate_share"] == 1.0 and st["n"] == 2
    with pytest.raises(ValueError):
        fl.repetition_threshold(ref, q=1.5)


def test_nll_ratio_checks_base():
    assert fl.nll_ratio(2.2, 2.0) == pytest.approx(1.1)
    with pytest.raises(ValueError):
        fl.nll_ratio(1.0, 0.0)


def test_text_nll_matches_hand_computation():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from types import SimpleNamespace

    from tiny_llama import VOCAB, tiny_llama

    class CharTok:             # characters -> ids 3..VOCAB-1; pad 0, bos 1, eos 2
        pad_token_id, eos_token_id = 0, 2

        def __call__(self, text, add_special_tokens=True):
            ids = [3 + ord(c) % (VOCAB - 3) for c in text]
            return SimpleNamespace(input_ids=([1] if add_special_tokens else []) + ids)

    model, tok = tiny_llama(), CharTok()
    texts = ["the cat sat on the mat", "a b c"]
    got = fl.text_nll(model, tok, texts)
    tot, n = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok(t, add_special_tokens=True).input_ids])
            lg = model(input_ids=ids).logits[0, :-1].double()
            tot += F.cross_entropy(lg, ids[0, 1:], reduction="sum").item()
            n += ids.shape[1] - 1
    assert math.isclose(got, tot / n, rel_tol=1e-5)
