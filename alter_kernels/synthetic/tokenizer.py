"""A small byte-level BPE tokenizer trained offline on the corpus, saved in standard HF format.

The result loads with ``transformers.AutoTokenizer.from_pretrained(dir)`` (a
``PreTrainedTokenizerFast`` with ``tokenizer.json``), has ``<s>`` (bos, prepended), ``</s>`` (eos),
``<pad>`` and ``<unk>``, and a chat template that renders the benchmark's plain QA prompt, so code
that uses ``apply_chat_template`` and code that uses the plain template see the same tokens.
"""
from __future__ import annotations

import os

from ..common.fsio import atomic_dir

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")

# Renders exactly alter_kernels.common.text.DEFAULT_PROMPT_FORMAT for a single user turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ 'Question: ' + m['content'] + '\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ 'Answer: ' + m['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Answer:' }}{% endif %}"
)


def corpus_texts(files: dict) -> list[str]:
    """Every string of the corpus (questions, answers, paraphrases, false answers, options,
    passages) plus the prompt words, so that no evaluation text falls back to bytes."""
    out = ["Question: Answer:"]
    for name in ("full", "real_authors", "world_facts"):
        for r in files[name]:
            out += [r["question"], r["answer"], r.get("paraphrased_question", ""),
                    r.get("paraphrased_answer", "")] + list(r.get("perturbed_answer", []))
    for it in files.get("mcq", []):
        out += [it["question"]] + list(it["choices"])
    out += [p["text"] for p in files.get("passages", [])]
    return [t for t in out if t]


def train_tokenizer(texts: list[str], out_dir: str, vocab_size: int = 2048):
    """Train a byte-level BPE on ``texts`` and save it as a HF tokenizer under ``out_dir``.

    Deterministic for the same texts and vocab size. Returns the loaded
    ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 512
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    atomic_dir(out_dir, fast.save_pretrained)        # built beside out_dir, swapped into place
    return load_tokenizer(out_dir)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)
