"""ALTER's per-cache state (the inference rule's base stream, the prefix-match router's running
matches) follows the HF cache object it belongs to through copy.deepcopy / copy.copy (issue 26):
HF's documented pattern of reusing a prompt cache (generate on a deepcopy of it) gives the tokens
of an uncached run, for beam search, seeded sampling and assisted decoding, with the token
router and with the prefix-match router; and the prompt cache itself is left as it was."""
from __future__ import annotations

import copy

import pytest
import torch

from test_prefix_router import KEY1, keyed_model
from tiny_llama import patched_model, tiny_llama

transformers = pytest.importorskip("transformers")
from transformers import DynamicCache  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

PROMPT = torch.tensor([[1, 30, KEY1, 44, 51, 12]])
SUFFIX = torch.tensor([[17, 33, 9]])
MODES = {"beam": dict(do_sample=False, num_beams=3, num_return_sequences=2),
         "sample": dict(do_sample=True, top_k=20),
         "assisted": dict(do_sample=False)}


def _model(router: str):
    return patched_model(4) if router == "token" else keyed_model(4)


def _generate(m, ids, mode: str, assisted: bool = False, **kw):
    kw = dict(max_new_tokens=8, pad_token_id=0, eos_token_id=None, **MODES[mode], **kw)
    if assisted:
        kw["assistant_model"] = tiny_llama(seed=7, layers=1)     # another model proposes, m verifies
    torch.manual_seed(0)
    with torch.no_grad():
        return m.generate(ids, attention_mask=torch.ones_like(ids), **kw)


def _state(cache):
    """The ALTER state tensors attached to ``cache`` (to see that a copy's use left it alone)."""
    out = []
    stream = getattr(cache, "_alter_entropy_stream", None)
    if stream is not None:
        out.append(stream.next_entropy.clone())
        if stream.base_cache is not None:
            out += [layer.keys.clone() for layer in stream.base_cache.layers]
    prefix = getattr(cache, "_alter_prefix_state", None)
    if prefix is not None:
        out += [h.clone() for h in prefix.hist.values()]
    return out


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("router", ["token", "prefix_match"])
def test_generate_on_a_copied_prompt_cache_equals_an_uncached_run(router, mode):
    m = _model(router)
    rows = MODES[mode].get("num_beams", 1)                # HF expands no given cache: one row per beam
    prompt_cache = DynamicCache(config=m.config)
    with torch.no_grad():
        m(input_ids=PROMPT.repeat(rows, 1), past_key_values=prompt_cache, use_cache=True)
    before = _state(prompt_cache)
    assert before, "no ALTER state was attached to the prompt cache"
    ids = torch.cat([PROMPT, SUFFIX], 1)
    want = _generate(m, ids, mode, use_cache=False)       # assisted decoding is greedy's tokens, sooner
    if mode == "assisted":
        # HF's assisted decoding on a given prompt cache departs from greedy even for an unpatched model
        # (transformers 5.24: tiny_llama(4) gives other tokens), so against the uncached run it runs on
        # its own cache (crops mirrored); on copies of the prompt cache it must repeat itself
        assert torch.equal(_generate(m, ids, mode, assisted=True), want)
        want = _generate(m, ids, mode, assisted=True, past_key_values=copy.deepcopy(prompt_cache))
    for _ in range(2):                                    # the prompt cache serves twice
        got = _generate(m, ids, mode, assisted=mode == "assisted", past_key_values=copy.deepcopy(prompt_cache))
        assert torch.equal(got, want), (got, want)
    after = _state(prompt_cache)
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before))


def test_copy_shares_state_as_it_shares_layers_and_deepcopy_owns_it():
    m = _model("token")
    cache = DynamicCache(config=m.config)
    with torch.no_grad():
        m(input_ids=torch.cat([PROMPT, PROMPT]), past_key_values=cache, use_cache=True)
    deep, shallow = copy.deepcopy(cache), copy.copy(cache)
    e = cache._alter_entropy_stream.next_entropy.clone()
    deep.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(cache._alter_entropy_stream.next_entropy, e)          # the original is untouched
    deep.crop(-3)
    assert deep._alter_entropy_stream.next_entropy.shape[1] == 3 and cache._alter_entropy_stream.next_entropy.shape[1] == 6
    assert deep._alter_entropy_stream.base_cache.get_seq_length() == 3
    shallow.crop(-2)                                                        # shared layers, shared state
    assert cache.get_seq_length() == 4 and cache._alter_entropy_stream.next_entropy.shape[1] == 4
