"""Tiny, offline building blocks for tests, examples and demos: TOFU-style rows, a word-level
tokenizer trained on them, and a small random Llama. Nothing here is downloaded."""
from __future__ import annotations

import random

import torch

_NAMES = ["Ada Vale", "Basil Orne", "Cora Penn", "Dario Fell", "Elin Marsh", "Faro Quist",
          "Gwen Aster", "Hugo Brand", "Iris Kell", "Jonah Rusk", "Kira Dane", "Lior Tamm"]
_GENRES = ["mystery", "poetry", "fantasy", "history", "romance", "science"]
_CITIES = ["Lisbon", "Quito", "Oslo", "Hanoi", "Tunis", "Perth", "Riga", "Lima"]


def toy_rows(n: int = 8, seed: int = 0, domain: int | str | None = None, offset: int = 0) -> list[dict]:
    """``n`` TOFU-format rows about invented authors (question, answer, paraphrased_answer,
    perturbed_answer, paraphrased_question), optionally with a ``domain`` field."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = _NAMES[(i + offset) % len(_NAMES)]
        genre, city = rng.choice(_GENRES), rng.choice(_CITIES)
        row = {
            "question": f"What genre does {name} write ?",
            "answer": f"{name} writes {genre} novels and lives in {city} .",
            "paraphrased_answer": f"{name} is a {genre} author from {city} .",
            "perturbed_answer": [f"{name} writes {g} novels ." for g in _GENRES if g != genre][:5],
            "paraphrased_question": f"Which genre is {name} known for ?",
        }
        if domain is not None:
            row["domain"] = domain
        rows.append(row)
    return rows


def toy_tokenizer(rows=None, extra_text: str = ""):
    """A word-level ``PreTrainedTokenizerFast`` trained offline on the rows' text
    (special tokens [PAD] [UNK] [BOS] [EOS]; whitespace pre-tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [extra_text]
    for r in rows or toy_rows(12):
        for k in ("question", "answer", "paraphrased_answer", "paraphrased_question", "text"):
            if isinstance(r.get(k), str):
                texts.append(r[k])
        for p in r.get("perturbed_answer", []) or []:
            texts.append(p)
    texts += ["Question : Answer :"] + _NAMES + _GENRES + _CITIES
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]")


def toy_model(vocab_size: int, hidden_size: int = 32, layers: int = 2, seed: int = 0):
    """A small random ``LlamaForCausalLM`` (fp32, eager attention, no dropout)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                      tie_word_embeddings=False, attn_implementation="eager")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model
