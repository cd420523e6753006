"""ALTER's inference rule (alter_kernels.model.inference): a patched model with no routing inputs routes by
entropies it computes itself, the same way in every path (ALTER_SPEC section 2)."""
from __future__ import annotations

import json
import math

import pytest
import torch

import alter_kernels as ak
from tiny_llama import VOCAB, left_pad, patched_model, prompts, tiny_llama

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402


def trained_model(seed=0, steps=3):
    """A tiny patched Llama trained a few ALTER steps (labels, explicit entropies) on random data."""
    m = patched_model(seed)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=3e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(3, VOCAB, (4, 10), generator=g)
        with ak.routing_inputs(m, entropy=ak.token_entropy(m, ids), labels=torch.tensor([0, 1, 2, 1])):
            loss = m(ids, labels=ids).loss + ak.router_loss(m)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    assert any(float(p.detach().abs().max()) > 0 for n, p in ak.adapter_state_dict(m).items() if n.endswith("lora_B"))
    return m


# --------------------------------------------------------------------------- plain forward
@pytest.mark.parametrize("padded", [False, True])
def test_plain_forward_equals_explicit_base_entropies(padded):
    m = trained_model(0)
    if padded:
        ids, mask = left_pad([[5, 17, 33, 9, 41, 60, 22], [8, 70, 12], [44, 3, 91, 16, 29]])
    else:
        ids, mask = prompts(3, 9), None
    with torch.no_grad():
        plain = m(ids, attention_mask=mask).logits
        plain_plans = {k: v.expert_weights.clone() for k, v in ak.last_plans(m).items()}
        with ak.routing_inputs(m, entropy=ak.token_entropy(m, ids, mask)):
            explicit = m(ids, attention_mask=mask).logits
        with ak.routing_inputs(m, entropy=torch.full(ids.shape, math.inf)):
            all_high = m(ids, attention_mask=mask).logits
        via_backbone = m.model(ids, attention_mask=mask).last_hidden_state     # the hook sits on the backbone
        bb_plans = ak.last_plans(m)
    assert torch.equal(plain, explicit)
    assert not torch.allclose(plain, all_high, atol=1e-3)          # the rule is not today's all-high mode
    for k, w in plain_plans.items():
        assert torch.equal(bb_plans[k].expert_weights, w)
    assert via_backbone.shape[:2] == ids.shape
    assert ak.get_state(m).auto_entropy is None                    # nothing left behind for the next forward


def test_none_is_all_high_and_self_scores_like_base():
    m = trained_model(1)
    ids = prompts(2, 8)
    with torch.no_grad():
        base = m(ids).logits
        with ak.routing_inputs(m, entropy=torch.full(ids.shape, math.inf)):
            all_high = m(ids).logits
        ak.set_inference_entropy(m, "none")
        none = m(ids).logits
        ak.set_inference_entropy(m, "self")          # teacher-forced forwards route by the base entropies
        self_tf = m(ids).logits
    assert torch.equal(none, all_high)
    assert torch.equal(self_tf, base)


def test_explicit_routing_inputs_take_precedence():
    m = trained_model(2)
    ids = prompts(2, 8)
    ent = torch.zeros(ids.shape)            # every token low
    with torch.no_grad():
        with ak.routing_inputs(m, entropy=ent):
            a = m(ids).logits
        ak.set_routing_inputs(m, entropy=ent)
        b = m(ids).logits
        ak.clear_routing_inputs(m)
        c = m(ids).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-4)


# --------------------------------------------------------------------------- HF generate == ak.generate
@pytest.mark.parametrize("entropy", ["base", "self"])
@pytest.mark.parametrize("batch", [1, 4])
def test_plain_hf_generate_equals_ak_generate(entropy, batch):
    m = trained_model(3)
    ak.set_inference_entropy(m, entropy)
    rows = [[5, 17, 33, 9, 41, 60], [8, 70, 12], [44, 3, 91, 16, 29], [7, 7, 50, 61]][:batch]
    ids, mask = left_pad(rows)
    with torch.no_grad():
        hf = m.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False, pad_token_id=0,
                        eos_token_id=None)
    ours = ak.generate(m, ids, 32, attention_mask=mask)
    assert torch.equal(hf, ours)
    with ak.disable_adapters(m), torch.no_grad():
        base = m.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    assert not torch.equal(hf, base)          # the experts matter, so the comparison could fail


@pytest.mark.parametrize("kind", ["greedy", "beam", "sample"])
def test_kv_cache_paths_equal_full_recompute(kind):
    """HF generate with a KV cache (the base stream attached to the cache, mirrored through beam
    reorders) equals HF generate without one (every step a full forward: the rule from scratch)."""
    m = trained_model(4)
    ids, mask = left_pad([[5, 17, 33, 9, 41, 60], [8, 70, 12]])
    kw = dict(attention_mask=mask, max_new_tokens=12, pad_token_id=0, eos_token_id=None)
    kw.update({"greedy": dict(do_sample=False), "beam": dict(do_sample=False, num_beams=3),
               "sample": dict(do_sample=True, top_k=20)}[kind])
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        with torch.no_grad():
            outs.append(m.generate(ids, use_cache=use_cache, **kw))
    assert torch.equal(outs[0], outs[1])


def test_cache_crop_and_multi_token_continuation():
    """A prefill, a crop of the cache (as assisted decoding does) and a multi-token continuation
    give the logits of one full forward."""
    m = trained_model(5)
    ids = prompts(2, 12)
    with torch.no_grad():
        full = m(ids).logits
        out = m(ids[:, :9], use_cache=True)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        cache.crop(-3)                  # drop the last 3 of 9 tokens
        rest = m(ids[:, 6:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(rest, full[:, 6:], rtol=1e-4, atol=1e-4)


def test_continuing_a_foreign_cache_fails_clearly():
    m = trained_model(6)
    ids = prompts(1, 6)
    with torch.no_grad():
        with ak.routing_inputs(m, entropy=torch.zeros(ids.shape)):
            out = m(ids, use_cache=True)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        with pytest.raises(RuntimeError, match="did not start"):
            m(ids[:, :1], cache=cache, use_cache=True)


def test_text_generation_pipeline_routes_like_ak_generate(tmp_path):
    from transformers import pipeline

    from alter_kernels.synthetic.tokenizer import load_tokenizer, train_tokenizer
    train_tokenizer(["Question: Who wrote the book? Answer: Mira Castellane wrote it."] * 4, str(tmp_path), 300)
    tok = load_tokenizer(str(tmp_path))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(8.0)
    ak.patch(m, ak.AlterConfig(rank=4, num_forget_experts=2, init_seed=0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ak.adapter_state_dict(m).items():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name.endswith("lora_B") else 1.0)
                    if not name.endswith("lora_A") else p)
    ak.get_state(m).config.threshold = float(ak.token_entropy(m, torch.randint(3, len(tok), (2, 12)))[:, 1:].median())
    text = "Question: Who wrote the book?"
    pipe = pipeline("text-generation", model=m, tokenizer=tok, device="cpu")
    got = pipe(text, max_new_tokens=16, do_sample=False, return_full_text=False)[0]["generated_text"]
    ids = tok(text, return_tensors="pt").input_ids
    want = ak.generate(m, ids, 16, eos_token_id=tok.eos_token_id)
    assert got == tok.decode(want[0, ids.shape[1]:], skip_special_tokens=True)


# --------------------------------------------------------------------------- config, bad input, files
def test_config_field_validated_and_saved(tmp_path):
    with pytest.raises(ValueError, match="inference_entropy.*'base', 'self', 'none'"):
        ak.AlterConfig(inference_entropy="adapted")
    m = patched_model(0)
    with pytest.raises(ValueError, match="'base', 'self', 'none'"):
        ak.set_inference_entropy(m, "Base")
    with pytest.raises(ValueError, match="entropy must be one of"):
        ak.generate(m, prompts(1, 4), 2, entropy="nope")
    ak.set_inference_entropy(m, "self")
    ak.save_adapter(m, tmp_path / "a")
    cfg, _ = ak.read_adapter_config(tmp_path / "a")
    assert cfg.inference_entropy == "self"
    # an adapter saved before the field existed loads with the documented default, "base"
    meta = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    del meta["alter_config"]["inference_entropy"]
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(meta))
    assert ak.read_adapter_config(tmp_path / "a")[0].inference_entropy == "base"
    # a model patched with another rule does not silently take an adapter meant for this one
    other = patched_model(0)
    ak.set_inference_entropy(other, "none")
    with pytest.raises(ak.AdapterError, match="inference_entropy"):
        ak.load_adapter(other, tmp_path / "a")


def test_heads_without_plain_logits_fail_at_patch():
    m = tiny_llama(0)
    m.config.final_logit_softcapping = 30.0
    with pytest.raises(ak.PatchError, match="final_logit_softcapping.*inference_entropy='none'"):
        ak.patch(m, ak.AlterConfig(num_forget_experts=1))
    assert not ak.is_patched(m)
    ak.patch(m, ak.AlterConfig(num_forget_experts=1, inference_entropy="none"))   # the explicit opt-out works
    with torch.no_grad():
        m(prompts(1, 5))
    with pytest.raises(ak.PatchError, match="final_logit_softcapping"):
        ak.set_inference_entropy(m, "base")
    backbone = tiny_llama(1).model                  # no LM head at all
    with pytest.raises(ak.PatchError, match="no LM head"):
        ak.patch(backbone, ak.AlterConfig())


# --------------------------------------------------------------------------- evaluation loops
def test_plain_hf_evaluation_loop_equals_explicit_routing(tmp_path):
    """An evaluation harness that knows nothing of ALTER (load, then plain forwards and HF
    generate) gets the numbers of the explicit routing inputs."""
    trained = trained_model(7)
    ak.save_adapter(trained, tmp_path / "adapter")
    # loading, as a user would: base model, the adapter's config, the adapter
    cfg, _ = ak.read_adapter_config(tmp_path / "adapter")
    model = tiny_llama(7)
    ak.patch(model, cfg)
    ak.load_adapter(model, tmp_path / "adapter")
    ak.get_state(model).config.threshold = ak.get_state(trained).config.threshold
    g = torch.Generator().manual_seed(3)
    questions = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (5, 8, 3, 6)]
    answers = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (4, 2, 6, 5)]
    ids, mask = left_pad([q + a for q, a in zip(questions, answers)])
    labels = torch.full_like(ids, -100)
    for i, a in enumerate(answers):
        labels[i, ids.shape[1] - len(a):] = ids[i, ids.shape[1] - len(a):]

    def answer_nll(explicit: bool):
        with torch.no_grad():
            if explicit:
                with ak.routing_inputs(model, entropy=ak.token_entropy(model, ids, mask)):
                    logits = model(input_ids=ids, attention_mask=mask).logits
            else:
                logits = model(input_ids=ids, attention_mask=mask).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
        return (nll * (labels[:, 1:] != -100)).sum(1) / (labels[:, 1:] != -100).sum(1)

    torch.testing.assert_close(answer_nll(False), answer_nll(True), rtol=0, atol=0)
    q_ids, q_mask = left_pad(questions)
    with torch.no_grad():
        plain = model.generate(q_ids, attention_mask=q_mask, max_new_tokens=16, do_sample=False, pad_token_id=0,
                               eos_token_id=None)
    assert torch.equal(plain, ak.generate(model, q_ids, 16, attention_mask=q_mask))
