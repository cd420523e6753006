"""How a question-answer pair becomes tokens, for training and evaluation alike.

A :class:`QAFormat` turns (question, answer) into ``input_ids`` and ``labels`` with the prompt
masked (-100), as TOFU does: the prompt is encoded with the tokenizer's special tokens (bos), the
answer without them, and an eos closes the answer. Two styles:

- plain: the template :data:`alter_kernels.common.text.DEFAULT_PROMPT_FORMAT`
  (``"Question: {question}\nAnswer:"``) and answer ``" " + answer`` (the benchmark's models are
  trained with exactly this);
- chat: ``tokenizer.apply_chat_template`` with one user turn (after an optional system prompt)
  and the generation prompt, for instruction-tuned models (TOFU's Llama-2-chat / Phi recipes,
  SmolLM2-Instruct); the answer follows without a space when the prompt ends in whitespace.

``chat`` is ``"auto"`` (default: chat when the tokenizer has a chat template), ``"on"`` /
``True`` or ``"off"`` / ``False``: the rule is :func:`alter_kernels.common.text.uses_chat_template`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..common.text import (DEFAULT_CHAT_TEMPLATE, DEFAULT_PROMPT_FORMAT, IGNORE_INDEX, answer_separator, chat_mode,
                           chat_prompt_ids, uses_chat_template)

DEFAULT_TEMPLATE = DEFAULT_PROMPT_FORMAT          # the name this module has always exported


@dataclass(frozen=True)
class QAFormat:
    template: str = DEFAULT_TEMPLATE
    answer_prefix: str | None = None          # None: answer_separator(prompt) (one space after a plain prompt)
    chat: bool | str = DEFAULT_CHAT_TEMPLATE
    system_prompt: str | None = None
    add_eos: bool = True

    def __post_init__(self):
        chat_mode(self.chat)                                    # ValueError for a bad mode
        if chat_mode(self.chat) != "on" and "{question}" not in self.template:
            raise ValueError(f"QAFormat.template must contain '{{question}}', got {self.template!r}")

    def uses_chat(self, tokenizer) -> bool:
        """Whether this format wraps questions in ``tokenizer``'s chat template."""
        return uses_chat_template(tokenizer, self.chat)

    def _prompt(self, tokenizer, question: str) -> tuple[list[int], str]:
        if self.uses_chat(tokenizer):
            return chat_prompt_ids(tokenizer, question, self.system_prompt)
        text = self.template.format(question=question)
        return list(tokenizer(text, add_special_tokens=True).input_ids), answer_separator(text)

    def prompt_ids(self, tokenizer, question: str) -> list[int]:
        return self._prompt(tokenizer, question)[0]

    def _answer(self, tokenizer, answer: str, sep: str, eos: bool | None) -> list[int]:
        prefix = sep if self.answer_prefix is None else self.answer_prefix
        ids = list(tokenizer(prefix + answer, add_special_tokens=False).input_ids)
        if (self.add_eos if eos is None else eos) and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return ids

    def answer_ids(self, tokenizer, answer: str, eos: bool | None = None) -> list[int]:
        """The answer's ids as they follow this format's prompt (the separator of a prompt for "?")."""
        return self._answer(tokenizer, answer, self._prompt(tokenizer, "?")[1], eos)

    def encode(self, tokenizer, question: str, answer: str, max_length: int | None = None,
               eos: bool | None = None) -> tuple[list[int], list[int]]:
        """(input_ids, labels): labels are -100 on the prompt, the answer ids elsewhere."""
        p, sep = self._prompt(tokenizer, question)
        a = self._answer(tokenizer, answer, sep, eos)
        ids = p + a
        labels = [IGNORE_INDEX] * len(p) + a
        if max_length is not None and len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
        return ids, labels


def pad_batch(seqs: list[list[int]], pad_id: int, side: str = "right", fill: int | None = None):
    """Pad to the longest sequence. Returns (tensor [B, T], attention mask [B, T])."""
    import torch
    T = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), T), pad_id if fill is None else fill, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        if side == "right":
            out[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        else:
            out[i, T - len(s):] = torch.tensor(s)
            mask[i, T - len(s):] = 1
    return out, mask
