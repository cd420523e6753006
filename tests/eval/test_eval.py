"""Evaluation metrics against hand-computed values, and the model-based evaluators on a tiny
random Llama (shape and consistency checks, not quality)."""
import json
import math

import pytest
import torch

from alter_kernels.eval import (QAFormat, answer_nll, distinct_n, evaluate_tofu, forget_quality,
                                harmonic_mean, load_rows, mcq_accuracy, model_utility,
                                repetition_rate, rouge_l, rouge_l_recall, rouge_tokens, split_stats,
                                truth_ratio_from_nll, truth_ratio_score, truth_ratios, verbatim_rouge)


# ---------------------------------------------------------------- ROUGE-L
def test_rouge_tokens_like_rouge_score():
    assert rouge_tokens("The Glass-Orchard, 1961!") == ["the", "glass", "orchard", "1961"]
    assert rouge_tokens("  ") == []


def test_rouge_is_stemmed_like_tofu():
    # TOFU and open-unlearning score with rouge_score's RougeScorer(use_stemmer=True): "Incas" and
    # "Inca" are one token after stemming (an unstemmed LCS gives recall 0.5 here)
    assert rouge_l_recall("The Inca", "The Incas") == 1.0
    assert rouge_tokens("The Incas", stem=True) == ["the", "inca"]
    assert rouge_tokens("The Incas") == ["the", "incas"]
    assert rouge_l_recall("She writes novels", "She wrote a novel") == pytest.approx(2 / 4)   # she, novel


def _varied_pairs(n=400, seed=0):
    import random
    rng = random.Random(seed)
    words = ["The", "author", "authors", "wrote", "writes", "writing", "novel", "novels", "born", "in",
             "Paris", "1961", "Incas", "Inca", "running", "ran", "studies", "studied", "is", "a", "an",
             "mystery", "mysteries", "Glass-Orchard", "award", "awarded", "awards", "city", "cities", "der",
             "café", "naïve", "x", "of", "'s", "fathers", "father's", "happily", "happiness", "--", ""]
    seps = [" ", " ", " ", ", ", ". ", "-", "; ", "\n", "!"]
    def text():
        k = rng.randint(0, 25)
        return "".join(rng.choice(words) + rng.choice(seps) for _ in range(k)).strip()
    pairs = [(text(), text()) for _ in range(n)]
    # near-copies: a reference and an edited copy of it
    for _ in range(n // 2):
        ref = text()
        toks = ref.split()
        if rng.random() < 0.3:
            rng.shuffle(toks)
        pairs.append((" ".join(t.upper() if rng.random() < 0.2 else t for t in toks if rng.random() > 0.2), ref))
    return pairs


def test_rouge_equals_rouge_score_on_varied_pairs():
    from rouge_score import rouge_scorer
    ref = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = _varied_pairs()
    assert len(pairs) >= 300
    differ = 0
    for pred, target in pairs:
        want = ref.score(target, pred)["rougeL"]
        got = rouge_l(pred, target)
        assert (got["precision"], got["recall"], got["f"]) == (want.precision, want.recall, want.fmeasure)
        unstemmed = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(target, pred)["rougeL"]
        differ += unstemmed.recall != want.recall
    assert differ > 0          # the pairs exercise the stemmer


def test_rouge_l_hand_computed():
    # ref: the cat sat on the mat (6), pred: the cat lay on a mat (6); LCS = the cat on mat = 4
    s = rouge_l("the cat lay on a mat", "the cat sat on the mat")
    assert s["recall"] == pytest.approx(4 / 6)
    assert s["precision"] == pytest.approx(4 / 6)
    assert s["f"] == pytest.approx(4 / 6)
    # short prediction: recall 2/6, precision 2/2, f = 2*1*(1/3)/(4/3) = 0.5
    s = rouge_l("cat mat", "the cat sat on the mat")
    assert (s["recall"], s["precision"], s["f"]) == pytest.approx((1 / 3, 1.0, 0.5))
    assert rouge_l_recall("Port Calder.", "He was born in Port Calder.") == pytest.approx(2 / 6)
    assert rouge_l("", "abc")["recall"] == 0.0 and rouge_l("abc", "")["f"] == 0.0
    assert rouge_l("A B C", "a b c")["f"] == 1.0      # case-insensitive


# ---------------------------------------------------------------- aggregates
def test_harmonic_mean():
    assert harmonic_mean([1, 2, 4]) == pytest.approx(3 / (1 + 0.5 + 0.25))
    assert harmonic_mean([0.5] * 9) == pytest.approx(0.5)
    assert harmonic_mean([0.3, 0.0, 0.9]) == 0.0
    assert math.isnan(harmonic_mean([0.3, float("nan")]))
    with pytest.raises(ValueError):
        harmonic_mean([])
    with pytest.raises(ValueError):
        harmonic_mean([0.5, -1])
    from scipy.stats import hmean
    vals = [0.11, 0.52, 0.93, 0.37]
    assert harmonic_mean(vals) == pytest.approx(float(hmean(vals)))


def test_model_utility_is_harmonic_mean_of_nine():
    parts = [dict(probability=p, rouge=r, truth_ratio=t) for p, r, t in
             ((0.9, 0.8, 0.4), (0.5, 0.6, 0.3), (0.7, 0.95, 0.2))]
    nine = [0.9, 0.8, 0.4, 0.5, 0.6, 0.3, 0.7, 0.95, 0.2]
    assert model_utility(*parts) == pytest.approx(9 / sum(1 / v for v in nine))


def test_forget_quality_ks():
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.uniform(0.2, 0.8, 40).tolist()
    assert forget_quality(a, a) == pytest.approx(1.0)
    disjoint = forget_quality([0.01 * i for i in range(1, 41)], [10 + i for i in range(40)])
    assert disjoint < 1e-10
    # same distribution, different samples: not rejected; shifted: rejected
    b = rng.uniform(0.2, 0.8, 40).tolist()
    assert forget_quality(a, b) > 0.01
    assert forget_quality(a, [x + 0.5 for x in b]) < 1e-3
    with pytest.raises(ValueError):
        forget_quality([], [1.0])


def test_truth_ratio_geometric_and_arithmetic():
    para, pert = [1.0, 2.0], [[1.5, 2.5], [2.0, float("nan")]]
    geo = truth_ratio_from_nll(para, pert)
    assert geo == pytest.approx([math.exp(1.0 - 2.0), 1.0])
    ari = truth_ratio_from_nll(para, pert, "arithmetic")
    assert ari == pytest.approx([(math.exp(-1.5) + math.exp(-2.5)) / 2 / math.exp(-1.0), 1.0])
    assert ari[0] > geo[0]                 # Jensen: arithmetic mean >= geometric mean
    with pytest.raises(ValueError, match="geometric"):
        truth_ratio_from_nll(para, pert, "harmonic")
    with pytest.raises(ValueError, match="no perturbed"):
        truth_ratio_from_nll([1.0], [[float("nan")]])


def test_truth_ratio_score():
    assert truth_ratio_score([0.25, 0.5, 2.0], "retain") == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert truth_ratio_score([0.25, 4.0, 1.0], "forget") == pytest.approx((0.25 + 0.25 + 1.0) / 3)


def test_fluency_proxies():
    assert distinct_n(["a b c d"], 2) == 1.0
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)        # ab, ba, ab
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    assert repetition_rate(["a b a b a b"], 2) == pytest.approx(1 - 2 / 5)
    assert repetition_rate(["x y z", "a a a a"], 2) == pytest.approx((0 + (1 - 1 / 3)) / 2)
    assert distinct_n([""], 2) == 0.0 and repetition_rate(["a"], 2) == 0.0


# ---------------------------------------------------------------- loaders
ROWS = [{"question": "Q1?", "answer": "A one.", "paraphrased_answer": "One A.",
         "perturbed_answer": ["B one.", "C one."], "paraphrased_question": "Q1 again?"},
        {"question": "Q2?", "answer": "A two.", "perturbed_answer": "B two."}]


def test_load_rows_json_jsonl_and_object(tmp_path):
    p = tmp_path / "f.json"
    p.write_text(json.dumps(ROWS))
    q = tmp_path / "f.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")
    o = tmp_path / "o.json"
    o.write_text(json.dumps({"data": ROWS}))
    for path in (p, q, o, str(p)):
        rows = load_rows(path)
        assert [r["question"] for r in rows] == ["Q1?", "Q2?"]
        assert rows[1]["perturbed_answer"] == ["B two."]
    assert load_rows(ROWS)[0]["answer"] == "A one."


def test_load_rows_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_rows(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(ValueError, match="lacks \\['answer'\\]"):
        load_rows(bad)
    bad.write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="JSON object"):
        load_rows(bad)


def test_load_rows_task_id_and_one_row_jsonl(tmp_path):
    import warnings
    rows = [dict(ROWS[i % 2], task_id=t) for i, t in enumerate(["1", "1", "2", "2", "3"])]
    p = tmp_path / "forget10_perturbed.json"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))             # TOFU's files: JSON lines in .json
    with pytest.warns(UserWarning, match=r"5 rows in 3 task_id groups \{'1': 2, '2': 2, '3': 1\}"):
        assert len(load_rows(p)) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = load_rows(p, task_id="2")
    assert len(got) == 2 and {r["task_id"] for r in got} == {"2"} and got[1]["perturbed_answer"] == ["B two."]
    assert len(load_rows(p, task_id="1,3")) == 3
    assert len(load_rows(rows, task_id=1)) == 2                               # in-memory rows, int id
    with pytest.raises(ValueError, match="no rows with task_id '9'"):
        load_rows(p, task_id="9")
    with pytest.warns(UserWarning, match="has no task_id field"):
        assert len(load_rows(ROWS, task_id="1")) == 2
    one = tmp_path / "one.json"
    one.write_text(json.dumps(ROWS[0]) + "\n")
    assert load_rows(one)[0]["question"] == "Q1?"


# ---------------------------------------------------------------- model-based, tiny random model
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from alter_kernels.synthetic.tokenizer import train_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM
    texts = [r["question"] + " " + r["answer"] + " " + " ".join(r["perturbed_answer"]) for r in load_rows(ROWS)]
    texts += ["Question: Answer: the cat sat on the mat and looked at the door of the house"] * 3
    tok = train_tokenizer(texts, str(tmp_path_factory.mktemp("tok") / "tok"), vocab_size=300)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def _manual_mean_nll(model, tok, q, a, fmt=QAFormat()):
    ids, labels = fmt.encode(tok, q, a)
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    lp = torch.log_softmax(logits.double(), -1)
    tot = [-lp[t - 1, ids[t]].item() for t in range(1, len(ids)) if labels[t] != -100]
    return sum(tot) / len(tot)


def test_qaformat_masks_prompt(tiny):
    _, tok = tiny
    ids, labels = QAFormat().encode(tok, "Q1?", "A one.")
    p = QAFormat().prompt_ids(tok, "Q1?")
    assert ids[:len(p)] == p and all(x == -100 for x in labels[:len(p)])
    assert labels[len(p):] == ids[len(p):] and ids[-1] == tok.eos_token_id and ids[0] == tok.bos_token_id
    # the tokenizer's chat template renders the same prompt as the plain template
    assert QAFormat(chat=True).prompt_ids(tok, "Q1?") == p
    with pytest.raises(ValueError):
        QAFormat(template="no placeholder")


def test_answer_nll_batched_matches_manual(tiny):
    model, tok = tiny
    qs, ans = ["Q1?", "Q2?", "Q1?"], ["A one.", "A two and the cat sat.", "B"]
    got = answer_nll(model, tok, qs, ans, batch_size=2)
    want = [_manual_mean_nll(model, tok, q, a) for q, a in zip(qs, ans)]
    assert got.tolist() == pytest.approx(want, rel=1e-4, abs=1e-5)
    s = answer_nll(model, tok, qs, ans, reduction="sum")
    n = [sum(1 for x in QAFormat().encode(tok, q, a)[1] if x != -100) for q, a in zip(qs, ans)]
    assert s.tolist() == pytest.approx([w * k for w, k in zip(want, n)], rel=1e-4)


def test_truth_ratio_definition(tiny):
    model, tok = tiny
    rows = load_rows(ROWS)
    tr = truth_ratios(model, tok, rows, batch_size=3)
    para = _manual_mean_nll(model, tok, "Q1?", "One A.")
    pert = (_manual_mean_nll(model, tok, "Q1?", "B one.") + _manual_mean_nll(model, tok, "Q1?", "C one.")) / 2
    assert tr["ratio"][0].item() == pytest.approx(math.exp(-pert) / math.exp(-para), rel=1e-4)
    # row 2: no paraphrase -> the answer; one perturbed answer (second column is NaN padding)
    para2 = _manual_mean_nll(model, tok, "Q2?", "A two.")
    pert2 = _manual_mean_nll(model, tok, "Q2?", "B two.")
    assert tr["ratio"][1].item() == pytest.approx(math.exp(para2 - pert2), rel=1e-4)


def test_options_probability_and_evaluate(tiny):
    model, tok = tiny
    st = split_stats(model, tok, ROWS, "options", max_new_tokens=4)
    pc = math.exp(-_manual_mean_nll(model, tok, "Q1?", "A one."))
    pf = sum(math.exp(-_manual_mean_nll(model, tok, "Q1?", x)) for x in ("B one.", "C one."))
    assert st["probs"][0] == pytest.approx(pc / (pc + pf), rel=1e-4)
    assert 0 <= st["rouge"] <= 1 and len(st["generations"]) == 2
    res = evaluate_tofu(model, tok, ROWS, ROWS, ROWS, ROWS, max_new_tokens=4)
    assert "forget_quality" not in res and 0 <= res["model_utility"] <= 1
    ref = res["forget"]["truth_ratios"]
    res2 = evaluate_tofu(model, tok, ROWS, ROWS, ROWS, ROWS, reference_truth_ratios=ref, max_new_tokens=4)
    assert res2["forget_quality"] == pytest.approx(1.0)     # same model = same distribution


def test_mcq_accuracy_picks_top_loglik(tiny):
    model, tok = tiny
    items = [{"question": "Q1?", "choices": ["A one.", "B one.", "cat"], "answer_index": 0},
             {"question": "Q2?", "choices": ["A two.", "B two."], "answer_index": 1}]
    res = mcq_accuracy(model, tok, items)
    for it, pred in zip(items, res["predictions"]):
        s = answer_nll(model, tok, [it["question"]] * len(it["choices"]), it["choices"],
                       reduction="sum", eos=False)
        assert pred == int(torch.argmin(s))
    assert res["accuracy"] == sum(int(p == it["answer_index"]) for p, it in zip(res["predictions"], items)) / 2
    with pytest.raises(ValueError):
        mcq_accuracy(model, tok, [{"question": "q", "choices": ["a"], "answer_index": 0}])


def test_verbatim_rouge_runs(tiny):
    model, tok = tiny
    text = "the cat sat on the mat and looked at the door of the house"
    res = verbatim_rouge(model, tok, [text, "cat"], prefix_tokens=4, max_new_tokens=6)
    assert res["n"] == 1 and 0 <= res["rouge_f"] <= 1
