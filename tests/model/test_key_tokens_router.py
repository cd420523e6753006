"""The key-token router (AlterConfig.router_input="key_tokens", docs/unlearning.md "Fluent
forgetting"): a token goes to a forget expert when the token itself is one of the keys (the forget
entity's tokens), not every token after it as with the prefix-match router; it carries no state,
so a teacher-forced forward, KV-cached HF generate, beam search and ak.generate route alike (save /
load: tests/model/test_prefix_router.py, for both embedding-keyed routers)."""
from __future__ import annotations

import pytest
import torch

import alter_kernels as ak

transformers = pytest.importorskip("transformers")
from tiny_llama import VOCAB, tiny_keyed_model, tiny_llama, argmax_routes as choices  # noqa: E402

KEY1, KEY2 = 5, 9          # token 5 -> forget expert 1, token 9 -> forget expert 2


def keyed(seed=0, experts=(1, 2)):
    return tiny_keyed_model(seed, (KEY1, KEY2), experts, router_input="key_tokens")


def test_only_the_key_tokens_route_to_their_experts():
    m = keyed()
    ids = torch.tensor([[1, 20, 30, KEY1, 40, KEY1, 50], [1, 20, KEY2, 30, 40, KEY1, 50], [1, 20, 30, 40, 50, 60, 61]])
    for ch in choices(m, ids).values():
        assert ch[0].tolist() == [0, 0, 0, 1, 0, 1, 0]
        assert ch[1].tolist() == [0, 0, 2, 0, 0, 1, 0]
        assert ch[2].tolist() == [0] * 7
    # the prefix-match router with the same keys routes every token after a key instead
    pm = tiny_keyed_model(0, (KEY1, KEY2), (1, 2), router_input="prefix_match")
    assert next(iter(choices(pm, ids).values()))[0].tolist() == [0, 0, 0, 1, 1, 1, 1]


def _scores(out):
    return torch.stack(out.scores, 1)


@pytest.mark.parametrize("batch", [1, 3])
def test_hf_generate_with_kv_cache_routes_as_full_recompute(batch):
    m = keyed(3)
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(10, VOCAB, (batch, 6), generator=g)
    ids[:, 2] = KEY1
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None, output_scores=True,
              return_dict_in_generate=True, attention_mask=torch.ones_like(ids))
    cached = m.generate(ids, use_cache=True, **kw)
    full = m.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, full.sequences)
    torch.testing.assert_close(_scores(cached), _scores(full), rtol=1e-4, atol=1e-4)
    # the key's expert matters: routed to expert 0 instead, the same prompt scores differently
    other = keyed(3, experts=(0, 0)).generate(ids, use_cache=True, **kw)
    assert not torch.allclose(_scores(other), _scores(cached), atol=1e-3)


def test_beam_search_and_ak_generate_agree_with_a_full_recompute():
    m = keyed(4)
    ids = torch.tensor([[1, 30, KEY2, 44, 51], [1, 60, 61, KEY1, 63]])
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=7, do_sample=False, num_beams=3, num_return_sequences=3, pad_token_id=0,
              eos_token_id=None, attention_mask=mask)
    assert torch.equal(m.generate(ids, use_cache=True, **kw), m.generate(ids, use_cache=False, **kw))
    fast = ak.generate(m, ids, 8, attention_mask=mask, return_dict=True)
    slow = ak.generate(m, ids, 8, attention_mask=mask, fast=False)
    assert torch.equal(fast.sequences, slow)
