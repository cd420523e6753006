"""The answer-key router (AlterConfig.router_input="answer_keys", issue 23): token t routes to a forget
expert when the base model's greedy next token at t is a key not yet among tokens <= t. Checked
against a brute-force recomputation of the rule from the base model's logits; causal; the same
routing in a teacher-forced forward, HF generate with a KV cache (greedy and beam search) and
ak.generate; save / load; the engine fits keys and trains the routing it uses at inference."""
from __future__ import annotations

import pytest
import torch

import alter_kernels as ak
from alter_kernels.model.answer_keys import key_hits
from alter_kernels.model.state import layer_routers

pytest.importorskip("transformers")
from tiny_llama import VOCAB, tiny_keyed_model, tiny_llama, argmax_routes as choices  # noqa: E402


def base_greedy(seed, ids):
    with torch.no_grad():
        return tiny_llama(seed)(input_ids=ids, use_cache=False).logits.argmax(-1)


def keyed_model(seed, keys, experts, random_b=True):
    return tiny_keyed_model(seed, keys, experts, random_b, router_input="answer_keys", beta=40.0)


def brute_force(ids, top, keys, experts):
    """The rule written out position by position: the expert of the first firing key, else 0."""
    out = torch.zeros(ids.shape, dtype=torch.long)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            seen = set(ids[b, :t + 1].tolist())
            for k, e in zip(keys, experts):
                if int(top[b, t]) == k and k not in seen:
                    out[b, t] = e
                    break
    return out




def test_routing_follows_the_base_models_next_token_and_is_causal():
    seed = 0
    ids = torch.randint(3, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0))
    top = base_greedy(seed, ids)
    keys = sorted(set(top[:, 3:9].flatten().tolist()))[:3]                # keys the base model does predict
    experts = [1, 2, 1][:len(keys)]
    m = keyed_model(seed, keys, experts)
    want = brute_force(ids, top, keys, experts)
    assert (want > 0).any() and (want == 0).any()
    for ch in choices(m, ids).values():
        assert torch.equal(ch, want)
    # a key written in the prefix does not fire (a repeated word, not a recalled one)
    fire = (want > 0).nonzero()[0]
    ids2 = ids.clone()
    ids2[fire[0], 0] = int(top[fire[0], fire[1]])
    top2 = base_greedy(seed, ids2)
    got = next(iter(choices(m, ids2).values()))
    assert torch.equal(got, brute_force(ids2, top2, keys, experts))
    # causal: a change at the last position changes no earlier route
    ids3 = ids.clone()
    ids3[:, -1] = (ids3[:, -1] + 1) % VOCAB
    assert torch.equal(next(iter(choices(m, ids3).values()))[:, :-1], want[:, :-1])


def test_key_hits_padding_and_carried_state():
    top = torch.tensor([[5, 5, 7, 5]])
    ids = torch.tensor([[1, 2, 5, 3]])
    hits, seen = key_hits(top, ids, torch.tensor([5, 7]), mask=torch.tensor([[0, 1, 1, 1]]))
    assert hits[0, :, 0].tolist() == [False, True, False, False]          # padding never fires; seen at t=2
    assert hits[0, :, 1].tolist() == [False, False, True, False]
    carried, _ = key_hits(top[:, 1:2], ids[:, 1:2], torch.tensor([5, 7]),
                          seen_before=torch.tensor([[True, False]]))
    assert not carried.any()


def _prompt(seed, keys_from=4):
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(seed))
    full = tiny_llama(seed).generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    keys = sorted(set(full[:, 6 + keys_from - 4:].flatten().tolist()))[:4]  # tokens the base model will state
    return ids, keys


def test_hf_generate_cached_greedy_and_beam_match_full_recompute_and_ak_generate():
    seed = 3
    ids, keys = _prompt(seed)
    m = keyed_model(seed, keys, [1, 2, 1, 2][:len(keys)])
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None,
              attention_mask=torch.ones_like(ids))
    cached = m.generate(ids, use_cache=True, output_scores=True, return_dict_in_generate=True, **kw)
    full = m.generate(ids, use_cache=False, output_scores=True, return_dict_in_generate=True, **kw)
    assert torch.equal(cached.sequences, full.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(full.scores), rtol=1e-4, atol=1e-4)
    base = tiny_llama(seed).generate(ids, **kw)
    assert not torch.equal(base, cached.sequences)                        # the routing changed the answer
    beam = dict(kw, num_beams=3, num_return_sequences=2)
    assert torch.equal(m.generate(ids, use_cache=True, **beam), m.generate(ids, use_cache=False, **beam))
    assert torch.equal(ak.generate(m, ids, 8, attention_mask=torch.ones_like(ids), pad_token_id=0),
                       cached.sequences)
    with pytest.raises(NotImplementedError, match="answer_keys"):
        ak.generate(m, ids, 4, return_dict=True)


def test_save_load_roundtrip_and_config_rules(tmp_path):
    seed = 4
    ids, keys = _prompt(seed)
    m = keyed_model(seed, keys, [1] * len(keys))
    want = m(input_ids=ids).logits
    ak.save_adapter(m, tmp_path / "a")
    cfg, _ = ak.read_adapter_config(tmp_path / "a")
    assert cfg.router_input == "answer_keys" and cfg.router_keys == len(keys)
    m2 = ak.patch(tiny_llama(seed), cfg)
    ak.load_adapter(m2, tmp_path / "a")
    torch.testing.assert_close(m2(input_ids=ids).logits, want)
    with pytest.raises(ValueError, match="inference_entropy"):
        ak.AlterConfig(router_input="answer_keys", inference_entropy="none")
    with pytest.raises(ValueError, match="inference_entropy"):
        ak.set_inference_entropy(m2, "self")


@pytest.mark.parametrize("forget_loss", ["ihl", "generic"])
def test_unlearn_fits_keys_and_trains_the_routing_it_infers(forget_loss):
    """ak.unlearn with router_input="answer_keys": keys are answer tokens the base model states that
    no retain row holds; after training, the forget answers' key tokens are pushed down where the
    router fires, and no other position gets a forget expert (the paper's IHL, and the generic
    target of issue 24, which the real-model benchmark runs with this router)."""
    seed = 5
    base = tiny_llama(seed)
    tok = _ToyTokenizer()
    g = torch.Generator().manual_seed(7)
    rows = []
    for i in range(6):
        q = torch.randint(10, VOCAB, (5,), generator=g).tolist()
        with torch.no_grad():
            ans = base.generate(torch.tensor([[1] + q]), max_new_tokens=4, do_sample=False, pad_token_id=0,
                                eos_token_id=None)[0, 6:].tolist()
        rows.append({"question": tok.decode(q), "answer": tok.decode(ans)})
    res = ak.unlearn(tiny_llama(seed), rows[:3], rows[3:], method="alter", tokenizer=tok, epochs=4, seed=0,
                     progress=False, router_input="answer_keys", lr_A=3e-3, lr_B=0.1, lr_router=0.03,
                     chat_template="off", prompt_format="{question}", batch_size=3, forget_loss=forget_loss)
    m = res.model
    st = ak.get_state(m)
    assert st.config.router_input == "answer_keys" and st.config.router_keys > 0
    keys = [int(k) for k in layer_routers(m)[st.routers[0]].keys.tolist()]
    retain_tokens = set(t for r in rows[3:] for t in tok.encode(r["question"] + " " + r["answer"]))
    assert keys and not set(keys) & retain_tokens
    assert sum(h.get("forget_low_tokens", 0) for h in res.history) > 0
    assert all(forget_loss in h for h in res.history)          # the forget term that was asked for
    # inference (no routing inputs: the inference rule's base pass): where a forget row's key fires,
    # the key's probability falls; positions where nothing fires use no forget expert
    for r in rows:
        ids = torch.tensor([[1] + tok.encode(r["question"] + " " + r["answer"])])
        with torch.no_grad():
            ref = base(input_ids=ids).logits.log_softmax(-1)
            got = m(input_ids=ids).logits.log_softmax(-1)
        top = ref.argmax(-1)
        fire = brute_force(ids, top, keys, [1] * len(keys))[0] > 0
        if r in rows[:3] and fire.any():
            t = fire.nonzero()[0, 0]
            k = int(top[0, t])
            assert got[0, t, k] < ref[0, t, k] - 0.5, (got[0, t, k], ref[0, t, k])
        plans = ak.last_plans(m)
        for plan in plans.values():
            w = plan.expert_weights.view(ids.shape[1], -1)[:, 1:].max(-1).values
            assert bool((w[~fire] < 1e-6).all()) and bool((w[fire] > 0.5).all())


class _ToyTokenizer:
    """Token ids as space-separated numbers (no merges): enough for ak.unlearn's tokenisation."""
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0
    chat_template = None

    def encode(self, text, add_special_tokens=False):
        return [int(x) for x in text.split()]

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(str(int(i)) for i in ids)

    def __call__(self, text, add_special_tokens=False, **kw):
        return {"input_ids": self.encode(text)}


def test_aliases_give_the_keys_and_bad_aliases_are_refused(monkeypatch):
    from alter_kernels.unlearn.data import alias_first_tokens
    monkeypatch.setitem(alias_first_tokens.__globals__, "KEY_MIN_CHARS", 2)          # toy tokens are 1-2 digit numbers
    seed = 6
    tok = _ToyTokenizer()
    forget = [{"question": "11 12 13", "answer": "14 15 16", "aliases": ["15", "40 41", "7"]},
              {"question": "21 22 23", "answer": "24 25 26", "aliases": ["25"]}]
    retain = [{"question": "31 32 33", "answer": "34 35 36"}]
    res = ak.unlearn(tiny_llama(seed), forget, retain, method="alter", tokenizer=tok, epochs=1, seed=0,
                     progress=False, router_input="answer_keys", chat_template="off", prompt_format="{question}")
    st = ak.get_state(res.model)
    keys = sorted(int(k) for k in layer_routers(res.model)[st.routers[0]].keys.tolist())
    # the first token of every alias and of its last word, whatever the base model states; a token
    # under KEY_MIN_CHARS characters names no entity (a toy token's text is its number: "7" is dropped)
    assert keys == [15, 25, 40, 41]
    from alter_kernels.unlearn import DataError
    with pytest.raises(DataError, match="aliases"):
        ak.unlearn(tiny_llama(seed), [dict(forget[0], aliases="15")], retain, method="alter", tokenizer=tok,
                   epochs=1, progress=False, router_input="answer_keys", chat_template="off",
                   prompt_format="{question}")


def test_prefix_answer_keys_routes_only_fact_positions_after_an_entity_key(tmp_path):
    """router_input="prefix_answer_keys": the prefix-match router's expert, only where an answer key
    fires (brute force), and only once the entity key has appeared; saved and loaded with its keys."""
    seed, entity = 7, 5
    ids = torch.randint(10, VOCAB, (3, 12), generator=torch.Generator().manual_seed(3))
    ids[0, 2] = entity                                      # rows 0 and 1 name the entity, row 2 never
    ids[1, 6] = entity
    top = base_greedy(seed, ids)
    answer = sorted(set(top[:, 3:].flatten().tolist()) - {entity})[:4]
    m = tiny_llama(seed)
    ak.patch(m, ak.AlterConfig(rank=4, alpha=8, num_forget_experts=1, init_seed=seed, router_keys=1,
                               router_answer_keys=len(answer), router_input="prefix_answer_keys"))
    emb = m.get_input_embeddings().weight.detach()
    with torch.no_grad():
        for name, p in ak.adapter_state_dict(m).items():
            if name.endswith("alter_router.keys"):
                p.copy_(emb[[entity]] / emb[[entity]].norm(dim=1, keepdim=True))
            if name.endswith("alter_router.answer_keys"):
                p.copy_(torch.tensor(answer, dtype=torch.float32))
            if name.endswith("alter_router.weight"):
                p.zero_()
                p[0, 1] = 40.0
                p[-1, 0] = 20.0
    fires = brute_force(ids, top, answer, [1] * len(answer)) > 0
    seen_entity = torch.cummax((ids == entity).long(), 1).values.bool()
    want = (fires & seen_entity).long()
    assert want.any() and (fires & ~seen_entity).any()      # the gate and the entity both matter here
    for ch in choices(m, ids).values():
        assert torch.equal(ch, want)
    ak.save_adapter(m, tmp_path / "a")
    cfg, _ = ak.read_adapter_config(tmp_path / "a")
    m2 = ak.patch(tiny_llama(seed), cfg)
    ak.load_adapter(m2, tmp_path / "a")
    for ch in choices(m2, ids).values():
        assert torch.equal(ch, want)
