"""How a question-answer pair becomes tokens, for training and evaluation alike.

A :class:`QAFormat` turns (question, answer) into ``input_ids`` and ``labels`` with the prompt
masked (-100), as TOFU does: the prompt is encoded with the tokenizer's special tokens (bos), the
answer without them, and an eos closes the answer. Two styles:

- ``QAFormat()``: plain template :data:`alter_kernels.common.text.DEFAULT_PROMPT_FORMAT`
  (``"Question: {question}\\nAnswer:"``) and answer ``" " + answer`` (the benchmark's models are
  trained with exactly this);
- ``QAFormat(chat=True)``: ``tokenizer.apply_chat_template`` with one user turn and the generation
  prompt, for instruction-tuned models (TOFU's Llama-2-chat / Phi recipes).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..common.text import DEFAULT_PROMPT_FORMAT, IGNORE_INDEX

DEFAULT_TEMPLATE = DEFAULT_PROMPT_FORMAT          # the name this module has always exported


@dataclass(frozen=True)
class QAFormat:
    template: str = DEFAULT_TEMPLATE
    answer_prefix: str = " "
    chat: bool = False
    system_prompt: str | None = None
    add_eos: bool = True

    def __post_init__(self):
        if not self.chat and "{question}" not in self.template:
            raise ValueError(f"QAFormat.template must contain '{{question}}', got {self.template!r}")

    def prompt_ids(self, tokenizer, question: str) -> list[int]:
        if self.chat:
            if getattr(tokenizer, "chat_template", None) is None:
                raise ValueError("QAFormat(chat=True) needs a tokenizer with a chat_template")
            msgs = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
            msgs.append({"role": "user", "content": question})
            out = tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
            if isinstance(out, dict) or hasattr(out, "input_ids"):
                out = out["input_ids"]
            return list(out)
        return list(tokenizer(self.template.format(question=question), add_special_tokens=True).input_ids)

    def answer_ids(self, tokenizer, answer: str, eos: bool | None = None) -> list[int]:
        ids = list(tokenizer(self.answer_prefix + answer, add_special_tokens=False).input_ids)
        if (self.add_eos if eos is None else eos) and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return ids

    def encode(self, tokenizer, question: str, answer: str, max_length: int | None = None,
               eos: bool | None = None) -> tuple[list[int], list[int]]:
        """(input_ids, labels): labels are -100 on the prompt, the answer ids elsewhere."""
        p = self.prompt_ids(tokenizer, question)
        a = self.answer_ids(tokenizer, answer, eos)
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
