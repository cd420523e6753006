"""Token and prompt conventions shared by training and evaluation (one definition each).

- ``IGNORE_INDEX``: the label of a token that carries no loss (the prompt's tokens, padding),
  as in PyTorch's ``cross_entropy(ignore_index=-100)`` and Hugging Face's labels.
- ``DEFAULT_PROMPT_FORMAT``: how a question becomes a prompt without a chat template; the answer
  follows after one space. The embedded benchmark's models are trained with exactly this, and
  ``alter-unlearn`` / ``alter-eval`` / ``ak.unlearn`` / ``QAFormat`` default to it.
"""
IGNORE_INDEX = -100
DEFAULT_PROMPT_FORMAT = "Question: {question}\nAnswer:"
