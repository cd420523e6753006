"""Real checkpoints' shapes on the tiny Llama: an LM head tied to the input embedding (SmolLM2,
Llama-3.2-1B, Qwen2-0.5B) through patch / unpatch, adapter files, decoding, the fused LM-head
losses and the KL baseline's reference head; and bf16 base weights on the CPU."""
from __future__ import annotations

import pytest
import torch
from tiny_llama import prompts, tiny_llama
from transformers import LlamaForCausalLM

import alter_kernels as ak
from alter_kernels.unlearn.toy import toy_rows, toy_tokenizer


def _tied(m) -> bool:
    return m.lm_head.weight is m.model.embed_tokens.weight


def _randomise(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ak.adapter_state_dict(m).items():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if name.endswith("alter_router.weight"):
                p.copy_(torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tied_patch_adapter_files_and_decoding(dtype, tmp_path):
    m = tiny_llama(tied=True, dtype=dtype)
    ids = prompts()
    with torch.no_grad():
        base = m(ids).logits
        ak.patch(m, ak.AlterConfig(rank=4, alpha=8, num_forget_experts=2))
        assert _tied(m) and not m.lm_head.weight.requires_grad
        torch.testing.assert_close(m(ids).logits, base, rtol=0, atol=0)     # zero B: the base model
        _randomise(m)
        ak.get_state(m).config.threshold = float(ak.token_entropy(m, ids)[:, 1:].median())
        adapted = m(ids).logits
        assert adapted.dtype == dtype and not torch.equal(adapted, base)
        ak.save_adapter(m, tmp_path / "a")
        other = tiny_llama(tied=True, dtype=dtype)
        ak.patch(other, ak.read_adapter_config(tmp_path / "a")[0])
        ak.load_adapter(other, tmp_path / "a")
        torch.testing.assert_close(other(ids).logits, adapted, rtol=0, atol=0)
    mask = torch.ones_like(ids)
    fast = ak.generate(m, ids, attention_mask=mask, max_new_tokens=5)
    hf = m.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(fast, hf)
    ak.unpatch(m)
    assert _tied(m) and m.lm_head.weight.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(m(ids).logits, base, rtol=0, atol=0)


def _unlearn(method, fused, tmp_path, dtype=torch.float32, steps=2):
    forget, retain = toy_rows(4, seed=1), toy_rows(4, seed=2, offset=4)
    tok = toy_tokenizer(forget + retain)
    from alter_kernels.unlearn.toy import toy_model
    m = toy_model(len(tok))
    m.config.tie_word_embeddings = True
    m.tie_weights()
    m.to(dtype)
    assert _tied(m)
    res = ak.unlearn(m, forget, retain, method=method, tokenizer=tok, max_steps=steps, batch_size=2, progress=False,
                     fused_loss=fused, eval_each_epoch=False, out_dir=tmp_path / f"{method}-{fused}")
    return res


@pytest.mark.parametrize("method", ["alter", "kl"])
def test_tied_fused_losses_match_materialised(method, tmp_path):
    """The fused LM-head losses take the tied head (and KL its reference copy) like the logits do."""
    fused, plain = _unlearn(method, "auto", tmp_path), _unlearn(method, "off", tmp_path)
    a, b = [h["loss"] for h in fused.history], [h["loss"] for h in plain.history]
    assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    assert _tied(fused.model) and _tied(plain.model)
    if method == "kl":                      # full-parameter: the tied head trained, saved and reloaded tied
        again = LlamaForCausalLM.from_pretrained(fused.model_dir)
        assert _tied(again) and torch.equal(again.lm_head.weight, fused.model.lm_head.weight.detach())


def test_bf16_base_weights_train_and_generate_on_cpu(tmp_path):
    res = _unlearn("alter", "auto", tmp_path, dtype=torch.bfloat16, steps=1)
    m = res.model
    assert m.model.embed_tokens.weight.dtype == torch.bfloat16 and len(res.history) == 1
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    ids = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        assert m(ids).logits.dtype == torch.bfloat16
    out = ak.generate(m, ids, max_new_tokens=3)
    assert out.shape == (1, 7)
