"""Token and prompt conventions shared by training, evaluation and generation (one definition each).

- ``IGNORE_INDEX``: the label of a token that carries no loss (the prompt's tokens, padding),
  as in PyTorch's ``cross_entropy(ignore_index=-100)`` and Hugging Face's labels.
- ``DEFAULT_PROMPT_FORMAT``: how a question becomes a prompt without a chat template; the answer
  follows after one space. The embedded benchmark's models are trained with exactly this, and
  ``alter-unlearn`` / ``alter-eval`` / ``ak.unlearn`` / ``QAFormat`` use it when no chat
  template is used.
- The chat-template rule (:func:`uses_chat_template`): ``"auto"`` (the default everywhere:
  ``ak.unlearn``, ``alter-unlearn``, ``alter-eval``, ``QAFormat``) wraps a question in the
  tokenizer's chat template (one user turn and the generation prompt) when the tokenizer has one,
  and uses the prompt format otherwise; ``"on"`` requires a template, ``"off"`` never uses one.
- :func:`answer_separator`: the answer follows the prompt after one space, unless the prompt
  already ends in whitespace (a chat template's ``"<|im_start|>assistant\\n"``).
"""
IGNORE_INDEX = -100
DEFAULT_PROMPT_FORMAT = "Question: {question}\nAnswer:"
CHAT_TEMPLATE_MODES = ("auto", "on", "off")
DEFAULT_CHAT_TEMPLATE = "auto"


def chat_mode(value) -> str:
    """``"auto"`` / ``"on"`` / ``"off"`` from a mode or a bool (True: on, False: off, None: auto);
    ValueError for anything else."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value in CHAT_TEMPLATE_MODES:
        return value
    raise ValueError(f"chat_template: expected 'auto', 'on', 'off' or a bool, got {value!r}")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def uses_chat_template(tokenizer, mode=DEFAULT_CHAT_TEMPLATE) -> bool:
    """Whether prompts for ``tokenizer`` go through its chat template under ``mode`` (THE rule);
    ValueError for ``"on"`` with a tokenizer that has none."""
    mode = chat_mode(mode)
    if mode == "on" and not has_chat_template(tokenizer):
        raise ValueError("chat_template='on' but the tokenizer has no chat template")
    return has_chat_template(tokenizer) if mode == "auto" else mode == "on"


def chat_prompt(tokenizer, question: str, system_prompt: str | None = None) -> str:
    """The chat template's text for one user turn plus the generation prompt."""
    msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
    msgs.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def chat_prompt_ids(tokenizer, question: str, system_prompt: str | None = None) -> tuple[list[int], str]:
    """The token ids of :func:`chat_prompt` (the template writes its own special tokens) and the
    :func:`answer_separator` that follows it."""
    text = chat_prompt(tokenizer, question, system_prompt)
    return [int(x) for x in tokenizer(text, add_special_tokens=False)["input_ids"]], answer_separator(text)


def answer_separator(prompt_text: str) -> str:
    """What goes between a prompt and its answer: one space, or nothing after trailing whitespace."""
    return "" if prompt_text[-1:].isspace() else " "
