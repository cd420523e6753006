"""The chat-template rule (common.text.uses_chat_template): "auto" by default in training
(tokenize_rows / ak.unlearn), evaluation (QAFormat) and the CLIs; the synthetic benchmark's
tokenizer renders the plain prompt through its template, so the demo's tokens do not change."""
from __future__ import annotations

import pytest

from alter_kernels.common.text import IGNORE_INDEX, answer_separator, chat_mode, uses_chat_template
from alter_kernels.eval.format import QAFormat
from alter_kernels.unlearn.data import DataError, tokenize_rows
from alter_kernels.unlearn.toy import toy_rows, toy_tokenizer

ROWS = [{"question": "Who wrote The Silent Orchard?", "answer": "Mara Quill wrote it."},
        {"question": "Where was Mara Quill born?", "answer": "She was born in Lisbon."}]
# a ChatML-style template whose generation prompt ends in a newline (as SmolLM2's and Qwen's do)
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def synthetic_tok(tmp_path_factory):
    from alter_kernels.synthetic.tokenizer import train_tokenizer
    texts = [r["question"] + " " + r["answer"] for r in ROWS] + ["Question: Answer:"] * 3
    return train_tokenizer(texts, str(tmp_path_factory.mktemp("tok") / "tok"), vocab_size=300)


def test_modes():
    assert [chat_mode(v) for v in (None, True, False, "auto", "on", "off")] == ["auto", "on", "off", "auto", "on", "off"]
    with pytest.raises(ValueError, match="chat_template"):
        chat_mode("yes")
    tok = toy_tokenizer(toy_rows(4))
    assert not uses_chat_template(tok, "auto") and not uses_chat_template(tok, "off")
    with pytest.raises(ValueError, match="no chat template"):
        uses_chat_template(tok, "on")
    tok.chat_template = CHATML
    assert uses_chat_template(tok) and uses_chat_template(tok, True) and not uses_chat_template(tok, False)
    assert answer_separator("Answer:") == " " and answer_separator("assistant\n") == ""


def test_synthetic_template_gives_the_plain_tokens(synthetic_tok):
    """The demo trains and evaluates with the defaults: "auto" takes the synthetic tokenizer's
    template, which must reproduce the plain prompt token for token."""
    auto = tokenize_rows(ROWS, synthetic_tok, "<rows>", "forget")
    plain = tokenize_rows(ROWS, synthetic_tok, "<rows>", "forget", chat_template="off")
    assert uses_chat_template(synthetic_tok)
    assert [(e.input_ids, e.labels) for e in auto] == [(e.input_ids, e.labels) for e in plain]
    for q, a in ((r["question"], r["answer"]) for r in ROWS):
        assert QAFormat().encode(synthetic_tok, q, a) == QAFormat(chat="off").encode(synthetic_tok, q, a)
        assert QAFormat().answer_ids(synthetic_tok, a) == QAFormat(chat=False).answer_ids(synthetic_tok, a)


def test_tokenizer_without_template_keeps_the_plain_prompt():
    tok = toy_tokenizer(toy_rows(4))
    rows = toy_rows(2)
    auto = tokenize_rows(rows, tok, "<rows>", "forget")
    assert [e.input_ids for e in auto] == [e.input_ids for e in tokenize_rows(rows, tok, "<rows>", "forget",
                                                                              chat_template=False)]
    with pytest.raises(DataError, match="no chat template"):
        tokenize_rows(rows, tok, "<rows>", "forget", chat_template="on")


def test_chat_prompt_ending_in_a_newline_takes_the_answer_without_a_space():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator([r["question"] + " " + r["answer"] for r in ROWS] * 2,
                          trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                  unk_token="<unk>")
    tok.chat_template = CHATML
    r = ROWS[0]
    (ex,) = tokenize_rows([r], tok, "<rows>", "forget")
    text = tok.apply_chat_template([{"role": "user", "content": r["question"]}], tokenize=False,
                                   add_generation_prompt=True)
    n = len(tok(text, add_special_tokens=False).input_ids)
    answer = tok(r["answer"], add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert ex.labels == [IGNORE_INDEX] * n + answer and ex.input_ids[n:] == answer
    # the full conversation as the template writes it: prompt + answer + <|im_end|>
    full = tok.apply_chat_template([{"role": "user", "content": r["question"]},
                                    {"role": "assistant", "content": r["answer"]}], tokenize=False)
    assert tok.decode(ex.input_ids) == full.rstrip("\n")
    assert QAFormat().encode(tok, r["question"], r["answer"]) == (ex.input_ids, ex.labels)
    sys_ids = QAFormat(system_prompt="Be brief.").prompt_ids(tok, r["question"])
    assert tok.decode(sys_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_option_is_checked():
    import alter_kernels as ak
    from alter_kernels.unlearn.options import OptionError
    tok = toy_tokenizer(toy_rows(4))
    with pytest.raises(OptionError, match="chat_template"):
        ak.unlearn(None, toy_rows(2), toy_rows(2), tokenizer=tok, chat_template="sometimes")
