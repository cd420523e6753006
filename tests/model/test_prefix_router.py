"""The prefix-match router (AlterConfig.router_input="prefix_match", docs/unlearning.md "The router"):
causal, left-padding aware, the same routing in a teacher-forced forward and in step-by-step
decoding (HF generate with a KV cache, beam search, ak.generate), save / load, the legacy
default, and held-out routing accuracy on a small generated corpus."""
from __future__ import annotations

import json
import os

import pytest
import torch

import alter_kernels as ak
from alter_kernels.model.prefix import prefix_state

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from tiny_llama import VOCAB, tiny_llama, tiny_keyed_model, argmax_routes as choices  # noqa: E402  (the same tiny random Llama)

KEY1, KEY2 = 5, 9          # token 5 -> forget expert 1, token 9 -> forget expert 2


def keyed_model(seed=0, keys=(KEY1, KEY2), experts=(1, 2), random_b=True):
    """A tiny Llama with a random adapter and a prefix-match router with the given key tokens."""
    return tiny_keyed_model(seed, keys, experts, random_b, router_input="prefix_match")


def test_routing_is_causal_and_follows_the_keys():
    m = keyed_model()
    ids = torch.tensor([[1, 20, 30, KEY1, 40, 50], [1, 20, 30, 40, KEY2, 50], [1, 20, 30, 40, 50, 60]])
    for ch in choices(m, ids).values():
        assert ch[0].tolist() == [0, 0, 0, 1, 1, 1]
        assert ch[1].tolist() == [0, 0, 0, 0, 2, 2]
        assert ch[2].tolist() == [0] * 6
    # token t's route depends on tokens <= t only: changing later tokens changes nothing before them
    ids2 = ids.clone()
    ids2[2, 3] = KEY1
    a, b = choices(m, ids), choices(m, ids2)
    for k in a:
        assert torch.equal(a[k][:, :3], b[k][:, :3]) and b[k][2, 3:].tolist() == [1, 1, 1]


def test_left_padded_batch_routes_like_rows_alone_and_padding_never_matches():
    m = keyed_model()
    rows = [[1, 20, KEY1, 40], [1, 30, 31, 32, 33, 34, KEY2, 35], [1, 40, 41]]
    t = max(map(len, rows))
    ids = torch.full((3, t), KEY1)                                          # pad with a KEY token
    mask = torch.zeros(3, t, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r):] = torch.tensor(r)
        mask[i, t - len(r):] = 1
    batch = choices(m, ids, mask)
    for i, r in enumerate(rows):
        alone = choices(m, torch.tensor([r]))
        for k in batch:
            assert torch.equal(batch[k][i, t - len(r):], alone[k][0]), (i, k)


def _scores(out):
    return torch.stack(out.scores, 1)


@pytest.mark.parametrize("batch", [1, 3])
def test_hf_generate_with_kv_cache_routes_as_full_recompute(batch):
    """The router state of the prompt is carried through the KV-cached decode steps: cached
    greedy decoding gives the logits of a full recompute at every step."""
    m = keyed_model(3)
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(10, VOCAB, (batch, 6), generator=g)
    ids[:, 2] = KEY1                                     # the key is in the prompt only
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None, output_scores=True,
              return_dict_in_generate=True, attention_mask=torch.ones_like(ids))
    cached = m.generate(ids, use_cache=True, **kw)
    full = m.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, full.sequences)
    torch.testing.assert_close(_scores(cached), _scores(full), rtol=1e-4, atol=1e-4)
    # and the routing matters: without the carried state the decode steps would route to expert 0
    no_keys = keyed_model(3, keys=(KEY1, KEY2), experts=(0, 0))
    other = no_keys.generate(ids, use_cache=True, **kw)
    assert not torch.allclose(_scores(other), _scores(cached), atol=1e-3)


def test_hf_beam_search_reorders_the_router_state():
    m = keyed_model(4)
    ids = torch.tensor([[1, 30, KEY2, 44, 51], [1, 60, 61, 62, 63]])
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=7, do_sample=False, num_beams=3, num_return_sequences=3, pad_token_id=0,
              eos_token_id=None, attention_mask=mask)
    assert torch.equal(m.generate(ids, use_cache=True, **kw), m.generate(ids, use_cache=False, **kw))


def test_cache_state_follows_reorder_and_crop():
    from transformers import DynamicCache
    m = keyed_model(5)
    cache = DynamicCache()
    ids = torch.tensor([[1, KEY1, 20, 21], [1, 22, 23, 24]])
    m(input_ids=ids, past_key_values=cache, use_cache=True)
    st = prefix_state(cache, create=False)
    assert st is not None
    name = ak.get_state(m).routers[0]
    h = st.hist[name]
    assert h.shape[:2] == (2, 4) and float(h[0, -1, 0]) > 0.9 and float(h[1, -1].max()) == 0.0
    cache.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(st.hist[name], h[[1, 0]])
    cache.crop(-3)                                        # drop the last 3 positions
    assert st.hist[name].shape[1] == 1 and float(st.hist[name][1, -1].max()) == 0.0


@pytest.mark.parametrize("prefill", ["base", "high"])
def test_ak_generate_fast_path_agrees_with_hf_and_slow_path(prefill):
    m = keyed_model(6)
    ids = torch.tensor([[0, 0, 1, 17, KEY1, 9 + 30], [1, 70, 12, 13, 14, 15]])
    mask = (ids != 0).long()
    fast = ak.generate(m, ids, 8, attention_mask=mask, prefill=prefill, return_dict=True)
    slow = ak.generate(m, ids, 8, attention_mask=mask, prefill=prefill, fast=False)
    assert torch.equal(fast.sequences, slow)
    with ak.gated_decoding(m, prefill=prefill):
        hf = m.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
                        eos_token_id=None)
    assert torch.equal(hf, fast.sequences)


@pytest.mark.parametrize("router_input", ["prefix_match", "key_tokens"])
def test_save_load_roundtrip(tmp_path, router_input):
    m = tiny_keyed_model(7, (KEY1, KEY2), (1, 2), router_input=router_input)
    ids = torch.tensor([[1, 20, KEY1, 30, 40]])
    want = m(input_ids=ids).logits
    ak.save_adapter(m, tmp_path / "a")
    cfg, _ = ak.read_adapter_config(tmp_path / "a")
    assert cfg.router_input == router_input and cfg.router_keys == 2
    m2 = ak.patch(tiny_llama(7), cfg)
    ak.load_adapter(m2, tmp_path / "a")
    for k, v in ak.adapter_state_dict(m).items():
        assert torch.equal(v, ak.adapter_state_dict(m2)[k]), k
    torch.testing.assert_close(m2(input_ids=ids).logits, want)


def test_old_adapters_default_to_the_token_router(tmp_path):
    # an adapter written before router_input existed: per-token router, W_g [d_model, E]
    old = ak.patch(tiny_llama(8), ak.AlterConfig(rank=4, alpha=8, router_input="token"))
    ak.save_adapter(old, tmp_path / "old")
    p = os.path.join(tmp_path / "old", "adapter_config.json")
    meta = json.load(open(p))
    for f in ("router_input", "router_keys", "router_match"):
        meta["alter_config"].pop(f)
    json.dump(meta, open(p, "w"))
    cfg_old, _ = ak.read_adapter_config(tmp_path / "old")
    assert cfg_old.router_input == "token"
    m3 = ak.patch(tiny_llama(8), cfg_old)
    ak.load_adapter(m3, tmp_path / "old")
    assert ak.adapter_parameters(m3)["router"][0].shape == (32, 3)


def test_heldout_routing_accuracy_on_a_generated_corpus(tmp_path):
    """ak.unlearn fits the router on the training questions and reports its accuracy on the
    paraphrased questions: >= 0.95 for forget and retain rows."""
    from alter_kernels.synthetic.corpus import CorpusConfig, build_corpus
    from alter_kernels.synthetic.tokenizer import corpus_texts, load_tokenizer, train_tokenizer
    files = build_corpus(CorpusConfig(num_authors=12, forget_fractions=(0.25,), forget_domains=2))
    train_tokenizer(corpus_texts(files), str(tmp_path / "tok"), 1024)
    tok = load_tokenizer(str(tmp_path / "tok"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id))
    res = ak.unlearn(model, files["forget25"], files["retain75"], method="alter", tokenizer=tok, max_steps=2,
                     batch_size=4, progress=False, eval_max_examples=64)
    ra = res.router_accuracy
    assert ra is not None and ra["heldout"] is True
    assert ra["forget"] >= 0.95 and ra["retain"] >= 0.95, ra
    assert set(ra["per_layer"]) == set(ak.get_state(model).routers)
    assert res.metrics[-1]["router_acc_forget"] == ra["forget"]
