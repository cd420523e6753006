"""alter_kernels.eval.fluency on hand-made strings (no model), eval.fluency_model on the tiny test Llama."""
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
    from alter_kernels.eval.fluency_model import text_nll
    got = text_nll(model, tok, texts)
    tot, n = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok(t, add_special_tokens=True).input_ids])
            lg = model(input_ids=ids).logits[0, :-1].double()
            tot += F.cross_entropy(lg, ids[0, 1:], reduction="sum").item()
            n += ids.shape[1] - 1
    assert math.isclose(got, tot / n, rel_tol=1e-5)


# ----------------------------------------------------------- per-split results (issue 24)
REF_FLUENT = ["The harbour town has old stone houses and a market.",
              "She was born in a small village near the river.",
              "He wrote three novels about the sea and sailors.",
              "Their books were translated into many languages."]


def test_split_results_judge_a_loop_degenerate_against_a_fluent_reference():
    gens = {"forget": LOOP + FLUENT, "retain": FLUENT + REF_FLUENT[:2]}
    ref = {"forget": REF_FLUENT, "retain": REF_FLUENT}
    out = fl.split_results(gens, ref)
    f, r = out["fluency_forget"], out["fluency_retain"]
    assert set(out) == {"fluency_forget", "fluency_retain"}
    assert f["degenerate_threshold"] == 0.0 and f["reference_repetition"] == 0.0
    assert f["degenerate_share"] == 0.5                    # the two loops, not the two fluent answers
    assert f["repetition"] > 0.4 and r["repetition"] == 0.0 and r["degenerate_share"] == 0.0
    words = [len(t.replace(".", " ").split()) for t in gens["retain"]]                 # 14, 13, 10, 10
    assert f["distinct_2"] < r["distinct_2"] and r["mean_words"] == pytest.approx(sum(words) / 4)
    assert f["repetition_n"] == fl.REPETITION_N and f["degenerate_quantile"] == fl.DEGENERATE_QUANTILE
    # a looping reference raises the bar: the same loop is no longer above its 95th percentile
    looped = fl.split_fluency(LOOP[:1] * 2, reference_texts=LOOP[:1] * 2)
    assert looped["degenerate_share"] == 0.0 and looped["reference_degenerate_share"] == 0.0
    assert looped["reference_repetition"] == pytest.approx(looped["repetition"]) and looped["repetition"] > 0.85


def test_no_reference_means_no_degenerate_share():
    out = fl.split_results({"forget": LOOP, "retain": FLUENT})
    for s in ("forget", "retain"):
        assert out[f"fluency_{s}"]["degenerate_share"] is None
        assert out[f"fluency_{s}"]["degenerate_threshold"] is None
    assert out["fluency_forget"]["repetition"] > 0.85
    part = fl.split_results({"forget": LOOP, "retain": FLUENT}, {"forget": FLUENT})   # retain split missing
    assert part["fluency_forget"]["degenerate_share"] == 1.0 and part["fluency_retain"]["degenerate_share"] is None
    with pytest.raises(ValueError, match="same questions"):
        fl.split_fluency(LOOP, REF_FLUENT)


def test_fluency_ratio():
    assert fl.fluency_ratio(0.1, 0.1) == 1.0 and fl.fluency_ratio(0.0, 0.2) == 1.0       # capped at 1
    assert fl.fluency_ratio(0.55, 0.1) == pytest.approx(0.5)
    assert fl.fluency_ratio(1.0, 0.05) == 0.0 and fl.fluency_ratio(0.5, 1.0) == 1.0
    with pytest.raises(ValueError, match="repetition"):
        fl.fluency_ratio(1.2, 0.0)


def test_reference_generations_keep_only_matching_splits():
    from alter_kernels.cli.eval_inputs import REFERENCE_FORMAT, reference_generations
    saved = {"format": REFERENCE_FORMAT, "retain_fingerprint": "abc", "max_new_tokens": 6,
             "generations": {"forget": ["a", "b"], "retain": ["c"]}}
    assert reference_generations(saved, "abc", {"forget": 2, "retain": 1}, 6) == (saved["generations"], [])
    gens, notes = reference_generations(saved, "xyz", {"forget": 3, "retain": 1}, 6)
    assert gens == {} and len(notes) == 2 and "2 generations for 3" in notes[0] and "fingerprint" in notes[1]
    gens, notes = reference_generations(saved, "abc", {"forget": 2, "retain": 1}, 200)
    assert gens == {} and "max_new_tokens 6, not 200" in notes[0]
    output = {"max_new_tokens": 6, "forget": {"generations": ["a", "b"]}, "retain": {"n": 1}, "meta": {}}
    gens, notes = reference_generations(output, "abc", {"forget": 2, "retain": 1}, 6)   # an alter-eval output
    assert gens == {"forget": ["a", "b"]} and notes == ["retain answers: it holds no generations"]
